"""Who is talking to BugSnag: this package's version, its notifier identity, the runtime versions.

One definition of each, read by every payload (events and session counts alike). It
imports nothing of the package, so the transport can name the notifier without climbing
back to the package root (which imports everything).
"""

from __future__ import annotations

import platform

import celery
import kombu

__all__ = ["__version__", "NOTIFIER_NAME", "NOTIFIER_URL", "notifier_info", "runtime_versions"]

__version__ = "0.1.0"

NOTIFIER_NAME = "bugsnag-celery"
NOTIFIER_URL = "https://github.com/bugsnag-celery/bugsnag-celery"

_RUNTIME = {"python": platform.python_version(), "celery": celery.__version__, "kombu": kombu.__version__}


def notifier_info() -> dict[str, str]:
    """The payloads' ``notifier`` object (a fresh copy: callers may add to it)."""
    return {"name": NOTIFIER_NAME, "url": NOTIFIER_URL, "version": __version__}


def runtime_versions() -> dict[str, str]:
    """``device.runtimeVersions`` of events and session payloads (a fresh copy)."""
    return dict(_RUNTIME)
