"""What an option may be: each option declared once, with its default, check and sources.

Each option is a field of :class:`Options` made by :func:`option`: its default, its check
(from ``checks.py``), and its names in the other sources (the environment variable, the
official client's names, read from ``settings.BUGSNAG`` and ``bugsnag.configuration`` and
written to the latter). :func:`validate` and the tables of ``sources.py`` are read off
these declarations, so a new option is one field. Where options come from, and which
source wins, is ``sources.py``; a bad value raises ``ValueError`` naming the option.
"""

from __future__ import annotations

import difflib
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, NamedTuple, TypeVar, overload

from . import checks
from .checks import Check

__all__ = [
    "Options",
    "Endpoints",
    "Declared",
    "DECLARED",
    "OPTION_NAMES",
    "official_name",
    "check_unknown",
    "validate",
    "DEFAULT_NOTIFY_ENDPOINT",
    "DEFAULT_SESSIONS_ENDPOINT",
    "DEFAULT_REDACTED_KEYS",
]

#: Keys (case-insensitive substrings) whose values never leave the process.
DEFAULT_REDACTED_KEYS: tuple[str, ...] = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "session",
    "credit_card",
)

DEFAULT_NOTIFY_ENDPOINT = "https://notify.bugsnag.com/"
DEFAULT_SESSIONS_ENDPOINT = "https://sessions.bugsnag.com/"
# BugSnag's notifiers send keys starting with 00000 to SmartBear's hosts.
SMARTBEAR_NOTIFY_ENDPOINT = "https://notify.bugsnag.smartbear.com/"
SMARTBEAR_SESSIONS_ENDPOINT = "https://sessions.bugsnag.smartbear.com/"

T = TypeVar("T")


@dataclass(frozen=True)
class Declared:
    """How an option is checked, and what the other sources call it."""

    check: Check
    #: The environment variable BugSnag's notifiers document for it, if any.
    env: str | None = None
    #: Its names in the official client (``bugsnag.configure()`` keywords, ``settings.BUGSNAG``
    #: keys): the first is the client's attribute; later spellings win in ``settings.BUGSNAG``.
    official: tuple[str, ...] = ()
    #: Also read from a configured ``bugsnag.configuration`` (only where the client's own
    #: default cannot pass for the user's choice).
    from_official_client: bool = False


_DECLARED_KEY = "bugsnag_celery.option"


@overload
def option(
    default: T,
    check: Check,
    *,
    env: str | None = ...,
    official: tuple[str, ...] = ...,
    from_official_client: bool = ...,
    shown: bool = ...,
) -> T: ...
@overload
def option(
    *,
    factory: Callable[[], T],
    check: Check,
    env: str | None = ...,
    official: tuple[str, ...] = ...,
    from_official_client: bool = ...,
    shown: bool = ...,
) -> T: ...
def option(
    default: object = MISSING,
    check: Check | None = None,
    *,
    factory: Callable[[], object] | None = None,
    env: str | None = None,
    official: tuple[str, ...] = (),
    from_official_client: bool = False,
    shown: bool = True,
) -> object:
    """One option's whole declaration: a dataclass field carrying its :class:`Declared`.

    *shown*: False keeps the value out of ``repr`` (the API key never reaches a log line).
    """
    assert check is not None
    metadata = {_DECLARED_KEY: Declared(check, env, official, from_official_client)}
    if factory is not None:
        return field(default_factory=factory, repr=shown, metadata=metadata)
    return field(default=default, repr=shown, metadata=metadata)


class Endpoints(NamedTuple):
    """Where events and session counts go; ``sessions`` is None when they must not be sent."""

    notify: str
    sessions: str | None


@dataclass(frozen=True)
class Options:
    """The resolved, validated options of one configured Celery app."""

    api_key: str | None = option(
        None,
        checks.api_key,
        env="BUGSNAG_API_KEY",
        official=("api_key",),
        from_official_client=True,
        shown=False,
    )
    release_stage: str = option(
        "production",
        checks.text,
        env="BUGSNAG_RELEASE_STAGE",
        official=("release_stage",),
        from_official_client=True,
    )
    app_version: str | None = option(
        None,
        checks.optional_text,
        env="BUGSNAG_APP_VERSION",
        official=("app_version",),
        from_official_client=True,
    )
    app_type: str = option("celery", checks.text, official=("app_type",), from_official_client=True)
    hostname: str = option(
        factory=socket.gethostname, check=checks.text, official=("hostname",), from_official_client=True
    )
    auto_track_sessions: bool = option(
        True, checks.boolean, official=("auto_capture_sessions",), from_official_client=True
    )
    track_eager: bool = option(True, checks.boolean)
    exclude_tasks: tuple[str, ...] = option((), checks.patterns)
    notify_endpoint: str | None = option(
        None, checks.endpoint, official=("endpoint",), from_official_client=True
    )
    sessions_endpoint: str | None = option(
        None, checks.endpoint, official=("session_endpoint",), from_official_client=True
    )
    #: Requests to BugSnag go through this HTTP proxy (the official client's ``proxy_host``).
    proxy_host: str | None = option(
        None, checks.optional_text, official=("proxy_host",), from_official_client=True
    )
    session_flush_interval: float = option(1.0, checks.seconds(0.1))
    session_delivery_interval: float = option(30.0, checks.seconds(1.0))
    enabled_release_stages: tuple[str, ...] | None = option(
        None,
        checks.optional_strings,
        official=("notify_release_stages", "enabled_release_stages"),
        from_official_client=True,
    )
    project_root: str | None = option(None, checks.path, official=("project_root",))
    send_code: bool = option(True, checks.boolean, official=("send_code",), from_official_client=True)
    send_task_args: bool = option(True, checks.boolean)
    redacted_keys: tuple[str, ...] = option(DEFAULT_REDACTED_KEYS, checks.lowered_strings)
    before_notify: tuple[Callable[[dict[str, Any]], Any], ...] = option((), checks.callbacks)
    report_retries: bool = option(False, checks.boolean)
    delivery_timeout: float = option(10.0, checks.seconds(0.1))
    queue_prefix: str = option("bugsnag_celery", checks.text)
    # Where each process keeps its ledger (counts and queued events that outlive it); None:
    # /dev/shm (or the temp folder); "": none (a killed pool child loses what it held).
    ledger_dir: str | None = option(None, checks.folder_or_off, env="BUGSNAG_CELERY_LEDGER_DIR")
    #: The spool of undelivered events is kept under this many bytes on the broker: past it,
    #: each delivery run drops its oldest events, counted in ``status``. At least 1 MiB.
    spool_max_bytes: int = option(64 * 1024 * 1024, checks.byte_count(1024 * 1024))

    @property
    def sends(self) -> bool:
        """False outside ``enabled_release_stages``: then nothing is sent, sessions neither."""
        stages = self.enabled_release_stages
        return stages is None or self.release_stage in stages

    def task_excluded(self) -> Callable[[str], bool]:
        """A predicate: is this task name excluded by ``exclude_tasks``?"""
        names = frozenset(self.exclude_tasks)
        patterns = [re.compile(p) for p in self.exclude_tasks]

        def excluded(name: str) -> bool:
            return name in names or any(p.fullmatch(name) for p in patterns)

        return excluded

    @property
    def endpoints(self) -> Endpoints:
        """Both endpoints, by name; ``sessions`` is None when it must not be sent.

        As in bugsnag-python: when the events endpoint is overridden (an on-premise
        install) but the sessions endpoint is not, sessions are not sent to the public
        host; they are dropped with a warning by the delivery path.
        """
        smartbear = bool(self.api_key) and str(self.api_key).startswith("00000")
        notify = self.notify_endpoint or (SMARTBEAR_NOTIFY_ENDPOINT if smartbear else DEFAULT_NOTIFY_ENDPOINT)
        if self.sessions_endpoint:
            return Endpoints(notify, self.sessions_endpoint)
        if self.notify_endpoint:
            return Endpoints(notify, None)
        return Endpoints(notify, SMARTBEAR_SESSIONS_ENDPOINT if smartbear else DEFAULT_SESSIONS_ENDPOINT)


#: Every option's declaration, by name, in the order of the fields of :class:`Options`.
DECLARED: Mapping[str, Declared] = {f.name: f.metadata[_DECLARED_KEY] for f in fields(Options)}

OPTION_NAMES: tuple[str, ...] = tuple(DECLARED)


def official_name(name: str) -> str:
    """The official client's name (its ``configuration`` attribute) for option *name*."""
    return DECLARED[name].official[0]


def check_unknown(names: Iterable[str], where: str) -> None:
    for name in names:
        if name not in OPTION_NAMES:
            close = difflib.get_close_matches(name, OPTION_NAMES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"bugsnag_celery: unknown option {name!r} ({where}){hint}")


def validate(raw: Mapping[str, object]) -> dict[str, object]:
    """Each known option's value checked by its declaration (unknown names are skipped:
    :func:`check_unknown` names them first)."""
    return {name: DECLARED[name].check(name, value) for name, value in raw.items() if name in DECLARED}
