"""bugsnag-celery: BugSnag sessions and stability scores for Celery workers.

One call in the module that defines the Celery app::

    import bugsnag_celery
    bugsnag_celery.configure(app, api_key="...")

Every task run is then a BugSnag session. See the README for the options.
"""

from .config import Options
from .counts import PendingCounts, Release, restore_pending_counts, take_pending_counts
from .integration import (
    configure,
    deliver,
    flush,
    flush_events,
    is_configured,
    no_session,
    options_for,
    unconfigure,
)
from .notifier import notify
from .sessions import (
    get_current_session,
    pause_session,
    resume_session,
    session_paused,
    start_session,
    task_session_id,
)

__version__ = "0.1.0"

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
