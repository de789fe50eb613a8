"""The package's own durable queues on the app's broker, and publishing to them.

Four queues per ``queue_prefix`` (default ``bugsnag_celery``): ``<prefix>.sessions``
(session counts on their way to delivery), ``<prefix>.events`` (events spooled when
BugSnag could not be reached), ``<prefix>.status`` (the last delivery's outcome) and
``<prefix>.beat_mark`` (when the delivery task was last sent, and by whom).
Messages are JSON, never pickle. A different prefix keeps apps (or test runs) that
share a broker apart.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from kombu.entity import Exchange, Queue

from .libraries import BrokerLibraryMissing, library_missing
from .limits import broker_limit, message_limit

if TYPE_CHECKING:
    from celery import Celery

__all__ = [
    "DEFAULT_PREFIX",
    "QueueNames",
    "queue_names",
    "durable_queue",
    "connection",
    "kept_connection",
    "body_limit",
    "MessageTooLarge",
    "publish",
    "broker_problem",
    "check_broker_libraries",
    "bound_queue",
    "message_count",
    "queue_length",
]

DEFAULT_PREFIX = "bugsnag_celery"


class QueueNames(NamedTuple):
    """The four queues of one ``queue_prefix``: the only place their names are spelled."""

    sessions: str
    events: str
    status: str
    beat_mark: str  # one message: the mark the delivery task's sender (a beat) leaves


def queue_names(prefix: str = DEFAULT_PREFIX) -> QueueNames:
    return QueueNames(f"{prefix}.sessions", f"{prefix}.events", f"{prefix}.status", f"{prefix}.beat_mark")


# Bounded: a dead broker must not hold a task or a shutdown for long.
RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


@functools.lru_cache(maxsize=64)
def durable_queue(name: str) -> Queue:
    exchange = Exchange(name, type="direct", durable=True)
    return Queue(name, exchange, routing_key=name, durable=True)


#: A broker that accepts connections and never answers must not hang a flush or a shutdown.
SOCKET_TIMEOUTS = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0}

#: The package's own connections never wait on an empty queue. kombu's SQS transport
#: long-polls every read for ``wait_time_seconds`` (10 s by default, what a worker wants for
#: its task queues): each read that found a queue empty held a delivery run 10 s, and a run
#: took 41-68 s, longer than its interval. It also hides a message handed back for that long.
NO_LONG_POLL = {"wait_time_seconds": 0}


def connection(app: Celery, write: bool = True) -> Any:
    """A connection to the app's broker with bounded socket waits (Redis ignores none by default)
    and no long polls (SQS).

    kombu's connections, queues and messages are left untyped here: kombu has
    type hints from 5.7 on only, and few of its methods have them even there. A library the
    transport needs that is not installed raises :class:`BrokerLibraryMissing` (one line:
    which library, and the extra that installs it).
    """
    options = dict(app.conf.broker_transport_options or {})
    for key, value in SOCKET_TIMEOUTS.items():
        options.setdefault(key, value)
    factory = app.connection_for_write if write else app.connection_for_read
    try:
        conn = factory(connect_timeout=5, transport_options=options)  # imports the transport
        if conn.transport.driver_type == "sqs":  # building the transport opens nothing
            conn.transport_options.update(NO_LONG_POLL)
    except Exception as exc:  # kombu 5.7 without redis-py: AttributeError on None.Redis
        missing = library_missing(app, exc, write)
        if missing is None:
            raise
        raise missing from exc
    return conn


def check_broker_libraries(app: Celery) -> None:
    """Raise :class:`BrokerLibraryMissing` if *app*'s broker transport cannot load here.

    Builds a connection and its transport, as every broker step does first: no I/O.
    """
    connection(app).release()


#: Each thread's kept connections (``pid``, ``conns``: id(app) -> (app, connection, producer)).
#: An instance, not a subclass: gevent and eventlet replace ``threading.local`` when they patch.
_kept = threading.local()
#: Apps whose connection a thread keeps at most (tests configure many; a worker has one or two).
MAX_KEPT = 8


def _publisher(app: Celery) -> tuple[Any, Any]:
    """This thread's connection to *app*'s broker and its producer: made once, then kept.

    The flusher publishes every second: a connection per publish was ~2% of a pool child's
    time in an error storm and 155 new broker connections a minute on ``-c 4``. Kept per
    thread (a kombu connection is not thread-safe) and per process (after a fork the parent's
    socket is neither used nor closed by the child).
    """
    pid = os.getpid()
    kept: dict[int, tuple[Any, Any, Any]] | None = getattr(_kept, "conns", None)
    if kept is None or getattr(_kept, "pid", None) != pid:
        kept = _kept.conns = {}
        _kept.pid = pid
    entry = kept.get(id(app))
    if entry is None or entry[0] is not app:
        if len(kept) >= MAX_KEPT:
            for other in list(kept):
                _forget(other)
        conn = connection(app)
        entry = kept[id(app)] = (app, conn, conn.Producer(serializer="json"))
    return entry[1], entry[2]


@contextlib.contextmanager
def kept_connection(app: Celery) -> Iterator[Any]:
    """This thread's kept connection to *app*'s broker (:func:`_publisher`), for reads as well
    as publishes: a delivery run, a status read and a flush share it. On SQS each new
    connection makes a new boto3 client (~100 ms of CPU); one is made per process and thread.
    An error inside drops it (the next use connects anew)."""
    conn, _producer = _publisher(app)
    try:
        yield conn
    except ImportError as exc:  # a library a transport imports late (kombu's SQS: pycurl)
        _forget(id(app))
        missing = library_missing(app, exc)
        if missing is None:
            raise
        raise missing from exc
    except BaseException:
        _forget(id(app))
        raise


def body_limit(app: Celery) -> int:
    """The largest JSON body (bytes) the package may publish to *app*'s broker: what kombu then
    stores (``transport/limits.py``) stays under the broker's limit. No I/O."""
    conn, _producer = _publisher(app)
    return message_limit(broker_limit(conn.transport.driver_type, conn.transport_options))


class MessageTooLarge(ValueError):
    """A body over :func:`body_limit`: the broker would refuse it (the writer splits first)."""


def _json(body: object) -> bytes:
    if isinstance(body, bytes):
        return body
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _forget(key: int) -> None:
    """Drop and close a kept connection (broken, or evicted): the next publish connects anew."""
    kept: dict[int, tuple[Any, Any, Any]] = getattr(_kept, "conns", None) or {}
    entry = kept.pop(key, None)
    if entry is not None:
        try:
            entry[1].release()
        except Exception:  # a dead socket: nothing to close cleanly
            pass


#: What a broker says when it refuses access rather than being out of reach: AMQP's
#: ACCESS_REFUSED (a 403 of RabbitMQ's permissions), Redis' ACL and authentication errors.
_REFUSALS = ("AccessRefused", "NoPermissionError", "AuthenticationError", "NotAllowed")


def broker_problem(exc: BaseException) -> tuple[str, str]:
    """What a failed publish was -- ``"refused"``, ``"unreachable"`` or ``"library"`` (the
    transport's library is not installed) -- and how to say it.

    RabbitMQ permissions that forbid the package's queues once read "broker unreachable":
    a refusal names the user's permissions and the queue, and lasts until they change.
    """
    if isinstance(exc, BrokerLibraryMissing):
        return "library", str(exc)
    if type(exc).__name__ in _REFUSALS or getattr(exc, "code", None) == 403:
        return "refused", f"the broker refused access (permissions of the broker user for this queue?): {exc}"
    return "unreachable", f"the broker is unreachable: {exc}"


def publish(app: Celery, name: str, bodies: Sequence[object]) -> None:
    """Publish JSON *bodies* (objects, or their encoded JSON) to queue *name*, persistently,
    over this thread's kept connection (:func:`_publisher`). Raises if the broker refuses, and
    :class:`MessageTooLarge`, publishing nothing, for a body over :func:`body_limit`."""
    queue = durable_queue(name)
    limit = body_limit(app)
    encoded = [_json(body) for body in bodies]
    for data in encoded:
        if len(data) > limit:
            raise MessageTooLarge(f"a message of {len(data)} bytes for {name}, over the broker's {limit}")
    _conn, producer = _publisher(app)
    try:
        for data in encoded:
            producer.publish(
                data,
                content_type="application/json",
                content_encoding="utf-8",
                exchange=queue.exchange,
                routing_key=name,
                declare=[queue],
                delivery_mode=2,
                retry=True,
                retry_policy=RETRY_POLICY,
            )
    except BaseException as exc:
        _forget(id(app))  # not kept broken (nor half-used, if a signal interrupted it)
        missing = library_missing(app, exc) if isinstance(exc, ImportError) else None
        if missing is None:
            raise
        raise missing from exc


def bound_queue(conn: Any, name: str) -> Any:
    """The queue bound to *conn*'s default channel, declared."""
    bound = durable_queue(name).bind(conn.default_channel)
    bound.declare()
    return bound


def message_count(app: Celery, name: str) -> int:
    """Messages waiting in queue *name* (on SQS, approximate: its ``ApproximateNumberOfMessages``)."""
    with kept_connection(app) as conn:
        return queue_length(conn, name)


def queue_length(conn: Any, name: str) -> int:
    """Messages waiting in queue *name*, on an open connection."""
    _name, count, _consumers = bound_queue(conn, name).queue_declare()
    return int(count)
