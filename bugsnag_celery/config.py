"""Options: what they may be, their defaults, and the loud failure when one is wrong.

Where they come from, and which source wins, is ``settings.py``: every value is checked
here, by name, and a bad one raises ``ValueError`` naming the option.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple
from urllib.parse import urlsplit

__all__ = [
    "Options",
    "Endpoints",
    "OPTION_NAMES",
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

_API_KEY = re.compile(r"[0-9a-fA-F]{32}")


class Endpoints(NamedTuple):
    """Where events and session counts go; ``sessions`` is None when they must not be sent."""

    notify: str
    sessions: str | None


@dataclass(frozen=True)
class Options:
    """The resolved, validated options of one configured Celery app."""

    api_key: str | None = field(default=None, repr=False)  # never in a repr or a log line
    release_stage: str = "production"
    app_version: str | None = None
    app_type: str = "celery"
    hostname: str = field(default_factory=socket.gethostname)
    auto_track_sessions: bool = True
    track_eager: bool = True
    exclude_tasks: tuple[str, ...] = ()
    notify_endpoint: str | None = None
    sessions_endpoint: str | None = None
    session_flush_interval: float = 1.0
    session_delivery_interval: float = 30.0
    enabled_release_stages: tuple[str, ...] | None = None
    project_root: str | None = None
    send_code: bool = True
    send_task_args: bool = True
    redacted_keys: tuple[str, ...] = DEFAULT_REDACTED_KEYS
    before_notify: tuple[Callable[[dict[str, Any]], Any], ...] = ()
    report_retries: bool = False
    delivery_timeout: float = 10.0
    queue_prefix: str = "bugsnag_celery"

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


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Options))


def _fail(option: str, problem: str) -> ValueError:
    return ValueError(f"bugsnag_celery: option {option!r} {problem}")


def check_unknown(names: Iterable[str], where: str) -> None:
    for name in names:
        if name not in OPTION_NAMES:
            close = difflib.get_close_matches(name, OPTION_NAMES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"bugsnag_celery: unknown option {name!r} ({where}){hint}")


def _as_bool(option: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in (
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
    ):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise _fail(option, f"must be a boolean, not {_shown(value)}")


#: Below these, a background thread or the beat would spin for nothing (1e-9 s burns a core).
MIN_INTERVALS = {"session_flush_interval": 0.1, "session_delivery_interval": 1.0, "delivery_timeout": 0.1}


def _as_interval(option: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise _fail(option, f"must be a number of seconds, not {_shown(value)}") from None
    if isinstance(value, bool) or not number > 0 or number != number or number == float("inf"):
        raise _fail(option, f"must be a positive number of seconds, not {_shown(value)}")
    least = MIN_INTERVALS.get(option, 0.0)
    if number < least:
        raise _fail(option, f"must be at least {least:g} seconds, not {number:g}")
    return number


def _shown(value: Any) -> str:
    """A value for an error message: short, and never a URL's credentials."""
    text = repr(value) if not isinstance(value, str) else repr(_without_credentials(value))
    return text if len(text) <= 80 else text[:77] + "..."


def _without_credentials(url: str) -> str:
    return re.sub(r"(?<=//)[^/@\s]*@", "***@", url)


def _as_text(option: str, value: Any, *, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # app_version=2 is a common slip; BugSnag wants text
    if not isinstance(value, str) or not value.strip():
        raise _fail(option, f"must be a non-empty string, not {_shown(value)}")
    return value.strip()


def _as_endpoint(option: str, value: Any) -> str | None:
    """A whole URL: http(s), a host, a valid port, nothing unquoted, no credentials."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(option, f"must be an http:// or https:// URL, not {_shown(value)}")
    text = value.strip()
    problem = None
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError for "notaport" or 99999
    except ValueError as exc:
        parts, port, problem = None, None, f"has a bad port or host ({exc})"
    if parts is not None:
        if parts.scheme not in ("http", "https"):
            problem = "must start with http:// or https://"
        elif not parts.hostname:
            problem = "has no host"
        elif re.search(r"\s", text):
            problem = "contains whitespace"
        elif parts.username is not None or parts.password is not None:
            problem = "must not contain credentials (BugSnag authenticates with the API key)"
        elif port == 0:
            problem = "has port 0"
    if problem is not None:
        raise _fail(option, f"{problem}: {_shown(text)}")
    return text


def _as_patterns(option: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    try:
        items = list(items)
    except TypeError:
        raise _fail(
            option, f"must be a task name or a list of names/regular expressions, not {_shown(value)}"
        ) from None
    for item in items:
        if not isinstance(item, str):
            raise _fail(option, f"entries must be strings, not {_shown(item)}")
        try:
            re.compile(item)
        except re.error as exc:
            raise _fail(option, f"has an invalid regular expression {item!r}: {exc}") from None
    return tuple(items)


def _as_strings(option: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    try:
        items = list(items)
    except TypeError:
        raise _fail(option, f"must be a list of strings, not {_shown(value)}") from None
    for item in items:
        if not isinstance(item, str) or not item:
            raise _fail(option, f"entries must be non-empty strings, not {_shown(item)}")
    return tuple(items)


def validate(raw: dict[str, Any]) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "api_key":
            if value is None:
                continue
            if not isinstance(value, str) or not _API_KEY.fullmatch(value.strip()):
                # Never echo the key itself: it ends up in logs.
                shown = f"{len(value)} characters" if isinstance(value, str) else type(value).__name__
                raise _fail(name, f"must be 32 hexadecimal characters (got {shown})")
            clean[name] = value.strip().lower()
        elif name in ("release_stage", "app_type", "hostname", "queue_prefix"):
            clean[name] = _as_text(name, value, optional=False)
        elif name == "app_version":
            clean[name] = _as_text(name, value, optional=True)
        elif name in ("auto_track_sessions", "track_eager", "send_code", "send_task_args", "report_retries"):
            clean[name] = _as_bool(name, value)
        elif name in ("session_flush_interval", "session_delivery_interval", "delivery_timeout"):
            clean[name] = _as_interval(name, value)
        elif name in ("notify_endpoint", "sessions_endpoint"):
            clean[name] = _as_endpoint(name, value)
        elif name == "exclude_tasks":
            clean[name] = _as_patterns(name, value)
        elif name in ("enabled_release_stages", "redacted_keys"):
            if value is None and name == "enabled_release_stages":
                clean[name] = None
                continue
            items = _as_strings(name, value)
            clean[name] = tuple(i.lower() for i in items) if name == "redacted_keys" else items
        elif name == "project_root":
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise _fail(name, f"must be a path (str or os.PathLike), not {_shown(value)}")
            clean[name] = None if value is None else _as_text(name, os.fspath(value), optional=False)
        elif name == "before_notify":
            callbacks = [value] if callable(value) else value
            try:
                callbacks = tuple(callbacks)
            except TypeError:
                raise _fail(name, f"must be a callable or a list of callables, not {_shown(value)}") from None
            for callback in callbacks:
                if not callable(callback):
                    raise _fail(name, f"entries must be callables, not {_shown(callback)}")
            clean[name] = callbacks
    return clean
