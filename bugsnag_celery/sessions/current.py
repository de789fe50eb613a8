"""The current session: BugSnag's session semantics for one process, thread or greenlet.

The contract is BugSnag's "Capturing sessions" page: ``start_session`` replaces the
current session with a new one, ``pause_session`` stops events being attributed to it,
``resume_session`` resumes it (or starts one), and ``get_current_session`` describes it.

The current session lives in a :class:`contextvars.ContextVar`, not in a module global
or a ``threading.local``: every thread has its own context, and so does every greenlet
(greenlet >= 1.0), so concurrent tasks on the threads or gevent pools never see each
other's session.

A session is cheap to open because most of what describes it is computed only when
somebody asks: the id of a task-run session is a UUIDv5 of ``"<task_id>:<retries>"``
(so the worker's main process can name the session of a child it saw die), derived on
first use; ``startedAt`` is formatted on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, TypedDict

from ..clock import format_timestamp
from ..options.declared import Options
from . import counts
from .counts import Release

__all__ = [
    "Session",
    "SessionSnapshot",
    "EventCounts",
    "start_session",
    "pause_session",
    "resume_session",
    "get_current_session",
    "session_paused",
    "task_session_id",
    "DELIVERY_KEY",
    "current_session",
    "CURRENT",
    "PAUSED_MARK",
]

#: Namespace of the deterministic task-run session ids (UUIDv5 of "<task_id>:<retries>").
SESSION_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/bugsnag-celery/sessions")
_NAMESPACE_BYTES = SESSION_NAMESPACE.bytes


#: Where a worker's main process puts the id it gives each delivery of a task message, in
#: the request it hands the pool (``hooks/signals.py``): the child's run and the main process
#: both read it there. A message redelivered after its child was killed (``acks_late`` with
#: ``reject_on_worker_lost``) has the same task id and attempt number: only this tells the two
#: runs, and their sessions, apart.
DELIVERY_KEY = "bugsnag_celery_delivery"


def task_session_id(task_id: str, retries: int, delivery: str | None = None) -> str:
    """The id of the session of attempt *retries* of task *task_id* (in its *delivery*, where
    the worker gave it one: see :data:`DELIVERY_KEY`).

    Deterministic, so that a crash seen only by the worker's main process (a killed
    pool child, a hard time limit) can be attributed to the session the child opened.
    """
    # str(uuid.uuid5(SESSION_NAMESPACE, name)), without building the UUID object: the
    # same SHA-1, version and variant bits and layout, at a third of the cost (every
    # failure's event names its session).
    name = f"{task_id}:{retries}" if delivery is None else f"{task_id}:{retries}:{delivery}"
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class EventCounts(TypedDict):
    """A session's events so far (BugSnag counts a session with an unhandled one as crashed)."""

    handled: int
    unhandled: int


class SessionSnapshot(TypedDict):
    """What :func:`get_current_session` tells about the current session (a copy)."""

    id: str
    startedAt: str
    paused: bool
    events: EventCounts


class Session:
    """One BugSnag session. Mutable: the event counts grow as events are attributed.

    A task run's session holds the run's request (Celery's ``Context``) and makes its id
    from it only when something asks (an event, a snapshot): task id, attempt and the
    worker's delivery id (:data:`DELIVERY_KEY`). Reading them at every run's start cost the
    success path what most runs never use.
    """

    __slots__ = ("_id", "handled", "paused", "release", "request", "started", "unhandled")

    def __init__(
        self,
        release: Release,
        started: float,
        request: Any = None,
        session_id: str | None = None,
    ) -> None:
        self._id = session_id
        self.request = request
        self.started = started
        self.release = release
        self.paused = False
        self.handled = 0
        self.unhandled = 0

    @property
    def id(self) -> str:
        if self._id is None:
            request = self.request
            if request is None:  # pragma: no cover - manual sessions get an id at birth
                self._id = str(uuid.uuid4())
            else:
                delivery = getattr(request, "__dict__", {}).get(DELIVERY_KEY)
                self._id = task_session_id(request.id, request.retries or 0, delivery)
                self.request = None  # not kept past its use
        return self._id

    @property
    def started_at(self) -> str:
        return format_timestamp(self.started)

    def snapshot(self) -> SessionSnapshot:
        """The public description of the session (a copy: mutating it changes nothing)."""
        return {
            "id": self.id,
            "startedAt": self.started_at,
            "paused": self.paused,
            "events": {"handled": self.handled, "unhandled": self.unhandled},
        }

    def __repr__(self) -> str:
        state = "paused" if self.paused else "active"
        return f"<Session {self.id} {state} handled={self.handled} unhandled={self.unhandled}>"


#: Set on an exception raised inside ``session_paused()``: never attributed to a session.
PAUSED_MARK = "_bugsnag_celery_paused"

#: The current session of this thread or greenlet. Package-internal: the task wrapper sets
#: and resets it around every run (one ``set`` and one ``reset``: the cheapest way to scope
#: a value to a run that also works on the threads and gevent pools).
CURRENT: ContextVar[Session | None] = ContextVar("bugsnag_celery_session", default=None)

_default_release: Release | None = None


def set_default_release(release: Release | None) -> None:
    """Release group for sessions started by hand outside any task (set by ``configure``)."""
    global _default_release
    _default_release = release


def default_release() -> Release:
    global _default_release
    if _default_release is None:
        _default_release = Release.of(Options())  # the defaults: no app configured
    return _default_release


def current_session() -> Session | None:
    """The live :class:`Session` object of this context (None when there is none)."""
    return CURRENT.get()


def start_session() -> None:
    """Start a new session; later handled and unhandled events are attributed to it.

    An active session is replaced. The new session is counted once, in the release
    group of the session it replaces (inside a task: the task's app), else in the
    release group of the most recently configured app.
    """
    previous = CURRENT.get()
    release = previous.release if previous is not None else default_release()
    now = time.time()
    CURRENT.set(Session(release, now, session_id=str(uuid.uuid4())))
    counts.count_session(release, now)


def pause_session() -> None:
    """Stop attributing events to the current session until it is resumed or replaced."""
    session = CURRENT.get()
    if session is not None:
        session.paused = True


def resume_session() -> bool:
    """Resume the current session if it is paused.

    Returns True if a paused session was resumed. If there was no session, starts one
    and returns False; if the session was not paused, changes nothing and returns False.
    """
    session = CURRENT.get()
    if session is None:
        start_session()
        return False
    if session.paused:
        session.paused = False
        return True
    return False


def get_current_session() -> SessionSnapshot | None:
    """``None`` when no session is active, else a snapshot of it.

    ``{"id": str, "startedAt": str, "paused": bool, "events": {"handled": int, "unhandled": int}}``
    """
    session = CURRENT.get()
    return None if session is None else session.snapshot()


@contextlib.contextmanager
def session_paused() -> Iterator[None]:
    """Pause the current session for the duration of the block.

    Errors raised inside are still reported, but not attributed to the session. On
    exit the session is resumed only if it was active on entry and is still the
    current session (a session started inside the block is left as it is).
    """
    session = CURRENT.get()
    was_paused = session is None or session.paused
    if session is not None:
        session.paused = True
    try:
        yield
    except BaseException as exc:
        # The session resumes as the exception leaves the block, before anything reports
        # it: mark the exception so it is still reported without the session.
        try:
            setattr(exc, PAUSED_MARK, True)
        except Exception:
            pass
        raise
    finally:
        if not was_paused and session is not None and CURRENT.get() is session:
            session.paused = False
