"""Where ``official_app``'s crashes are raised: a module ``traceback_exclude_modules`` can name.

Kept apart so that the innermost frame of a crash is in a module of its own: with the
official client's ``traceback_exclude_modules=[official_helpers]`` that frame is left out.
"""

from __future__ import annotations


def fail(exc: BaseException) -> None:
    """Raise *exc* from here: one frame, in this file."""
    raise exc
