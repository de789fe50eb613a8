"""Where options come from, and which one wins.

Precedence, highest first: keyword arguments to ``configure()``, the Celery config
(``app.conf.bugsnag_<option>``; ``CELERY_BUGSNAG_<OPTION>`` in a Django settings module read
with ``namespace="CELERY"``), the environment (``BUGSNAG_API_KEY``,
``BUGSNAG_RELEASE_STAGE``, ``BUGSNAG_APP_VERSION``), Django's ``settings.BUGSNAG`` when
Django's settings are loaded (the dict the official Django integration reads), the official
``bugsnag`` package's global configuration when it was imported and configured, and last
the official Django integration's default (release stage ``development`` under ``DEBUG``).

An API key that is empty or only whitespace (``os.environ.get("BUGSNAG_API_KEY", "")``, the
usual way to leave it out of development) is no key: that source does not set it, as if it
were absent, and a lower source may. With no key anywhere nothing is sent, and the worker
says once, at its start, where it looked (:func:`where_the_key_was_sought`).

Resolution reads only what is already in memory: it imports neither Django nor
``bugsnag`` (both are looked up in ``sys.modules``), opens nothing and starts nothing,
because the same app module is imported by every web process that only sends tasks.
Where Django's settings were not loaded yet when ``configure()`` ran, the worker resolves
the options again when it starts (``hooks/wiring.py``), with everything loaded.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from .declared import DECLARED, Options, check_unknown, validate

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["resolve_options", "django_settings_pending", "blank_key", "where_the_key_was_sought"]

# The tables below are read off the declarations in ``declared.py``: one field per option.

# Environment variables BugSnag's notifiers document.
_ENV = {name: declared.env for name, declared in DECLARED.items() if declared.env}

# settings.BUGSNAG keys of the official Django integration (the official client's names)
# -> our option names; a later spelling of the same option wins.
_DJANGO_KEYS = {theirs: name for name, declared in DECLARED.items() for theirs in declared.official}

# bugsnag.configuration attributes read as a source -> our option names.
_OFFICIAL_CLIENT = {
    declared.official[0]: name for name, declared in DECLARED.items() if declared.from_official_client
}


def blank_key(value: object) -> bool:
    """No API key: None, or a string that is empty or only whitespace."""
    return value is None or (isinstance(value, str) and not value.strip())


def _celery_prefixes(app: Celery) -> list[str]:
    namespace = getattr(app, "namespace", None)
    return ["bugsnag_"] + ([f"{namespace}_BUGSNAG_".upper()] if namespace else [])


def _celery_conf(app: Celery) -> dict[str, object]:
    """The app's Celery config keys for this package, prefix removed.

    ``bugsnag_<option>`` (Celery's lowercase style), and with a namespace -- Celery's
    Django layout, ``app.config_from_object("django.conf:settings", namespace="CELERY")``
    -- ``CELERY_BUGSNAG_<OPTION>``, as Celery reads its own settings there. Never a bare
    ``BUGSNAG_*``: in a Django project those are the project's own settings, not options.
    """
    found: dict[str, object] = {}
    conf = app.conf
    prefixes = _celery_prefixes(app)
    where = " or ".join(f"app.conf.{p}*" for p in prefixes)
    for key in list(conf.keys()):
        if not isinstance(key, str):
            continue
        for prefix in prefixes:
            if key.startswith(prefix):
                found[key[len(prefix) :].lower()] = conf[key]
    check_unknown(found, f"from {where}")
    return found


def _environment() -> dict[str, object]:
    return {name: os.environ[var] for name, var in _ENV.items() if os.environ.get(var)}


class _DjangoSettings(Protocol):
    """What is read of ``django.conf.settings`` besides ``BUGSNAG``."""

    configured: bool
    DEBUG: bool


def _loaded_django_settings() -> _DjangoSettings | None:
    """Django's settings if they are loaded in this process, else None (never loads them)."""
    conf = sys.modules.get("django.conf")
    if conf is None:
        return None
    try:
        settings = conf.settings
        return settings if settings.configured else None
    except Exception:  # Django half set up: not ours to fail on (the worker start re-reads)
        return None


def _django_settings() -> dict[str, object]:
    """``settings.BUGSNAG``, the dict the official Django integration reads."""
    settings = _loaded_django_settings()
    raw = getattr(settings, "BUGSNAG", None) if settings is not None else None
    if not isinstance(raw, Mapping):
        return {}
    return {ours: raw[theirs] for theirs, ours in _DJANGO_KEYS.items() if raw.get(theirs) is not None}


def _django_defaults() -> dict[str, object]:
    """What the official Django integration defaults to: ``development`` under ``DEBUG``."""
    settings = _loaded_django_settings()
    try:
        return {"release_stage": "development"} if settings is not None and settings.DEBUG else {}
    except Exception:
        return {}


def django_settings_pending() -> bool:
    """Django is this process's framework but its settings are not loaded yet.

    Then ``settings.BUGSNAG`` could not be read; the worker start resolves the options again.
    """
    return bool(os.environ.get("DJANGO_SETTINGS_MODULE")) and _loaded_django_settings() is None


def _official_bugsnag() -> dict[str, object]:
    module = sys.modules.get("bugsnag")
    configuration = getattr(module, "configuration", None) if module is not None else None
    if configuration is None or blank_key(getattr(configuration, "api_key", None)):
        return {}  # imported perhaps, but never configured
    found: dict[str, object] = {}
    for theirs, ours in _OFFICIAL_CLIENT.items():
        try:
            value = getattr(configuration, theirs, None)
        except Exception:
            value = None
        if value is not None:
            found[ours] = value
    if found.get("release_stage") == "production" and not os.environ.get("BUGSNAG_RELEASE_STAGE"):
        del found["release_stage"]  # its default, not a choice: the Django default may apply
    return found


def resolve_options(app: Celery, kwargs: Mapping[str, object]) -> Options:
    """Merge every source by precedence and validate; raise ``ValueError`` naming the option.

    Only the value that wins is validated: a malformed value in a source that a higher one
    overrides (``BUGSNAG_API_KEY=xyz`` in the environment, a valid ``api_key=``) is not used,
    so it cannot fail the configuration.
    """
    check_unknown(kwargs, "keyword argument to configure()")
    sources = [
        ("keyword arguments", dict(kwargs)),
        ("app.conf", _celery_conf(app)),
        ("environment", _environment()),
        ("Django settings.BUGSNAG", _django_settings()),
        ("bugsnag.configuration", _official_bugsnag()),
        ("Django's DEBUG (as the official Django integration)", _django_defaults()),
    ]
    winners: dict[str, tuple[str, object]] = {}
    for where, values in reversed(sources):  # lowest precedence first, overwritten upwards
        for name, value in values.items():
            if name == "api_key" and blank_key(value):
                continue  # an empty key is no key: this source does not set it
            winners[name] = (where, value)
    merged: dict[str, object] = {}
    for name, (where, value) in winners.items():
        try:
            merged.update(validate({name: value}))
        except ValueError as exc:
            raise ValueError(f"{exc} (from {where})") from None
    return Options(**merged)  # type: ignore[arg-type]  # each value checked by its declaration


def _sought(value: object, given: bool) -> str:
    """What one place held, for the warning: never the value itself."""
    if not given:
        return "not set"
    return "empty" if blank_key(value) else "set"


def _django_key_held() -> str:
    settings = _loaded_django_settings()
    if settings is None:
        return "Django's settings not loaded" if django_settings_pending() else "no Django settings here"
    raw = getattr(settings, "BUGSNAG", None)
    if not isinstance(raw, Mapping):
        return "no settings.BUGSNAG"
    return _sought(raw.get("api_key"), "api_key" in raw)


def _official_key_held() -> str:
    module = sys.modules.get("bugsnag")
    if module is None:
        return "bugsnag not imported"
    value = getattr(getattr(module, "configuration", None), "api_key", None)
    return _sought(value, value is not None)


def where_the_key_was_sought(app: Celery, kwargs: Mapping[str, object]) -> str:
    """Every place the API key is looked for, in order, each with what it held ("not set",
    "empty"; a place that could not be read says why): the worker's warning when no key was
    found. Never a key, and nothing is imported or loaded to say it."""
    try:
        conf = _celery_conf(app)
        conf_held = _sought(conf.get("api_key"), "api_key" in conf)
    except Exception:  # an unknown option: configure() said so already
        conf_held = "not read"
    names = [f"app.conf.{p}api_key" if p.islower() else f"{p}API_KEY" for p in _celery_prefixes(app)]
    conf_names = " or ".join(names)
    var = str(DECLARED["api_key"].env)
    return ", ".join([
        f"configure(api_key=...) ({_sought(kwargs.get('api_key'), 'api_key' in kwargs)})",
        f"{conf_names} ({conf_held})",
        f"the environment variable {var} ({_sought(os.environ.get(var), var in os.environ)})",
        f"Django's settings.BUGSNAG['api_key'] ({_django_key_held()})",
        f"the official bugsnag client's configuration.api_key ({_official_key_held()})",
    ])  # fmt: skip
