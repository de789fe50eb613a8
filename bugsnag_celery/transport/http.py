"""One HTTP request to BugSnag, and what its answer means (an :class:`~.outcome.Outcome`).

This module moves bytes: the body is built elsewhere (``payload/``), and what to do with
an outcome -- and how long to wait for it -- is decided in ``outcome.py``. Connect and read
time-outs are separate: connecting is quick or dead (at most 5 s), a slow answer gets the
whole read time-out the caller gives, since deliveries run off the task's path.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
import requests.adapters
import urllib3
import urllib3.connection

# requests imports these lazily on a session's first request (to read ~/.netrc). Our
# sender thread in a worker's main process makes that first request while billiard may
# be forking a replacement pool child: a fork taken while another thread holds a
# module's import lock leaves that lock held forever in the child, whose own first POST
# then hangs on the import (seen: a deliver_sessions run stuck after a child was
# SIGKILLed). Importing them here, before any fork, removes the race.
import netrc  # noqa: F401  # isort: skip
import shlex  # noqa: F401  # isort: skip

from ..clock import now_iso
from .outcome import Fate, Outcome

__all__ = ["Request", "post", "headers_for", "route_through_proxy"]

CONNECT_TIMEOUT = 5.0


@dataclass
class Request:
    """One request to BugSnag (where, with which key and payload version, the body), and its bookkeeping.

    An event request may be handed over as its events rather than a body: ``encoded`` (each
    event's JSON, as the failure path hands them over) or ``events`` (dicts, encoded by the
    sender thread). The sender merges the events queued for the same endpoint and key into
    one request (BugSnag's v4 payload carries a list), so a burst of failures against a
    slow endpoint does not become a backlog of requests; the merged request keeps the
    handed-over ones as its ``parts``.
    """

    endpoint: str
    api_key: str = field(repr=False)  # never in a repr, a log line or a traceback's locals
    payload_version: str  # the ``payload/wire.py`` version of what the body holds
    body: bytes = b""
    kind: str = "event"
    attempts: int = 0
    unknown: int = 0  # sends whose outcome was unknown (no answer), up to outcome.HUNG: the policy's
    retry_after: float = 0.0  # seconds BugSnag asked us to wait (429 with Retry-After)
    events: list[dict[str, Any]] | None = None
    # Events already encoded, one JSON object each. The failure path encodes on the task's
    # thread (~12 us an event): bytes waiting in the sender's queue give the cyclic garbage
    # collector nothing to walk, where a storm's queued event dicts made every collection
    # of the busy task thread longer, and the sender thread holds the GIL for less.
    encoded: list[bytes] | None = None
    # Called with how it ended once it is delivered, dropped or spooled (tests, flush).
    on_done: Callable[[Fate], None] | None = field(default=None, repr=False)
    # The requests a merged one carries (None: it is one of those itself).
    parts: list[Request] | None = field(default=None, repr=False)
    # Where its events are kept in the process's ledger until it ends (``journal.py``): the
    # ledger and each event's offset. Plain fields, not a callback wrapped around ``on_done``:
    # an error storm keeps hundreds of queued requests alive long enough for the garbage
    # collector to move them to its oldest generation, and every object one holds there (a
    # closure, its cells, a list) brought its next full collection (~25 ms) nearer.
    journal: object = field(default=None, repr=False)
    journaled: tuple[int | None, ...] = field(default=(), repr=False)
    # Set when it is delivered, dropped or spooled; or when a shutdown flush took it over
    # from the sender thread (which then leaves it alone).
    finished: bool = field(default=False, repr=False)
    taken_over: bool = field(default=False, repr=False)

    def originals(self) -> list[Request]:
        return self.parts or [self]

    def holds_events(self) -> bool:
        """Events still to be packed into a body (encoded or not)."""
        return self.events is not None or self.encoded is not None

    def event_count(self) -> int:
        return len(self.encoded if self.encoded is not None else self.events or ())


def headers_for(request: Request) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Bugsnag-Api-Key": request.api_key,
        "Bugsnag-Payload-Version": request.payload_version,
        "Bugsnag-Sent-At": now_iso(),
    }


_http: requests.Session | None = None
_http_pid = 0

# A fork never waits for an answer. The main process of a prefork worker posts the crash it
# saw (a child SIGKILLed, a hard time limit) at the very moment billiard forks the
# replacement child; a fork taken while our thread is inside requests/urllib3 (their locks,
# a lazy import's module lock, OpenSSL's) leaves those held for ever in the child, which
# then hangs at its first request or at shutdown (seen: a warm shutdown stuck for 60 s). So
# every request holds this lock, and a fork takes it first -- except while the request
# waits for BugSnag's answer (``_Waiting.getresponse``): then the thread sits in a socket
# read on a connection of its own (a child makes its own session and connections, and
# never touches that one), holding nothing a child needs. A fork waits at most for a
# request to be built, connected and sent (each socket step within the connect time-out),
# never for the answer: a hung BugSnag once stalled every fork for a whole
# ``delivery_timeout``, twice, with ``--max-tasks-per-child=1`` (100 tasks: 36.5 s, not 14.5 s).
_request_lock = threading.Lock()
_holding = threading.local()  # ``.lock``: True while this thread's post() holds _request_lock


def _before_fork() -> None:
    _request_lock.acquire()


def _after_fork() -> None:
    _request_lock.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)


class _Waiting:
    """A connection that waits for the answer without the request lock (see above)."""

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        if not getattr(_holding, "lock", False):  # not inside post(): nothing to let go of
            return super().getresponse(*args, **kwargs)  # type: ignore[misc]
        _request_lock.release()
        try:
            return super().getresponse(*args, **kwargs)  # type: ignore[misc]
        finally:
            _request_lock.acquire()


class _HTTPConnection(_Waiting, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Waiting, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


# Called through Any: older types-requests (the one Python 3.9 gets) leave both methods untyped.
_BaseAdapter: Any = requests.adapters.HTTPAdapter


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter, with connections that wait for answers without the request lock."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        _BaseAdapter.init_poolmanager(self, *args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = _BaseAdapter.proxy_manager_for(self, proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS has connection classes of its own
            manager.pool_classes_by_scheme = _POOLS
        return manager


def _session() -> requests.Session:
    global _http, _http_pid
    if _http is None or _http_pid != os.getpid():  # never share a connection pool across fork
        _http, _http_pid = requests.Session(), os.getpid()
        _http.trust_env = False  # the environment is read by _environment_for, not per request
        _http.mount("http://", _Adapter())
        _http.mount("https://", _Adapter())
    return _http


#: ``scheme://host`` of an endpoint -> the HTTP proxy its requests go through (``proxy_host``):
#: requests' own per-host proxy keys, so that apps with different proxies share one session.
_proxies: dict[str, str] = {}


def route_through_proxy(endpoint: str | None, proxy: str | None) -> None:
    """Send every request to *endpoint*'s host through *proxy* (the official ``proxy_host``)."""
    if not endpoint or not proxy:
        return
    scheme, _, rest = endpoint.partition("://")
    _proxies[f"{scheme}://{rest.split('/', 1)[0]}"] = proxy if "://" in proxy else f"http://{proxy}"
    _environment.clear()


#: How long what :func:`_environment_for` read is used before it is read again.
ENVIRONMENT_TTL = 60.0
#: endpoint -> (when read, proxies, verify, auth): see :func:`_environment_for`.
_environment: dict[str, tuple[float, dict[str, str], bool | str, Any]] = {}


def _environment_for(url: str) -> tuple[dict[str, str], bool | str, Any]:
    """What requests takes from the environment for a request to *url* -- the proxies
    (``HTTP(S)_PROXY``, ``ALL_PROXY``, ``NO_PROXY``), the CA bundle (``REQUESTS_CA_BUNDLE``,
    ``CURL_CA_BUNDLE``) and ``~/.netrc`` -- merged as ``Session.merge_environment_settings``
    and ``prepare_request`` merge them, the ``proxy_host`` proxies first.

    requests reads all of it again for every request (its session's ``trust_env``): it
    decodes every environment variable twice and looks for ``~/.netrc``, ~0.3 ms of the
    ~1.5 ms of CPU a POST cost the sender thread, in the process whose tasks it shares the
    interpreter with. Read here once a minute per endpoint instead (:data:`ENVIRONMENT_TTL`):
    a proxy set in the environment of a running worker is used within a minute.
    """
    now = time.monotonic()
    cached = _environment.get(url)
    if cached is not None and now - cached[0] < ENVIRONMENT_TTL:
        return cached[1], cached[2], cached[3]
    proxies = dict(_proxies)
    for key, value in requests.utils.get_environ_proxies(url, no_proxy=None).items():
        proxies.setdefault(key, value)
    verify: bool | str = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    auth = requests.utils.get_netrc_auth(url)
    _environment[url] = (now, proxies, verify, auth)
    return proxies, verify, auth


def post(request: Request, timeout: float) -> tuple[Outcome, str]:
    """POST once, waiting *timeout* seconds for the answer; classify the result. Never raises."""
    try:
        proxies, verify, auth = _environment_for(request.endpoint)
        with _request_lock:
            _holding.lock = True
            try:
                response = _session().post(
                    request.endpoint,
                    data=request.body,
                    headers=headers_for(request),
                    timeout=(min(timeout, CONNECT_TIMEOUT), timeout),
                    proxies=proxies,
                    verify=verify,
                    auth=auth,
                )
                status = response.status_code
                if status == 429:
                    request.retry_after = _retry_after(response.headers.get("Retry-After"))
                response.close()
            finally:
                _holding.lock = False
    except requests.ReadTimeout:
        return Outcome.UNKNOWN, "no answer within the read time-out (the payload may have arrived)"
    except requests.RequestException as exc:
        return Outcome.RETRY, f"{type(exc).__name__}"
    except Exception as exc:  # an adapter bug must not kill the sender thread
        return Outcome.RETRY, f"{type(exc).__name__}"
    if 200 <= status < 300:
        return Outcome.DELIVERED, str(status)
    if status in (408, 429) or status >= 500:
        return Outcome.RETRY, f"HTTP {status}"
    return Outcome.PERMANENT, f"HTTP {status}"


#: The longest wait a Retry-After may ask of the sender thread (then it retries anyway).
MAX_RETRY_AFTER = 60.0


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header (a number; an HTTP date is read as 'a while')."""
    if not value:
        return 0.0
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return MAX_RETRY_AFTER / 6
