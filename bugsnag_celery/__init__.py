"""bugsnag-celery: BugSnag sessions and stability scores for Celery workers.

One call in the module that defines the Celery app::

    import bugsnag_celery
    bugsnag_celery.configure(app, api_key="...")

Every task run is then a BugSnag session. See the README for the options.

The names below are the public API; the modules behind them are the package's own and
may move. Data flows hooks -> sessions -> reporting -> payload -> transport -> delivery
(the README's layout table); the tools (collector, demo, pytest plugin, CLIs) live in
``bugsnag_celery.tools`` and are never imported from here.
"""

from .about import __version__
from .hooks.beat import deliver, flush
from .hooks.exit_flush import flush_events
from .hooks.modes import no_session
from .hooks.notify import notify
from .hooks.wiring import configure, is_configured, options_for, unconfigure
from .options.declared import Options
from .sessions.counts import PendingCounts, Release, restore_pending_counts, take_pending_counts
from .sessions.current import (
    get_current_session,
    pause_session,
    resume_session,
    session_paused,
    start_session,
    task_session_id,
)

__all__ = [
    "configure",
    "unconfigure",
    "is_configured",
    "options_for",
    "no_session",
    "notify",
    "flush_events",
    "flush",
    "deliver",
    "start_session",
    "pause_session",
    "resume_session",
    "get_current_session",
    "session_paused",
    "task_session_id",
    "take_pending_counts",
    "restore_pending_counts",
    "PendingCounts",
    "Release",
    "Options",
    "__version__",
]
