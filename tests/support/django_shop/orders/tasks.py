"""The shop's tasks: handled errors reported with ``bugsnag.notify``, as existing code does."""

from typing import Any

import bugsnag
from celery import shared_task
from records import record

import bugsnag_celery


class CardDeclined(Exception):
    pass


@shared_task(bind=True, name="orders.charge")
def charge(self: Any, order_id: int) -> None:
    """Every 3rd order: a declined card, reported as handled; every 5th: a crash."""
    notified = order_id % 3 == 0
    crashes = order_id % 5 == 0
    record(id=self.request.id, order_id=order_id, notified=notified, crashes=crashes)
    if notified:
        try:
            raise CardDeclined(f"order {order_id}")
        except CardDeclined as exc:
            bugsnag.notify(exc)
    if order_id == 7:
        with bugsnag_celery.session_paused():  # reported, not attributed to the run's session
            bugsnag.notify(CardDeclined("paused 7"))
    if crashes:
        raise RuntimeError(f"order {order_id} failed")
