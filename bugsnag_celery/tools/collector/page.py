"""The collector's ``GET /`` page: per release, what BugSnag's stability view would show.

Rendered on the server as plain HTML with an inline SVG chart: no JavaScript, no assets,
nothing fetched from elsewhere, so it works on a machine with no network and in any
browser. Everything that came from a payload is escaped: error messages are user data.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

if TYPE_CHECKING:
    from .server import Collector

__all__ = ["render"]

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:74em;color:#1d2330;padding:0 1em}
h1{font-size:1.4em;margin-bottom:.2em} h2{font-size:1.15em;margin:0 0 .6em}
.release{border:1px solid #d7dbe3;border-radius:8px;padding:1em 1.2em;margin:1.2em 0}
.figures{display:flex;gap:2.5em;margin-bottom:.8em} .figure b{display:block;font-size:1.6em}
.good{color:#137a3a} .fair{color:#a86400} .poor{color:#b3261e}
table{border-collapse:collapse;width:100%}
td,th{text-align:left;padding:.25em .5em;border-bottom:1px solid #eceef2}
th{font-weight:600;color:#555} td.n{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#777} div.links{min-width:15em} .msg{display:block;font-size:.9em;color:#666}
svg{display:block;margin:.4em 0 1em} a{color:#2457c5}
"""


def render(collector: Collector) -> str:
    releases = collector.releases()
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='refresh' content='5'>",
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
        parts.append(_release(collector, release))
    unreleased = _events_without_sessions(collector, releases)
    if unreleased:
        parts.append(unreleased)
    parts.append("</body></html>")
    return "".join(parts)


def _grade(stability: float | None) -> str:
    if stability is None:
        return "muted"
    return "good" if stability >= 99 else "fair" if stability >= 90 else "poor"


def _release(collector: Collector, release: dict[str, Any]) -> str:
    version, stage = release["appVersion"], release["releaseStage"]
    stability = release["stability"]
    shown = "n/a" if stability is None else f"{stability:.2f}%"
    out = [
        f"<section class='release' data-version='{escape(str(version))}' data-stage='{escape(str(stage))}'>",
        f"<h2>{escape(str(version or '(no version)'))} &middot; {escape(str(stage or '(no stage)'))}</h2>",
        "<div class='figures'>",
        f"<div class='figure'>sessions<b class='sessions'>{release['sessions']}</b></div>",
        f"<div class='figure'>crashed sessions<b class='crashed'>{release['crashedSessions']}</b></div>",
        f"<div class='figure'>stability<b class='stability {_grade(stability)}'>{shown}</b></div>",
        "</div>",
        _chart(collector.minutes(version, stage)),
        _errors(collector.top_errors(version, stage)),
        "</section>",
    ]
    return "".join(out)


def _chart(minutes: list[dict[str, Any]], slots: int = 30) -> str:
    """Bars for the last *slots* minutes up to the latest one received (empty minutes
    included, so the time axis is true): sessions in blue, crashed sessions in red."""
    if not minutes:
        return ""
    by_minute = {m["minute"]: m for m in minutes}
    last = datetime.strptime(minutes[-1]["minute"], "%Y-%m-%dT%H:%M")
    window = [(last - timedelta(minutes=slots - 1 - i)).strftime("%Y-%m-%dT%H:%M") for i in range(slots)]
    width, height, pad = 720, 120, 18
    top = max((by_minute.get(m, {}).get("sessions", 0) for m in window), default=0) or 1
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
    first, end = escape(window[0][11:]), escape(window[-1][11:])
    return (
        f"<svg class='chart' width='{width}' height='{height}' role='img' "
        f"aria-label='sessions and crashed sessions per minute'>"
        f"<line x1='{pad}' y1='{height - pad}' x2='{width - pad}' y2='{height - pad}' stroke='#999'/>"
        + "".join(bars)
        + f"<text x='{pad}' y='{height - 3}' font-size='11' fill='#555'>{first} UTC</text>"
        f"<text x='{width - pad}' y='{height - 3}' font-size='11' fill='#555' text-anchor='end'>{end}</text>"
        f"<text x='{pad}' y='12' font-size='11' fill='#555'>"
        f"per minute, last {slots} minutes (max {top}) &middot; "
        "<tspan fill='#4a78d0'>sessions</tspan> <tspan fill='#d0453a'>crashed sessions</tspan></text></svg>"
    )


def _short(value: Any, limit: int = 120) -> str:
    text = str(value or "")
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _errors(errors: list[dict[str, Any]]) -> str:
    if not errors:
        return "<p class='muted'>No errors.</p>"
    rows = []
    for e in errors:
        ids = e["eventIds"]
        links = " ".join(f"<a class='payload' href='/api/events/{i}'>#{i}</a>" for i in ids[:40])
        query = urlencode({"errorClass": e["errorClass"] or "", "task": e["context"] or ""})
        more = ""
        if len(ids) > 40:
            more = f" <a class='muted' href='/api/events?{escape(query)}'>+{len(ids) - 40} more</a>"
        rows.append(
            f"<tr class='error'><td><b>{escape(str(e['errorClass']))}</b>"
            f"<span class='msg'>{escape(_short(e['message']))}</span></td>"
            f"<td>{escape(str(e['context']))}</td>"
            f"<td class='n count'>{e['events']}</td><td class='n'>{e['unhandled']}</td>"
            f"<td class='n crashes'>{e['crashedSessions']}</td>"
            f"<td><div class='links'>{links}{more}</div></td></tr>"
        )
    return (
        "<table class='errors'><tr><th>top errors</th><th>task</th><th>events</th><th>unhandled</th>"
        "<th title='sessions with an unhandled event: paused sessions do not count'>crashed sessions</th>"
        "<th>payloads</th></tr>" + "".join(rows) + "</table>"
    )


def _events_without_sessions(collector: Collector, releases: list[dict[str, Any]]) -> str:
    """Events of releases that sent no session counts yet (so they are not lost from view)."""
    known = {(r["appVersion"], r["releaseStage"]) for r in releases}
    others = {(e["appVersion"], e["releaseStage"]) for e in collector.events()} - known
    out = []
    for version, stage in sorted(others, key=str):
        out.append(
            f"<section class='release'><h2>{escape(str(version))} &middot; {escape(str(stage))} "
            "<span class='muted'>(no sessions received)</span></h2>"
            + _errors(collector.top_errors(version, stage))
            + "</section>"
        )
    return "".join(out)
