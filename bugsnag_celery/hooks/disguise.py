"""Making a wrapper look exactly like the callable it replaces.

``task.run`` (or a replaced ``__call__``) keeps its identity, annotations, globals,
signature (Celery 5.7's ``Task.retry`` reads it) and ``__wrapped__`` as plain Celery's:
``tests/hooks/test_compat_tasks.py`` and ``tests/end_to_end/test_compat_worker.py`` compare with plain
Celery.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import FunctionType

__all__ = ["disguise", "IDENTITY"]

#: What a wrapper copies from the callable it replaces (functools.WRAPPER_ASSIGNMENTS, plus
#: ``__type_params__`` on 3.12+), so that nothing that reads them can tell the two apart.
IDENTITY = ("__module__", "__name__", "__qualname__", "__doc__", "__annotations__", "__type_params__")


def disguise(wrapper: Callable[..., object], original: Callable[..., object]) -> Callable[..., object]:
    """*wrapper*, looking like *original* to introspection.

    Like ``functools.update_wrapper``, except for ``__wrapped__``: plain Celery's
    ``task.run`` has none (unless the task function itself has one, which is copied with
    its ``__dict__``), so neither does ours -- ``inspect.unwrap(task.run)`` and
    ``task.run.__wrapped__`` give what they give without us. The signature comes from
    ``__signature__`` instead (Celery 5.7's ``Task.retry`` reads ``inspect.signature(task.run)``
    to merge positional and keyword arguments), and the globals are the original's: the
    wrapper reads no global name (``runner.py``), so it is re-created with them.
    """
    fn: Callable[..., object] = wrapper
    globals_ = getattr(original, "__globals__", None)
    if isinstance(globals_, dict) and isinstance(wrapper, FunctionType):
        fn = FunctionType(wrapper.__code__, globals_, wrapper.__name__, None, wrapper.__closure__)
    for attr in IDENTITY:
        try:
            setattr(fn, attr, getattr(original, attr))
        except (AttributeError, TypeError):
            pass
    fn.__dict__.update(getattr(original, "__dict__", {}))
    try:
        fn.__signature__ = inspect.signature(original)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        # No signature to be had: then inspect.signature(wrapper) fails as the original's does.
        fn.__wrapped__ = original  # type: ignore[attr-defined]
    return fn
