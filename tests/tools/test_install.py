"""The built wheel, installed as a user installs it: each extra gives a working broker client.

The wheel is built from this tree (``pip wheel --no-deps``) and installed into a fresh
virtualenv from the machine's package index, with the Celery and kombu of this test run
pinned (so that a run of the support matrix would test its own pair). First without an
extra: ``celery -A app bugsnag status`` and ``bugsnag-celery demo --broker redis://...``
each fail in one line naming the missing libraries and ``pip install 'bugsnag-celery[redis]'``.
Then with ``[redis]``: ``status`` and ``flush`` answer from the real Redis and the demo's
figures match; and each extra (``[redis]``, ``[rabbitmq]``, ``[sqs]``) reads its broker.

Slow (a wheel and a virtualenv: about a minute), so it runs once in CI, not once per pair of
the matrix: only with ``BUGSNAG_CELERY_INSTALL_TESTS=1`` (``tests/conftest.py`` deselects it
otherwise, saying so in the report's header).

Covers: bugsnag_celery/transport/libraries.py, bugsnag_celery/tools/celery_command.py
Covers: bugsnag_celery/tools/demo/run.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest
from brokers import Broker

ROOT = Path(__file__).resolve().parents[2]
EXTRA_OF = {"redis": "redis", "rabbitmq": "rabbitmq", "sqs": "sqs"}
#: The demo's own Redis database (the suite's brokers use 11, the benchmarks 12, the plugin 14).
DEMO_REDIS = "redis://127.0.0.1:6379/13"

pytestmark = pytest.mark.install

TINY_APP = """
import json, os
from celery import Celery
import bugsnag_celery
app = Celery("tiny", broker=os.environ["TINY_BROKER"])
app.conf.broker_transport_options = json.loads(os.environ.get("TINY_OPTIONS", "{}"))
bugsnag_celery.configure(app, queue_prefix=os.environ["TINY_PREFIX"])
"""


@dataclass
class Venv:
    """A fresh virtualenv with the built wheel, and a folder (not this tree) to run it in."""

    path: Path
    wheel: Path
    work: Path

    def bin(self, name: str) -> str:
        return str(self.path / "bin" / name)

    def run(
        self, *cmd: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """*cmd* in its folder, with nothing of this test run's Python or project around."""
        drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "BUGSNAG_API_KEY")
        environment = {**{k: v for k, v in os.environ.items() if k not in drop}, "TMPDIR": str(self.work)}
        return subprocess.run(
            cmd,
            cwd=self.work,
            env={**environment, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def install(self, extras: str = "") -> None:
        """The wheel (with *extras*), this run's Celery and kombu pinned."""
        pins = [f"celery=={version('celery')}", f"kombu=={version('kombu')}"]
        target = f"{self.wheel}[{extras}]" if extras else str(self.wheel)
        out = self.run(self.bin("python"), "-m", "pip", "install", "-q", target, *pins, timeout=600)
        assert out.returncode == 0, f"pip install {target} failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}"

    def not_installed(self, *modules: str) -> list[str]:
        code = "import importlib.util as u, sys; print(*(m for m in sys.argv[1:] if u.find_spec(m) is None))"
        return self.run(self.bin("python"), "-c", code, *modules).stdout.split()


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    base = tmp_path_factory.mktemp("install")
    dist, work = base / "dist", base / "work"
    work.mkdir()
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(dist)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, f"pip wheel failed:\n{built.stdout[-3000:]}{built.stderr[-3000:]}"
    (wheel,) = dist.glob("bugsnag_celery-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True, timeout=300)
    (work / "tinyapp.py").write_text(TINY_APP)
    made = Venv(base / "venv", wheel, work)
    made.install()
    where = made.run(made.bin("python"), "-c", "import bugsnag_celery; print(bugsnag_celery.__file__)")
    assert where.stdout.startswith(str(made.path)), where.stdout + where.stderr  # the wheel, not this tree
    return made


def _tiny(broker: Broker) -> dict[str, str]:
    return {
        "TINY_BROKER": broker.url,
        "TINY_OPTIONS": json.dumps(broker.transport_options),
        "TINY_PREFIX": broker.queue,
        **broker.extra_env,
    }


@pytest.mark.timeout(900)
def test_without_the_extra_one_line_says_what_to_install_and_with_it_redis_works(
    venv: Venv, redis_broker: Broker
) -> None:
    missing = venv.not_installed("redis", "packaging")
    assert "redis" in missing, "the wheel alone must not bring a Redis client (the extra does)"
    tiny = _tiny(redis_broker)
    fix = ": pip install 'bugsnag-celery[redis]'"
    # kombu 5.7's Redis transport imports packaging: named where this kombu needs it
    named = [m for m in missing if m == "redis" or tuple(map(int, version("kombu").split(".")[:2])) >= (5, 7)]
    for cmd, prefix in [
        ((venv.bin("celery"), "-A", "tinyapp", "bugsnag", "status"), "Error: "),
        ((venv.bin("celery"), "-A", "tinyapp", "bugsnag", "flush"), "Error: "),
        (
            (venv.bin("bugsnag-celery"), "demo", "--broker", DEMO_REDIS, "--port", "0"),
            "bugsnag-celery demo: ",
        ),
    ]:
        out = venv.run(*cmd, env=tiny)
        lines = [line for line in out.stderr.splitlines() if line.strip() and "SecurityWarning" not in line]
        assert out.returncode != 0 and len(lines) == 1, f"{cmd}:\n{out.stdout}{out.stderr}"
        assert lines[0].startswith(f"{prefix}the broker's redis transport needs the Python librar"), lines[0]
        assert all(repr(m) in lines[0] for m in named) and lines[0].endswith(fix), lines[0]

    venv.install("redis")
    assert venv.not_installed("redis", "packaging") == []
    status = venv.run(venv.bin("celery"), "-A", "tinyapp", "bugsnag", "status", env=tiny)
    assert status.returncode == 0 and "pending session messages: 0" in status.stdout, (
        status.stdout + status.stderr
    )
    flush = venv.run(venv.bin("celery"), "-A", "tinyapp", "bugsnag", "flush", env=tiny)
    assert flush.returncode == 0 and "sessions: 0 delivered" in flush.stdout, flush.stdout + flush.stderr
    demo = venv.run(venv.bin("bugsnag-celery"), "demo", "--broker", DEMO_REDIS, "--port", "0", timeout=300)
    assert demo.returncode == 0 and "  MATCH" in demo.stdout, demo.stdout[-3000:] + demo.stderr[-3000:]


@pytest.mark.timeout(600)
def test_each_extra_gives_a_working_client_for_its_broker(venv: Venv, server_broker: Broker) -> None:
    venv.install(EXTRA_OF[server_broker.name])
    check = textwrap.dedent("""
        from tinyapp import app
        from bugsnag_celery.transport.queues import check_broker_libraries
        check_broker_libraries(app)
    """)
    tiny = _tiny(server_broker)
    loaded = venv.run(venv.bin("python"), "-c", check, env=tiny)
    assert loaded.returncode == 0, loaded.stderr
    status = venv.run(venv.bin("celery"), "-A", "tinyapp", "bugsnag", "status", env=tiny)
    assert status.returncode == 0 and "pending session messages: 0" in status.stdout, (
        status.stdout + status.stderr
    )
