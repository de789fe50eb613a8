"""``celery -A proj bugsnag flush|status``: added to Celery's CLI by the ``celery.commands`` entry point.

click is Celery's own CLI library, so this costs no new dependency.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["bugsnag"]


def _app(ctx: click.Context) -> Celery:
    """The configured app, whose broker transport loads here (else one line: what to install)."""
    import bugsnag_celery
    from bugsnag_celery.transport.libraries import BrokerLibraryMissing
    from bugsnag_celery.transport.queues import check_broker_libraries

    app = ctx.obj.app
    if not bugsnag_celery.is_configured(app):
        raise click.ClickException("this app does not call bugsnag_celery.configure(app, ...)")
    try:
        check_broker_libraries(app)
    except BrokerLibraryMissing as exc:
        raise click.ClickException(str(exc)) from None
    except Exception:  # a bad URL...: each command says what failed, in its own words
        pass
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
    extra = {"unreadable": "unreadable count entr(ies) dropped", "other_apps": "left for another app",
             "refiled": "filed under the current minute (a clock ahead)",
             "copies": "second copies dropped (a publish the broker did not answer)"}  # fmt: skip
    click.echo(
        f"sessions: {sessions.get('delivered', 0)} delivered in {sessions.get('requests', 0)} request(s), "
        f"{_kept(sessions, 'retry')}, {sessions.get('dropped', 0)} dropped"
        + "".join(f", {sessions[k]} {what}" for k, what in extra.items() if sessions.get(k))
    )
    click.echo(
        f"events:   {events.get('delivered', 0)} delivered, {_kept(events, 'requeued')}, "
        f"{events.get('dropped', 0)} dropped"
    )
    if status.get("last_error") and not status.get("last_delivery") == status.get("last_run"):
        raise click.ClickException(str(status["last_error"]))


def _kept(figures: dict[str, Any], key: str) -> str:
    """What a run kept for later (*key*), saying how much BugSnag left unanswered (hung, or slow)."""
    unanswered = figures.get("unanswered", 0)
    return f"{figures.get(key, 0)} kept for later" + (
        f" ({unanswered} with no answer from BugSnag)" if unanswered else ""
    )


def _figures(report: dict[str, Any], key: str) -> dict[str, Any]:
    value = report.get(key)
    return value if isinstance(value, dict) else {}


def _last_run(report: dict[str, Any]) -> str:
    """The last run's figures, one line (what ``status`` prints above the running totals)."""
    sessions, events = _figures(report, "sessions"), _figures(report, "events")
    return (
        f"sessions {sessions.get('delivered', 0)} delivered, {_kept(sessions, 'retry')}, "
        f"{sessions.get('dropped', 0)} dropped; events {events.get('delivered', 0)} delivered, "
        f"{_kept(events, 'requeued')}, {events.get('dropped', 0)} dropped"
    )


#: Every field of ``status --json``, in its order: each is there whatever the broker holds
#: (``null`` for what has never happened), so that a script reads them without guessing.
REPORT_FIELDS = (
    "pending_session_messages", "spooled_events",
    "delivery_task_sent", "delivery_task_sent_seconds_ago", "delivery_task_sent_by", "delivery_task_queue",
    "last_run", "last_run_seconds_ago", "last_run_hostname", "sessions", "events",
    "last_delivery", "last_delivery_seconds_ago",
    "last_error", "last_error_seconds_ago", "last_error_before_last_delivery",
    "dropped", "last_drop", "last_drop_seconds_ago", "problem",
)  # fmt: skip

#: The running totals before any delivery run: nothing was dropped by one.
NOTHING_DROPPED = {"sessions": 0, "unreadable": 0, "events": 0, "events_lost": 0, "spool_full": 0}

#: The word for "has not happened", the same on every line of the plain output.
NEVER = "never"


def _report(app: Celery, prefix: str, interval: float, now: float) -> dict[str, Any]:
    """What ``status`` shows, every field of :data:`REPORT_FIELDS` present; times as the
    writers left them, and each one's age as read on this host's clock."""
    from bugsnag_celery.clock import format_timestamp, parse_timestamp
    from bugsnag_celery.delivery.sessions import pending_session_messages
    from bugsnag_celery.delivery.spool import spooled_event_count
    from bugsnag_celery.delivery.status import age_seconds, delivery_problem, read_sent, read_status

    status: dict[str, Any] = dict(read_status(app, prefix) or {})
    mark: dict[str, Any] = dict(read_sent(app, prefix) or {})
    sent, run_at = mark.get("at"), status.get("last_run_at")
    run_at = run_at if isinstance(run_at, (int, float)) and not isinstance(run_at, bool) else None
    delivered_at = parse_timestamp(status.get("last_delivery"))
    error_at, drop_at = parse_timestamp(status.get("last_error")), parse_timestamp(status.get("last_drop"))
    report: dict[str, Any] = {
        "pending_session_messages": pending_session_messages(app, prefix),
        "spooled_events": spooled_event_count(app, prefix),
        "delivery_task_sent": format_timestamp(sent) if sent is not None else None,
        "delivery_task_sent_seconds_ago": age_seconds(now, sent),
        "delivery_task_sent_by": mark.get("hostname"),
        "delivery_task_queue": mark.get("routing_key"),
        "last_run": format_timestamp(run_at) if run_at is not None else None,
        "last_run_seconds_ago": age_seconds(now, run_at),
        "last_run_hostname": status.get("hostname"),
        "sessions": status.get("sessions"),  # the last run's figures (a run under way has none yet)
        "events": status.get("events"),
        "last_delivery": status.get("last_delivery"),
        "last_delivery_seconds_ago": age_seconds(now, delivered_at),
        "last_error": status.get("last_error"),
        "last_error_seconds_ago": age_seconds(now, error_at),
        "last_error_before_last_delivery": (
            None if error_at is None else delivered_at is not None and error_at < delivered_at
        ),
        "dropped": status.get("dropped") or NOTHING_DROPPED,
        "last_drop": status.get("last_drop"),
        "last_drop_seconds_ago": age_seconds(now, drop_at),
        "problem": delivery_problem(app, prefix, interval, now),
    }
    assert tuple(report) == REPORT_FIELDS
    return report


def _when(report: dict[str, Any], key: str, extra: str = "") -> str:
    """``"25 s ago<extra> (<the time>)"``; ``never`` when it has not happened."""
    from bugsnag_celery.delivery.status import describe_age

    stamp, ago = report[key], report[f"{key}_seconds_ago"]
    if stamp is None:
        return NEVER
    if ago is None:  # a record written without a readable time
        return f"at a time not recorded{extra}"
    return f"{describe_age(ago)}{extra} ({str(stamp)[:24]})"


def _after_stamp(text: object) -> str:
    """What a ``"<time>: what"`` record says, without the time (shown as an age beside it)."""
    text = str(text)
    return text[26:] if text[24:26] == ": " else text


def _plain(report: dict[str, Any]) -> list[str]:
    """The report, one line per question, ``never`` for what has not happened."""
    from bugsnag_celery.delivery.status import describe_drops

    lines = [f"pending session messages: {report['pending_session_messages']}",
             f"spooled events: {report['spooled_events']}"]  # fmt: skip
    sent = _when(report, "delivery_task_sent")
    if report["delivery_task_sent"] is not None:
        sent += f", by {report['delivery_task_sent_by']}, to {report['delivery_task_queue'] or '?'!r}"
    lines.append(f"delivery task last sent: {sent}")
    run = _when(report, "last_run")
    if report["last_run"] is not None:
        on = f", on {report['last_run_hostname']}" if report["last_run_hostname"] else ""
        figures = (
            "no figures (under way, or ended mid-run)" if report["sessions"] is None else _last_run(report)
        )
        run += f"{on}: {figures}"
    lines.append(f"last run: {run}")
    lines.append(f"last delivery: {_when(report, 'last_delivery')}")
    error = NEVER
    if report["last_error"] is not None:
        before = ", before the last successful delivery" if report["last_error_before_last_delivery"] else ""
        error = f"{_when(report, 'last_error', before)}: {_after_stamp(report['last_error'])}"
    lines.append(f"last error: {error}")
    lines.append(f"dropped: {describe_drops(report['dropped'])}")
    drop = NEVER
    if report["last_drop"] is not None:
        drop = f"{_when(report, 'last_drop')}: {_after_stamp(report['last_drop'])}"
    lines.append(f"last drop: {drop}")
    return lines


@bugsnag.command(help="Show what waits on the broker, how the last delivery went and what was dropped.")
@click.option("--json", "as_json", is_flag=True, help="print JSON (every field always there; null: never)")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    import time

    from bugsnag_celery import options_for

    app = _app(ctx)
    opts = options_for(app)
    assert opts is not None
    try:
        report = _report(app, opts.queue_prefix, opts.session_delivery_interval, time.time())
    except ImportError as exc:  # a library the broker's transport needs (BrokerLibraryMissing)
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # the broker: a message, never a traceback
        raise click.ClickException(f"cannot read the broker ({type(exc).__name__}: {exc})") from None
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for line in _plain(report):
            click.echo(line)
    if report["problem"]:  # counts wait and nothing delivers them: a failure to a monitoring script
        raise click.ClickException(report["problem"])
