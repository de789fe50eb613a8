"""The event's task tab: what is told of the task's arguments.

Covers: bugsnag_celery/reporting/task_tab.py
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest


@pytest.mark.parametrize(
    ("text", "value", "custom"),
    [
        ("()", [], False), ("{}", {}, False), ("(1, 'a')", [1, "a"], False), ("(1,)", [1], False),
        ("{'x': 1}", {"x": 1}, False), ("{1: 2}", {"1": 2}, False), ("('<hidden>',)", ["card 4111"], True),
        ("(<hidden>,)", ["card 4111"], True), ("{'password': '***'}", {"password": "hunter2"}, False),
        ("[...]", [1, 2], True), (None, [1], False),
    ],
)  # fmt: skip
def test_a_custom_argsrepr_is_told_from_celerys_default(text: Any, value: Any, custom: bool) -> None:
    """What the worker sees: arguments after JSON, and the sender's argsrepr. Celery's default
    (``saferepr`` of the sender's values) is no wish to hide anything; a text naming a key we
    redact is never sent."""
    from bugsnag_celery.options.declared import DEFAULT_REDACTED_KEYS
    from bugsnag_celery.reporting.task_tab import task_metadata

    class Request:
        id, retries, args, argsrepr, kwargsrepr = "t", 0, value, text, None
        kwargs: ClassVar[dict[str, Any]] = {}

    class Options:
        send_task_args, redacted_keys = True, DEFAULT_REDACTED_KEYS

    meta = task_metadata(object(), Request(), Options())  # type: ignore[arg-type]
    assert (meta["args"] == text) is custom, meta
