"""A broker library that is not installed: one line that names it and the extra that brings it.

kombu imports a broker's client library when a connection is made (kombu 5.7's Redis transport
also imports ``packaging``, which redis-py does not bring). Every broker step of the package
and its tools -- ``celery bugsnag status`` and ``flush``, ``bugsnag-celery demo``, a publish,
a worker's start -- says the same line: which library, and ``pip install
'bugsnag-celery[<extra>]'``; never a traceback, never the broker URL (it may hold a password).

The subprocess tests hide a library from Python (``sys.modules[name] = None``, what an import
of a library that is not installed meets) and run the real commands; the fresh virtualenv,
without and then with the extra, is ``tests/tools/test_install.py`` (run once in CI).

Covers: bugsnag_celery/transport/libraries.py, bugsnag_celery/transport/queues.py
Covers: bugsnag_celery/tools/celery_command.py, bugsnag_celery/tools/demo/run.py, bugsnag_celery/tools/cli.py
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import kombu
import pytest
from celery import Celery
from kombu.transport.pyamqp import Transport as AmqpTransport

from bugsnag_celery.transport.libraries import BrokerLibraryMissing, library_missing, transport_alias
from bugsnag_celery.transport.queues import broker_problem, check_broker_libraries

KOMBU = tuple(int(part) for part in kombu.__version__.split(".")[:2])
#: What the broker URL in these tests holds that no message may show.
SECRET = "hunter2secret"


def app_on(broker: str | list[str], **conf: object) -> Celery:
    app = Celery("libs", broker=broker, set_as_current=False)
    app.conf.update(conf)
    return app


@pytest.mark.parametrize(
    ("broker", "conf", "alias"),
    [
        ("redis://127.0.0.1:6379/13", {}, "redis"),
        (f"rediss://:{SECRET}@cache.example:6380/0", {}, "rediss"),
        ("sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380", {}, "sentinel"),
        ("sqs://", {}, "sqs"),
        ("amqp://guest:guest@127.0.0.1//", {}, "amqp"),
        ("pyamqp://127.0.0.1//", {}, "pyamqp"),
        (["redis://a:6379/0", "amqp://b//"], {}, "redis"),
        ("sqla+postgresql://db/celery", {}, "sqla"),
        ("memory://", {"broker_transport": "kombu.transport.redis:Transport"}, "redis"),
        ("redis://x", {"broker_transport": "sqs"}, "sqs"),
        ("redis://x", {"broker_transport": AmqpTransport}, "amqp"),
        (
            "filesystem://",
            {"broker_transport": "bugsnag_celery.tools.fs_transport:Transport"},
            "bugsnag_celery.tools.fs_transport:transport",
        ),
    ],
)
def test_the_transport_is_read_off_the_configuration(
    broker: str, conf: dict[str, object], alias: str
) -> None:
    assert transport_alias(app_on(broker, **conf)) == alias


def test_the_write_url_decides_for_a_write() -> None:
    app = app_on("amqp://127.0.0.1//", broker_write_url="redis://127.0.0.1/1")
    assert (transport_alias(app), transport_alias(app, write=False)) == ("redis", "amqp")


@pytest.mark.parametrize(
    ("broker", "exc", "said"),
    [
        (
            f"redis://:{SECRET}@127.0.0.1:6379/13",
            ModuleNotFoundError("No module named 'packaging'", name="packaging"),
            "the broker's redis transport needs the Python library 'packaging', not installed here: "
            "pip install 'bugsnag-celery[redis]'",
        ),
        (
            "sqs://",
            ModuleNotFoundError("No module named 'botocore'", name="botocore.client"),
            "the broker's sqs transport needs the Python library 'botocore', not installed here: "
            "pip install 'bugsnag-celery[sqs]'",
        ),
        (
            "amqp://",
            ModuleNotFoundError("No module named 'amqp'", name="amqp"),
            "the broker's amqp transport needs the Python library 'amqp', not installed here: "
            "pip install 'bugsnag-celery[rabbitmq]'",
        ),
        (
            "mongodb://127.0.0.1/",
            ModuleNotFoundError("No module named 'pymongo'", name="pymongo"),
            "the broker's mongodb transport needs the Python library 'pymongo', not installed here: "
            "pip install pymongo",
        ),
        (
            "sqs://",
            ImportError("pycurl: libcurl link-time ssl backends (secure-transport) do not include ..."),
            "the broker's sqs transport cannot be loaded (ImportError: pycurl: libcurl link-time ssl "
            "backends (secure-transport) do not include ...): pip install 'bugsnag-celery[sqs]'",
        ),
    ],
)
def test_the_line_names_the_library_and_the_extra(broker: str, exc: ImportError, said: str) -> None:
    missing = library_missing(app_on(broker), exc)
    assert isinstance(missing, BrokerLibraryMissing) and isinstance(missing, ImportError)
    assert str(missing) == said and SECRET not in str(missing)
    assert broker_problem(missing) == ("library", said)  # what a worker's publish logs


def test_kombus_own_import_error_names_no_library_the_extras_are_looked_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # what find_spec says of a library not installed
    exc = ImportError("Missing redis library (pip install redis)")
    said = str(library_missing(app_on("redis://127.0.0.1:6379/13"), exc))
    assert said.startswith("the broker's redis transport needs the Python library 'redis'"), said
    # kombu 5.7 without redis-py fails on None.Redis: still a missing library, not a bug of ours
    attribute = AttributeError("'NoneType' object has no attribute 'Redis'")
    assert str(library_missing(app_on("redis://127.0.0.1:6379/13"), attribute)) == said


def test_an_error_that_is_no_missing_library_is_left_alone() -> None:
    assert library_missing(app_on("redis://127.0.0.1:6379/13"), ValueError("bad port")) is None
    check_broker_libraries(app_on("redis://127.0.0.1:6379/13"))  # installed here: nothing raised, no I/O


def _hide(libraries: list[str]) -> str:
    return "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in libraries)


#: What kombu's Redis transport imports that is missing: from 5.7 ``packaging`` too.
HIDDEN = [["packaging"], ["redis"], ["redis", "packaging"]] if KOMBU >= (5, 7) else [["redis"]]


@pytest.fixture
def tiny_app(tmp_path: Path) -> Path:
    (tmp_path / "tinyapp.py").write_text(
        textwrap.dedent(f"""
            from celery import Celery
            import bugsnag_celery
            app = Celery("tiny", broker="redis://:{SECRET}@127.0.0.1:6379/13")
            bugsnag_celery.configure(app, queue_prefix="libraries-test")
        """)
    )
    return tmp_path


def _run(cwd: Path, hidden: list[str], code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _hide(hidden) + textwrap.dedent(code)],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _one_line(out: subprocess.CompletedProcess[str], hidden: list[str], prefix: str) -> None:
    """The failure is exactly one line on stderr: the library (each hidden one), the extra."""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode != 0 and len(lines) == 1, out.stdout + out.stderr
    assert lines[0].startswith(prefix + "the broker's redis transport needs the Python librar"), lines[0]
    assert all(repr(name) in lines[0] for name in hidden), lines[0]
    assert lines[0].endswith(": pip install 'bugsnag-celery[redis]'") and SECRET not in lines[0], lines[0]


@pytest.mark.parametrize("command", ["status", "flush"])
@pytest.mark.parametrize("hidden", HIDDEN, ids="+".join)
def test_celery_bugsnag_commands_say_what_to_install(tiny_app: Path, hidden: list[str], command: str) -> None:
    out = _run(
        tiny_app,
        hidden,
        f"""
        from celery.__main__ import main
        sys.argv = ["celery", "-A", "tinyapp", "bugsnag", "{command}"]
        main()
    """,
    )
    _one_line(out, hidden, "Error: ")


@pytest.mark.parametrize("hidden", HIDDEN, ids="+".join)
def test_the_demo_says_what_to_install_before_it_starts_anything(tiny_app: Path, hidden: list[str]) -> None:
    out = _run(
        tiny_app,
        hidden,
        f"""
        from bugsnag_celery.tools.cli import main
        raise SystemExit(main(["demo", "--broker", "redis://:{SECRET}@127.0.0.1:6379/13", "--port", "0"]))
    """,
    )
    _one_line(out, hidden, "bugsnag-celery demo: ")
    assert out.returncode == 2 and out.stdout == ""  # no collector, no worker, no folder


def test_a_worker_says_it_first(tiny_app: Path) -> None:
    """``celery worker`` itself then stops with kombu's traceback: the line comes before it."""
    out = _run(
        tiny_app,
        HIDDEN[0],
        """
        from celery.__main__ import main
        sys.argv = ["celery", "-A", "tinyapp", "worker", "--pool=solo", "--without-mingle"]
        main()
    """,
    )
    assert out.returncode != 0
    first = next(line for line in out.stderr.splitlines() if "bugsnag_celery:" in line)
    assert first.endswith(": pip install 'bugsnag-celery[redis]'") and SECRET not in first, out.stderr
    assert out.stderr.index(first) < out.stderr.index("Traceback"), out.stderr


def test_a_publish_from_a_process_says_it_too(tiny_app: Path) -> None:
    """A process that counts sessions (eager runs) and moves them to the broker: one line, the
    same, at most once a minute -- never a traceback per flush."""
    out = _run(
        tiny_app,
        HIDDEN[0],
        """
        import logging
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        from tinyapp import app
        import bugsnag_celery
        from bugsnag_celery import registry
        bugsnag_celery.configure(app, queue_prefix="libraries-test", api_key="0123456789abcdef" * 2,
                                 ledger_dir="")
        @app.task
        def job():
            return 1
        for _ in range(3):
            job.apply()
            registry.flusher.flush_once()
    """,
    )
    lines = [line for line in out.stderr.splitlines() if "transport" in line]
    assert out.returncode == 0 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("bugsnag_celery: session counts kept in memory, the broker's redis transport")
    assert lines[0].endswith(": pip install 'bugsnag-celery[redis]'") and SECRET not in lines[0]
