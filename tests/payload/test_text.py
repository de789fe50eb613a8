"""Text that is always safe to send: ``safe_repr`` of any object.

Covers: bugsnag_celery/payload/text.py
"""

from __future__ import annotations

from typing import Any

from payload_cases import (
    BadRepr,
)

from bugsnag_celery.payload.text import safe_repr

# ---------------------------------------------------------------------------------------------
# safe_repr


class SurrogateRepr:
    def __repr__(self) -> str:
        return "<\udcff>"


def test_safe_repr() -> None:
    assert safe_repr([1, "a"]) == "[1, 'a']"
    assert safe_repr(BadRepr()) == "<unrepresentable BadRepr>"
    assert safe_repr("x" * 50, limit=10) == "'xxxxxxxxx" + "…"
    assert safe_repr(SurrogateRepr()) == "<\\udcff>"
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    assert safe_repr(cyclic) == "[[...]]"
    assert safe_repr(10**5000).startswith("<unrepresentable")  # int too large for repr()
