"""What BugSnag's API takes, written once: payload versions, the body limit, the v4 event envelope.

Every module that builds, sizes or labels a body reads these names, so a change of BugSnag's
API is one edit here: the sender's packing (``packing.py``), the trimming (``encoding.py``),
the session bodies (``sessions.py``), the spool's drain and the HTTP headers.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..about import notifier_info

__all__ = ["EVENTS_VERSION", "SESSIONS_VERSION", "MAX_BODY_BYTES", "event_envelope"]

#: ``Bugsnag-Payload-Version`` (and ``payloadVersion``) of an event payload (``/notify``).
EVENTS_VERSION = "4.0"
#: ``Bugsnag-Payload-Version`` of a session payload (``/sessions``).
SESSIONS_VERSION = "1.0"

#: BugSnag's limit is "about 1 MB" for any body; above it the pipeline answers 400 and the
#: payload is lost. Events are trimmed or packed under it; a session backlog is split below it.
MAX_BODY_BYTES = 1_000_000


def event_envelope(api_key: str, events: Sequence[object]) -> dict[str, object]:
    """The v4 event payload around *events*; ``events`` is its last key, which packing relies on."""
    return {
        "apiKey": api_key,
        "payloadVersion": EVENTS_VERSION,
        "notifier": notifier_info(),
        "events": events,
    }
