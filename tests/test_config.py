"""configure(): option sources, precedence, loud failures, and no cost where no task runs.

Covers: bugsnag_celery/options/declared.py, bugsnag_celery/options/checks.py
Covers: bugsnag_celery/options/sources.py, bugsnag_celery/hooks/wiring.py
Covers: bugsnag_celery/logs.py, bugsnag_celery/__init__.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

import bugsnag_celery

KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    for var in ("BUGSNAG_API_KEY", "BUGSNAG_RELEASE_STAGE", "BUGSNAG_APP_VERSION"):
        monkeypatch.delenv(var, raising=False)
    app = Celery(f"c{uuid.uuid4().hex[:6]}", broker="memory://", set_as_current=False)
    yield app
    bugsnag_celery.unconfigure(app)


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"api_key": "abc"}, "'api_key'"),
        ({"api_key": "g" * 32}, "'api_key'"),
        ({"api_key": 12345}, "'api_key'"),
        ({"apikey": KEY}, "'apikey'"),
        ({"releasestage": "x"}, "did you mean 'release_stage'"),
        ({"session_flush_interval": 0}, "'session_flush_interval'"),
        ({"session_delivery_interval": -5}, "'session_delivery_interval'"),
        ({"session_delivery_interval": "soon"}, "'session_delivery_interval'"),
        ({"session_flush_interval": float("nan")}, "'session_flush_interval'"),
        ({"auto_track_sessions": "maybe"}, "'auto_track_sessions'"),
        ({"exclude_tasks": ["ok", "(unclosed"]}, "'exclude_tasks'"),
        ({"exclude_tasks": [3]}, "'exclude_tasks'"),
        ({"notify_endpoint": "notify.example.com"}, "'notify_endpoint'"),
        ({"release_stage": ""}, "'release_stage'"),
        ({"notify_endpoint": "http://127.0.0.1:notaport/notify"}, "'notify_endpoint' has a bad port"),
        ({"notify_endpoint": "http://127.0.0.1:99999/notify"}, "'notify_endpoint' has a bad port"),
        ({"sessions_endpoint": "http://ho st/sessions"}, "'sessions_endpoint' contains whitespace"),
        ({"notify_endpoint": "ftp://host/notify"}, "'notify_endpoint' must start with http"),
        ({"notify_endpoint": "http:///notify"}, "'notify_endpoint' has no host"),
        ({"project_root": 5}, "'project_root' must be a path"),
        ({"session_flush_interval": 1e-9}, "'session_flush_interval' must be at least 0.1"),
        ({"session_delivery_interval": 0.5}, "'session_delivery_interval' must be at least 1"),
    ],
)
def test_bad_options_fail_loudly_naming_the_option(app: Celery, kwargs: dict[str, Any], names: str) -> None:
    with pytest.raises(ValueError, match=names.replace("(", r"\(")):
        bugsnag_celery.configure(app, **kwargs)
    assert not bugsnag_celery.is_configured(app)  # nothing half-configured


def test_api_key_is_never_echoed(app: Celery) -> None:
    secret = "f" * 31 + "z"
    with pytest.raises(ValueError) as info:
        bugsnag_celery.configure(app, api_key=secret)
    assert secret not in str(info.value) and "32 characters" in str(info.value)


def test_unknown_celery_conf_option(app: Celery) -> None:
    app.conf.bugsnag_api_kye = KEY
    with pytest.raises(ValueError, match=r"'api_kye'.*app.conf.*did you mean 'api_key'"):
        bugsnag_celery.configure(app)


def test_bad_value_from_environment_names_its_source(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUGSNAG_API_KEY", "nope")
    with pytest.raises(ValueError, match=r"'api_key'.*environment"):
        bugsnag_celery.configure(app)


def test_precedence(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    key = {n: f"{n}" * 32 for n in "abcde"}
    # lowest: the official bugsnag package's configuration (only when imported and configured)
    monkeypatch.setitem(
        sys.modules,
        "bugsnag",
        types.SimpleNamespace(
            configuration=types.SimpleNamespace(
                api_key=key["e"],
                release_stage="from-bugsnag",
                app_version="5",
                app_type="worker",
                hostname="hb",
            )
        ),
    )
    # then Django's settings.BUGSNAG, when Django is configured
    settings = types.SimpleNamespace(
        configured=True,
        BUGSNAG={
            "api_key": key["d"],
            "release_stage": "from-django",
            "app_version": "4",
            "hostname": "hd",
            "endpoint": "http://onprem:49000",
            "session_endpoint": "http://onprem:49003",
            "unrelated": 1,
        },
    )
    monkeypatch.setitem(sys.modules, "django.conf", types.SimpleNamespace(settings=settings))
    monkeypatch.setenv("BUGSNAG_API_KEY", key["c"])
    monkeypatch.setenv("BUGSNAG_RELEASE_STAGE", "from-env")
    app.conf.bugsnag_api_key = key["b"]
    bugsnag_celery.configure(app, api_key=key["a"])
    opts = bugsnag_celery.options_for(app)
    assert opts is not None
    assert opts.api_key == key["a"]  # keyword beats everything
    assert opts.release_stage == "from-env"  # env beats Django and bugsnag
    assert opts.app_version == "4" and opts.hostname == "hd"  # Django beats bugsnag
    assert opts.app_type == "worker"  # only bugsnag set it
    assert opts.endpoints == ("http://onprem:49000", "http://onprem:49003")
    bugsnag_celery.configure(app)
    opts = bugsnag_celery.options_for(app)
    assert opts is not None and opts.api_key == key["b"]  # app.conf beats env


def test_defaults_and_endpoint_rules(app: Celery) -> None:
    bugsnag_celery.configure(app, api_key=KEY.upper())
    opts = bugsnag_celery.options_for(app)
    assert opts is not None
    assert opts.api_key == KEY  # normalised
    assert (opts.release_stage, opts.app_version, opts.app_type) == ("production", None, "celery")
    assert opts.auto_track_sessions and opts.track_eager
    assert (opts.session_flush_interval, opts.session_delivery_interval) == (1.0, 30.0)
    assert opts.endpoints == ("https://notify.bugsnag.com/", "https://sessions.bugsnag.com/")
    bugsnag_celery.configure(app, api_key="00000" + KEY[5:])
    opts = bugsnag_celery.options_for(app)
    assert opts is not None
    assert opts.endpoints == (
        "https://notify.bugsnag.smartbear.com/",
        "https://sessions.bugsnag.smartbear.com/",
    )
    # events endpoint overridden, sessions not: sessions must not go to the public host
    bugsnag_celery.configure(app, api_key=KEY, notify_endpoint="http://127.0.0.1:49000")
    opts = bugsnag_celery.options_for(app)
    assert opts is not None and opts.endpoints == ("http://127.0.0.1:49000", None)


def test_missing_api_key_is_not_an_error(app: Celery) -> None:
    bugsnag_celery.configure(app)
    opts = bugsnag_celery.options_for(app)
    assert opts is not None and opts.api_key is None


def _django_settings(monkeypatch: pytest.MonkeyPatch, bugsnag: dict[str, object]) -> None:
    """Django's settings as loaded in this process (what sources.py reads; nothing imported)."""
    settings = types.SimpleNamespace(configured=True, DEBUG=False, BUGSNAG=bugsnag)
    monkeypatch.setitem(sys.modules, "django.conf", types.SimpleNamespace(settings=settings))


def _official_client(monkeypatch: pytest.MonkeyPatch, **configuration: object) -> None:
    monkeypatch.setitem(
        sys.modules, "bugsnag", types.SimpleNamespace(configuration=types.SimpleNamespace(**configuration))
    )


BLANK_KEY_SOURCES = ["keyword", "keyword-none", "celery-config", "celery-namespace", "environment", "django",
                     "official-client"]  # fmt: skip


def _blank_key_in(source: str, blank: str, app: Celery, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Put the *blank* key in *source*; the keyword arguments for configure()."""
    if source == "keyword":
        return {"api_key": blank}
    if source == "keyword-none":
        return {"api_key": None}
    if source == "celery-config":
        app.conf.bugsnag_api_key = blank
    elif source == "celery-namespace":
        app.namespace = "CELERY"
        app.conf.CELERY_BUGSNAG_API_KEY = blank
    elif source == "environment":
        monkeypatch.setenv("BUGSNAG_API_KEY", blank)
    elif source == "django":
        _django_settings(monkeypatch, {"api_key": blank, "app_version": "4.0"})
    else:
        _official_client(monkeypatch, api_key=blank, release_stage="from-official")
    return {}


@pytest.mark.parametrize("blank", ["", "   ", "\t\n "], ids=["empty", "spaces", "whitespace"])
@pytest.mark.parametrize("source", BLANK_KEY_SOURCES)
def test_an_empty_key_is_no_key_in_every_source(
    app: Celery, monkeypatch: pytest.MonkeyPatch, source: str, blank: str
) -> None:
    """``os.environ.get("BUGSNAG_API_KEY", "")`` in a module every process imports: configure()
    passes, with no key (a worker warns once and sends nothing: tests/end_to_end)."""
    bugsnag_celery.configure(app, **_blank_key_in(source, blank, app, monkeypatch))
    opts = bugsnag_celery.options_for(app)
    assert opts is not None and opts.api_key is None
    if source == "official-client":  # a client with no key is a client never configured
        assert opts.release_stage == "production"


@pytest.mark.parametrize("source", [s for s in BLANK_KEY_SOURCES if s != "official-client"])
def test_an_empty_key_leaves_the_key_to_a_lower_source(
    app: Celery, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """An empty key is absent, not a choice of "no key": a lower source's key is used."""
    kwargs = _blank_key_in(source, "", app, monkeypatch)
    _official_client(monkeypatch, api_key=KEY.upper())  # the lowest source of all
    bugsnag_celery.configure(app, **kwargs)
    opts = bugsnag_celery.options_for(app)
    assert opts is not None and opts.api_key == KEY


@pytest.mark.parametrize(
    ("source", "where"),
    [("keyword", "keyword arguments"), ("environment", "environment"), ("django", "Django settings.BUGSNAG")],
)
def test_a_present_but_malformed_key_still_fails_naming_the_option(
    app: Celery, monkeypatch: pytest.MonkeyPatch, source: str, where: str
) -> None:
    secret = " 0123456789abcdef0123456789abcdeg "  # 32 characters, one not hex, in spaces
    kwargs = _blank_key_in(source, secret, app, monkeypatch)
    with pytest.raises(
        ValueError, match=rf"'api_key' must be 32 hex.*not all hexadecimal\) \(from {where}\)"
    ) as info:
        bugsnag_celery.configure(app, **kwargs)
    assert secret.strip() not in str(info.value) and secret.strip()[:8] not in str(info.value)
    assert not bugsnag_celery.is_configured(app)


def test_the_places_looked_for_a_key_each_say_what_they_held(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bugsnag_celery.options.sources import where_the_key_was_sought

    monkeypatch.delitem(sys.modules, "bugsnag", raising=False)
    monkeypatch.delitem(sys.modules, "django.conf", raising=False)
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    assert where_the_key_was_sought(app, {}) == (
        "configure(api_key=...) (not set), app.conf.bugsnag_api_key (not set), the environment variable "
        "BUGSNAG_API_KEY (not set), Django's settings.BUGSNAG['api_key'] (no Django settings here), the "
        "official bugsnag client's configuration.api_key (bugsnag not imported)"
    )
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "shop.settings")
    assert "settings.BUGSNAG['api_key'] (Django's settings not loaded)" in where_the_key_was_sought(app, {})

    app.namespace = "CELERY"
    app.conf.CELERY_BUGSNAG_API_KEY = " "
    monkeypatch.setenv("BUGSNAG_API_KEY", "")
    _django_settings(monkeypatch, {"api_key": ""})
    _official_client(monkeypatch, api_key=KEY)  # a key somewhere is said to be "set", never shown
    said = where_the_key_was_sought(app, {"api_key": "\t"})
    assert said == (
        "configure(api_key=...) (empty), app.conf.bugsnag_api_key or CELERY_BUGSNAG_API_KEY (empty), the "
        "environment variable BUGSNAG_API_KEY (empty), Django's settings.BUGSNAG['api_key'] (empty), the "
        "official bugsnag client's configuration.api_key (set)"
    )
    _django_settings(monkeypatch, {"app_version": "1"})
    assert "settings.BUGSNAG['api_key'] (not set)" in where_the_key_was_sought(app, {})


COST_PROBE = r"""
import json, os, sys, threading
before_threads = threading.active_count()
from celery import Celery
import bugsnag_celery
app = Celery("web", broker="redis://127.0.0.1:1/0")  # nothing listens there
bugsnag_celery.configure(app, api_key="0123456789abcdef0123456789abcdef")
@app.task
def job():
    return bugsnag_celery.get_current_session() is not None
def kind(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # the descriptor listdir itself used
        return ""
sockets = [fd for fd in os.listdir("/proc/self/fd") if kind(fd).startswith("socket:")]
print(json.dumps({"threads": threading.active_count() - before_threads, "sockets": len(sockets),
                  "pool": app._pool is not None, "tracked": job.apply().get()}))
"""


def test_configure_costs_nothing_in_a_process_that_only_sends() -> None:
    out = subprocess.run(
        [sys.executable, "-c", COST_PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"threads": 0, "sockets": 0, "pool": False, "tracked": True}


class ShopSettings:
    """A Django settings module as Celery's Django layout reads it (namespace="CELERY")."""

    CELERY_BROKER_URL = "memory://"
    CELERY_BUGSNAG_RELEASE_STAGE = "staging"
    CELERY_BUGSNAG_APP_VERSION = "2.2"
    BUGSNAG_ENABLED = False  # the project's own setting: never an option
    BUGSNAG_SOMETHING_ELSE = "x"


def test_options_under_the_apps_namespace_and_nothing_outside_it(app: Celery) -> None:
    app.config_from_object(ShopSettings, namespace="CELERY")
    bugsnag_celery.configure(app, api_key=KEY)
    opts = bugsnag_celery.options_for(app)
    assert opts is not None and (opts.release_stage, opts.app_version) == ("staging", "2.2")


def test_a_misspelling_under_the_namespace_still_fails_with_the_hint(app: Celery) -> None:
    class Typo(ShopSettings):
        CELERY_BUGSNAG_RELEASE_STAG = "staging"

    app.config_from_object(Typo, namespace="CELERY")
    with pytest.raises(ValueError, match=r"'release_stag'.*CELERY_BUGSNAG_.*did you mean 'release_stage'"):
        bugsnag_celery.configure(app, api_key=KEY)


def test_without_a_namespace_bare_uppercase_bugsnag_settings_are_not_options(app: Celery) -> None:
    app.config_from_object(ShopSettings)
    bugsnag_celery.configure(app, api_key=KEY)  # BUGSNAG_ENABLED would fail as an unknown option
    opts = bugsnag_celery.options_for(app)
    assert opts is not None and opts.release_stage == "production"


def test_a_bad_value_that_a_higher_source_overrides_is_not_used(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUGSNAG_API_KEY", "xyz")
    bugsnag_celery.configure(app, api_key=KEY)  # the keyword wins: the environment's value is unused
    opts = bugsnag_celery.options_for(app)
    assert opts is not None and opts.api_key == KEY
    with pytest.raises(ValueError, match=r"'api_key'.*environment"):
        bugsnag_celery.configure(app)  # now it would be used: it fails, naming where it came from


def test_the_worker_status_line_says_what_it_does_never_the_key(app: Celery) -> None:
    from bugsnag_celery.hooks.wiring import status_line

    bugsnag_celery.configure(app, api_key=KEY, release_stage="staging", app_version="1.2",
                             notify_endpoint="http://collector:9339/notify")  # fmt: skip
    opts = bugsnag_celery.options_for(app)
    assert opts is not None
    line = status_line(opts)
    assert KEY not in line and "API key present" in line
    assert "release stage 'staging', app version '1.2'" in line
    assert "events to collector:9339" in line and "sessions to nowhere" in line
    assert "every 30 s" in line and "a beat must run" in line


def test_credentials_in_an_endpoint_are_refused_and_never_echoed(app: Celery) -> None:
    with pytest.raises(ValueError, match="must not contain credentials") as info:
        bugsnag_celery.configure(app, api_key=KEY, notify_endpoint="https://user:hunter2@bugsnag.example/")
    assert "hunter2" not in str(info.value)


def test_notify_needs_an_exception(app: Celery) -> None:
    bugsnag_celery.configure(app, api_key=KEY, notify_endpoint="http://127.0.0.1:9/notify")
    with pytest.raises(TypeError, match="needs an exception, not NoneType"):
        bugsnag_celery.notify(None)  # type: ignore[arg-type]


def test_repeated_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from bugsnag_celery.logs import log_every

    key = f"test-{uuid.uuid4().hex}"
    written = [log_every(key, 60.0, logging.WARNING, "broker down") for _ in range(100)]
    assert written.count(True) == 1 and caplog.text.count("broker down") == 1
