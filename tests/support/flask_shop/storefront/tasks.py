"""The shop's tasks: they use Flask's app context (``current_app``), as such tasks do."""

from typing import Any

import bugsnag
from celery import shared_task
from flask import current_app
from records import record


class PaymentRefused(Exception):
    pass


@shared_task(bind=True, name="shop.pay")
def pay(self: Any, order_id: int, iban: str) -> None:
    """Every 3rd order: refused, reported with ``bugsnag.notify``; every 4th: a crash."""
    notified, crashes = order_id % 3 == 0, order_id % 4 == 0
    record(id=self.request.id, order_id=order_id, notified=notified, crashes=crashes, app=current_app.name,
            iban=iban)  # fmt: skip
    if notified:
        try:
            raise PaymentRefused(f"order {order_id}")
        except PaymentRefused as exc:
            bugsnag.notify(exc)
    if crashes:
        raise RuntimeError(f"order {order_id} failed")
