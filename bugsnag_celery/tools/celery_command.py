"""``celery -A proj bugsnag flush|status``: added to Celery's CLI by the ``celery.commands`` entry point.

click is Celery's own CLI library, so this costs no new dependency.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["bugsnag"]


def _app(ctx: click.Context) -> Celery:
    import bugsnag_celery

    app = ctx.obj.app
    if not bugsnag_celery.is_configured(app):
        raise click.ClickException("this app does not call bugsnag_celery.configure(app, ...)")
    return app


@click.group(name="bugsnag", help="bugsnag-celery: session counts and spooled events on the broker.")
def bugsnag() -> None:
    pass


@bugsnag.command(help="Deliver every session count and spooled event on the broker now.")
@click.pass_context
def flush(ctx: click.Context) -> None:
    from bugsnag_celery import flush as flush_app

    app = _app(ctx)
    status = flush_app(app)
    sessions, events = status.get("sessions", {}), status.get("events", {})
    click.echo(
        f"sessions: {sessions.get('delivered', 0)} delivered in {sessions.get('requests', 0)} request(s), "
        f"{sessions.get('retry', 0)} kept for later, {sessions.get('dropped', 0)} dropped"
    )
    click.echo(
        f"events:   {events.get('delivered', 0)} delivered, {events.get('requeued', 0)} kept for later, "
        f"{events.get('dropped', 0)} dropped"
    )
    if status.get("last_error") and not status.get("last_delivery") == status.get("last_run"):
        raise click.ClickException(str(status["last_error"]))


@bugsnag.command(help="Show what waits on the broker and how the last delivery went.")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    from bugsnag_celery import options_for
    from bugsnag_celery.delivery.sessions import pending_session_messages
    from bugsnag_celery.delivery.spool import spooled_event_count
    from bugsnag_celery.delivery.status import delivery_problem, read_status

    app = _app(ctx)
    opts = options_for(app)
    assert opts is not None
    prefix = opts.queue_prefix
    try:
        report = {
            "pending_session_messages": pending_session_messages(app, prefix),
            "spooled_events": spooled_event_count(app, prefix),
            **{
                k: v
                for k, v in (read_status(app, prefix) or {}).items()
                if k in ("last_run", "last_delivery", "last_error")
            },
        }
        problem = delivery_problem(app, prefix, opts.session_delivery_interval)
    except Exception as exc:  # the broker: a message, never a traceback
        raise click.ClickException(f"cannot read the broker ({type(exc).__name__}: {exc})") from None
    if problem:
        report["problem"] = problem
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for key in ("pending_session_messages", "spooled_events", "last_delivery", "last_error"):
            click.echo(f"{key.replace('_', ' ')}: {report.get(key, 'never')}")
    if problem:  # counts wait and nothing delivers them: a failure to a monitoring script
        raise click.ClickException(problem)
