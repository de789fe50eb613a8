"""``bugsnag-celery``'s help, as a new user runs it: every option says what it does when left out.

The installed console script, in a process of its own (as a user types it).

Covers: bugsnag_celery/tools/cli.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(sys.executable), "bugsnag-celery")


def help_text(*command: str) -> str:
    # wide enough that no option's line wraps: each is checked whole
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([SCRIPT, *command, "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def option_help(text: str) -> dict[str, str]:
    """Each option's help line, by its long name (``--db`` -> "SQLite file (default: ...)...")."""
    return {
        m.group(1): m.group(2).strip()
        for m in re.finditer(r"^\s+(?:-\w, )?(--[\w-]+)(?: [A-Z_]+)?\s{2,}(.*)$", text, re.M)
    }


def test_collector_help_shows_every_default() -> None:
    options = option_help(help_text("collector"))
    assert options == {
        "--help": "show this help message and exit",
        "--host": "address to listen on (default: 127.0.0.1)",
        "--port": "port to listen on (default: 9339)",
        "--db": "SQLite file (default: bugsnag-collector.sqlite), kept across restarts",
        "--fail-status": "answer every POST with this status, for fault testing (default: none, answer as "
        "BugSnag would)",
        "--delay": "seconds to wait before answering (default: 0.0)",
        "--sessions-port": "also take sessions at POST / on this port, as sessions.bugsnag.com "
        "(default: none, sessions only at /sessions on --port)",
    }


def test_demo_help_shows_the_collector_port_default() -> None:
    assert option_help(help_text("demo"))["--port"] == "the demo collector's port, if free (default: 9339)"
