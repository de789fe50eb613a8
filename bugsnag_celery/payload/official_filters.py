"""The official client's ``params_filters``, applied as its encoder applies them; with this
package's ``redacted_keys`` in the same walk.

The official encoder (``SanitizingJSONEncoder``) replaces the value of every dict key that
contains a filter, compared in lower case, with ``"[FILTERED]"``, in the dicts it marks
(``metaData``, ``user``, ``device``, each breadcrumb's ``metaData``) and the dicts under
them -- not inside lists. Events this package builds under the official policy
(``reporting/official_event.py``) get exactly that (``bugsnag.notify`` events of task runs get
their ``task`` tab before the official encoder: it filters them itself). Pure functions: no I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from .redaction import ALREADY_FILTERED, REDACTED, secret_matcher

__all__ = ["FILTERED", "Cleaner", "filters_search", "cleaner_for"]

#: Keys whose verdict a :class:`Cleaner` keeps.
MAX_KEYS = 4096

FILTERED = ALREADY_FILTERED  # what the official encoder writes for a filtered value


@functools.lru_cache(maxsize=16)
def _pattern(filters: tuple[str, ...]) -> re.Pattern[str]:
    """One search for any filter (a substring of the lower-cased key), built once per filter list."""
    return re.compile("|".join(re.escape(f) for f in filters))


def filters_search(filters: tuple[str, ...]) -> Callable[[str], object] | None:
    """The search for any of *filters* in a lower-cased key (None: no filters)."""
    return _pattern(filters).search if filters else None


class Cleaner:
    """The official ``params_filters`` (``[FILTERED]``) and this package's ``redacted_keys``
    (``[REDACTED]``) over JSON-like data, in one walk (see ``reporting/official_event.py``).

    The same few keys come back in every event (a task tab's, breadcrumbs'): what each one
    gets is decided once and kept (at most :data:`MAX_KEYS` keys, then forgotten wholesale).
    """

    __slots__ = ("filtered", "secret", "verdicts")

    def __init__(self, filtered: Callable[[str], object] | None, secret: Callable[[str], bool]) -> None:
        self.filtered = filtered
        self.secret = secret
        #: key -> (its value inside filtered dicts, elsewhere): FILTERED, REDACTED or None
        self.verdicts: dict[str, tuple[str | None, str | None]] = {}

    def _verdict(self, text: str) -> tuple[str | None, str | None]:
        secret = REDACTED if self.secret(text) else None
        filtered = FILTERED if self.filtered is not None and self.filtered(text.lower()) is not None else None
        verdict = (filtered or secret, secret)
        if len(self.verdicts) >= MAX_KEYS:
            self.verdicts.clear()
        self.verdicts[text] = verdict
        return verdict

    def dict(self, value: object, in_filter: bool = True, depth: int = 0) -> object:
        if not isinstance(value, dict) or depth > 32:
            return value
        verdicts = self.verdicts
        side = 0 if in_filter else 1
        out: dict[object, object] | None = None
        for key, item in value.items():
            if isinstance(key, (str, bytes)):
                text = key if isinstance(key, str) else key.decode("utf-8", "replace")
                verdict = verdicts.get(text) or self._verdict(text)
                replaced = verdict[side]
                if replaced is not None:
                    new: object = replaced
                elif isinstance(item, dict):
                    new = self.dict(item, in_filter, depth + 1)
                elif isinstance(item, (list, tuple)):
                    new = self.items(item, depth + 1)
                else:
                    continue
            elif isinstance(item, dict):
                new = self.dict(item, in_filter, depth + 1)
            else:
                continue
            if new is not item:
                if out is None:
                    out = dict(value)
                out[key] = new
        return value if out is None else out

    def items(self, value: list[object] | tuple[object, ...], depth: int) -> object:
        # the official encoder filters dicts only where it reaches them through dicts
        if depth > 32:
            return value
        out: list[object] | None = None
        for index, item in enumerate(value):
            if isinstance(item, dict):
                new = self.dict(item, False, depth + 1)
            elif isinstance(item, (list, tuple)):
                new = self.items(item, depth + 1)
            else:
                continue
            if new is not item:
                if out is None:
                    out = list(value)
                out[index] = new
        return value if out is None else out


@functools.lru_cache(maxsize=8)
def cleaner_for(filters: tuple[str, ...], redacted_keys: tuple[str, ...]) -> Cleaner:
    """The cleaner of one configuration, kept with its verdicts across events."""
    return Cleaner(filters_search(filters), secret_matcher(redacted_keys))
