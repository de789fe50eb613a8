"""The collector's ``GET /`` page: per release, what BugSnag's stability view would show, and
the same per app type: web processes with BugSnag's official integrations count their requests
in the workers' release, so the release's figure alone cannot tell the workers' stability.

Rendered on the server as plain HTML with an inline SVG chart: no JavaScript, no assets,
nothing fetched from elsewhere, so it works on a machine with no network and in any
browser. Everything that came from a payload is escaped: error messages are user data.

Why it is built to hold any content: a task name or message can be one long word, an
error can have thousands of events, a value can be missing. So the errors table's cells
wrap anywhere (it is never wider than its card, the SVG chart shrinks with it), an error shows at most
``LINKS`` payload links and then "+N more" (a link to the JSON API), a missing value is
shown as missing ("(no task)"), never as the word ``None``, and one release that cannot be
drawn is said to be so, without taking the rest of the page down with it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from html import escape
from typing import TYPE_CHECKING
from urllib.parse import urlencode

if TYPE_CHECKING:
    from .server import Collector
    from .store import AppTypeFigures, Cell, ErrorGroup, MinuteFigures, ReleaseFigures

__all__ = ["LINKS", "render"]

LINKS = 8  # payload links per error; the rest are behind "+N more"

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:74em;color:#1d2330;padding:0 1em}
h1{font-size:1.4em;margin-bottom:.2em} h2{font-size:1.15em;margin:0 0 .6em;overflow-wrap:anywhere}
.release{border:1px solid #d7dbe3;border-radius:8px;padding:1em 1.2em;margin:1.2em 0;overflow-wrap:anywhere}
.figures{display:flex;flex-wrap:wrap;gap:.6em 2.5em;margin-bottom:.8em}
.figure b{display:block;font-size:1.6em}
.good{color:#137a3a} .fair{color:#a86400} .poor{color:#b3261e}
table{border-collapse:collapse;width:100%}
table.app-types{width:auto;max-width:100%;margin-bottom:.8em} .app-types td:first-child{font-weight:600}
td,th{text-align:left;padding:.25em .5em;border-bottom:1px solid #eceef2;vertical-align:top}
td{overflow-wrap:anywhere} th{font-weight:600;color:#555;overflow-wrap:normal}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#777} .msg{display:block;font-size:.9em;color:#666} .unreadable{color:#a86400}
svg{display:block;margin:.4em 0 1em;max-width:100%;height:auto} a{color:#2457c5}
"""


def render(collector: Collector) -> str:
    releases = collector.releases()
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='refresh' content='5'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        "<link rel='icon' href='data:,'>",  # no request for /favicon.ico
        "<title>bugsnag-celery collector</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>bugsnag-celery collector</h1>",
        f"<p class='muted'>What BugSnag would have received. Events at <code>{escape(collector.url)}/notify"
        f"</code>, sessions at <code>{escape(collector.url)}/sessions</code>. JSON: "
        "<a href='/api/releases'>/api/releases</a>, <a href='/api/events'>/api/events</a>.</p>",
    ]
    if not releases:
        parts.append("<p id='empty'>Nothing received yet.</p>")
    for release in releases:
        parts.append(_guarded(_release, collector, release, release["appVersion"], release["releaseStage"]))
    parts.append(_guarded(_events_without_sessions, collector, releases))
    parts.append(_guarded(_rejections, collector))
    parts.append("</body></html>")
    return "".join(parts)


def _guarded(draw: Callable[..., object], collector: Collector, *args: object) -> str:
    """*draw*'s HTML, or a card saying it could not be drawn: one bad part never blanks the page."""
    try:
        return str(draw(collector, *args))
    except Exception as exc:
        why = escape(repr(exc))
        return f"<section class='release broken'><p class='unreadable'>Not shown: {why}</p></section>"


def _shown(value: object, missing: str) -> str:
    """A stored value as text, or *missing* (muted) when there is none."""
    if value is None or value == "":
        return f"<span class='muted'>{escape(missing)}</span>"
    return escape(str(value))


def _grade(stability: float | None) -> str:
    if stability is None:
        return "muted"
    return "good" if stability >= 99 else "fair" if stability >= 90 else "poor"


def _percent(stability: float | None) -> str:
    return "n/a" if stability is None else f"{stability:.2f}%"


def _release(collector: Collector, release: ReleaseFigures, version: Cell, stage: Cell) -> str:
    stability = release["stability"]
    shown = _percent(stability)
    attrs = f"data-version='{escape(str(version or ''))}' data-stage='{escape(str(stage or ''))}'"
    out = [
        f"<section class='release' {attrs}>",
        f"<h2>{_shown(version, '(no version)')} &middot; {_shown(stage, '(no stage)')}</h2>",
        "<div class='figures'>",
        f"<div class='figure'>sessions<b class='sessions'>{release['sessions']}</b></div>",
        f"<div class='figure'>crashed sessions<b class='crashed'>{release['crashedSessions']}</b></div>",
        f"<div class='figure'>stability<b class='stability {_grade(stability)}'>{shown}</b></div>",
        "</div>",
        _app_types(release["appTypes"]),
        _unreadable(*collector.unreadable(version, stage)),
        _chart(collector.minutes(version, stage)),
        _errors(collector.top_errors(version, stage, ids=LINKS), version, stage),
        "</section>",
    ]
    return "".join(out)


def _app_types(types: list[AppTypeFigures]) -> str:
    """The release's figures per app type: the workers (``celery``) apart from the web requests
    that the official integrations count in the same release (their sessions carry no type)."""
    rows = "".join(
        f"<tr class='app-type' data-app-type='{escape(str(t['appType'] or ''))}'>"
        f"<td>{_shown(t['appType'], '(no app type)')}</td><td class='n type-sessions'>{t['sessions']}</td>"
        f"<td class='n type-crashed'>{t['crashedSessions']}</td>"
        f"<td class='n type-stability {_grade(t['stability'])}'>{_percent(t['stability'])}</td></tr>"
        for t in types
    )
    orphans = any(t["crashedSessions"] and not t["sessions"] for t in types)
    note = (
        "<p class='muted'>Crashed sessions and no sessions of their app type: the events named one app"
        " type and their session counts another. BugSnag's official Python notifier sends its sessions"
        " without one, so a web process given an <code>app_type</code> has its sessions under"
        " &ldquo;(no app type)&rdquo; and its crashes under its app type.</p>"
        if orphans
        else ""
    )
    return (
        "<table class='app-types'><tr><th>by app type</th><th class='n'>sessions</th>"
        "<th class='n'>crashed sessions</th><th class='n'>stability</th></tr>" + rows + "</table>" + note
    )


def _unreadable(rows: list[str], total: int) -> str:
    """Rows of this release that cannot be read (an older version's), left out of its figures."""
    if not total:
        return ""
    items = "".join(f"<li>{escape(row)}</li>" for row in rows)
    more = f"<li>and {total - len(rows)} more</li>" if total > len(rows) else ""
    return (
        f"<details class='unreadable'><summary>{total} stored row(s) could not be read and are left out"
        f" of these figures</summary><ul>{items}{more}</ul></details>"
    )


def _key(moment: datetime) -> str:
    return f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}"


def _chart(minutes: list[MinuteFigures], slots: int = 30) -> str:
    """Bars for the last *slots* minutes up to the latest one received (empty minutes
    included, so the time axis is true): sessions in blue, crashed sessions in red."""
    if not minutes:
        return ""
    by_minute = {m["minute"]: m for m in minutes}
    last = datetime.strptime(minutes[-1]["minute"], "%Y-%m-%dT%H:%M")
    span = timedelta(minutes=slots - 1)
    first = last - span if last - datetime.min >= span else datetime.min  # year 1 has no minute before it
    window = [_key(first + timedelta(minutes=i)) for i in range(slots)]
    width, height, pad = 720, 120, 18
    top = max((by_minute[m]["sessions"] if m in by_minute else 0 for m in window), default=0) or 1
    step = (width - 2 * pad) / slots
    bars = []
    for i, minute in enumerate(window):
        if minute not in by_minute:
            continue
        m = by_minute[minute]
        x = pad + i * step + 1
        h = (height - 2 * pad) * m["sessions"] / top
        c = (height - 2 * pad) * min(m["crashedSessions"], top) / top
        label = escape(f"{minute} UTC: {m['sessions']} sessions, {m['crashedSessions']} crashed")
        rects = "".join(
            f"<rect x='{x:.1f}' y='{height - pad - v:.1f}' width='{step - 2:.1f}' height='{v:.1f}'"
            f" fill='{fill}'/>"
            for v, fill in ((h, "#4a78d0"), (c, "#d0453a"))
        )
        bars.append(f"<g class='minute'><title>{label}</title>{rects}</g>")
    start, end = escape(window[0][11:]), escape(window[-1][11:])
    return (
        f"<svg class='chart' width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img' "
        f"aria-label='sessions and crashed sessions per minute'>"
        f"<line x1='{pad}' y1='{height - pad}' x2='{width - pad}' y2='{height - pad}' stroke='#999'/>"
        + "".join(bars)
        + f"<text x='{pad}' y='{height - 3}' font-size='11' fill='#555'>{start} UTC</text>"
        f"<text x='{width - pad}' y='{height - 3}' font-size='11' fill='#555' text-anchor='end'>{end}</text>"
        f"<text x='{pad}' y='12' font-size='11' fill='#555'>"
        f"per minute, last {slots} minutes (max {top}) &middot; "
        "<tspan fill='#4a78d0'>sessions</tspan> <tspan fill='#d0453a'>crashed sessions</tspan></text></svg>"
    )


def _short(value: object, limit: int = 120) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _more(error: ErrorGroup, version: Cell, stage: Cell) -> str:
    """The "+N more" link: the events of this error not linked one by one, as the JSON API lists them."""
    hidden = int(error["events"]) - len(error["eventIds"])
    if hidden <= 0:
        return ""
    filters = {"appVersion": version, "releaseStage": stage, "errorClass": error["errorClass"],
               "task": error["context"]}  # fmt: skip
    query = urlencode({k: str(v) for k, v in filters.items() if v is not None})
    return f" <a class='more' href='/api/events?{escape(query)}'>+{hidden} more</a>"


def _errors(errors: list[ErrorGroup], version: Cell, stage: Cell) -> str:
    if not errors:
        return "<p class='muted'>No errors.</p>"
    rows = []
    for e in errors:
        links = " ".join(f"<a class='payload' href='/api/events/{i}'>#{i}</a>" for i in e["eventIds"][:LINKS])
        rows.append(
            f"<tr class='error'><td><b>{_shown(e['errorClass'], '(no error class)')}</b>"
            f"<span class='msg'>{escape(_short(e['message']))}</span></td>"
            f"<td>{_shown(e['context'], '(no task)')}</td>"
            f"<td class='n count'>{e['events']}</td><td class='n'>{e['unhandled']}</td>"
            f"<td class='n crashes'>{e['crashedSessions']}</td>"
            f"<td><div class='links'>{links}{_more(e, version, stage)}</div></td></tr>"
        )
    return (
        "<table class='errors'><tr><th>top errors</th><th>task</th><th class='n'>events</th>"
        "<th class='n'>un&shy;handled</th>"
        "<th class='n' title='sessions with an unhandled event: paused sessions do not count'>"
        "crashed sessions</th>"
        "<th>payloads</th></tr>" + "".join(rows) + "</table>"
    )


def _events_without_sessions(collector: Collector, releases: list[ReleaseFigures]) -> str:
    """Events of releases that sent no session counts yet (so they are not lost from view)."""
    known = {(r["appVersion"], r["releaseStage"]) for r in releases}
    others = {(e["appVersion"], e["releaseStage"]) for e in collector.events()} - known
    out = []
    for version, stage in sorted(others, key=str):
        out.append(
            f"<section class='release'><h2>{_shown(version, '(no version)')} &middot; "
            f"{_shown(stage, '(no stage)')} <span class='muted'>(no sessions received)</span></h2>"
            + _errors(collector.top_errors(version, stage, ids=LINKS), version, stage)
            + "</section>"
        )
    return "".join(out)


def _rejections(collector: Collector, shown: int = 10) -> str:
    """The latest refused requests and why: what a sender that was turned away never sees."""
    latest = list(collector.rejections)[-shown:][::-1]
    if not latest:
        return ""
    items = "".join(
        f"<li><span class='muted'>{datetime.fromtimestamp(r.at, timezone.utc).strftime('%H:%M:%S')}"
        " UTC</span> "
        f"{escape(r.request or '(no request)')} &rarr; <b>{r.status or 'closed'}</b>: {escape(r.reason)}</li>"
        for r in latest
    )
    return (
        f"<section class='release' id='rejected'><h2>Refused requests "
        f"<span class='muted'>(latest {len(latest)} of {len(collector.rejections)} kept)</span></h2>"
        f"<ul>{items}</ul></section>"
    )
