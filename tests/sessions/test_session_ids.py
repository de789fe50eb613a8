"""A task run's session id: the UUID5 of its task id and attempt (the same in every process).

Covers: bugsnag_celery/sessions/current.py
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60), st.integers(0, 10_000))
def test_session_ids_are_the_uuid5_of_the_task_attempt(task_id: str, retries: int) -> None:
    import uuid

    from bugsnag_celery.sessions.current import SESSION_NAMESPACE, task_session_id

    assert task_session_id(task_id, retries) == str(uuid.uuid5(SESSION_NAMESPACE, f"{task_id}:{retries}"))


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=60),
    st.integers(0, 10_000),
    st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
)
def test_a_delivery_has_its_own_id(task_id: str, retries: int, delivery: str) -> None:
    """With the worker's delivery id: the UUID5 of all three, never the attempt's own."""
    import uuid

    from bugsnag_celery.sessions.current import SESSION_NAMESPACE, task_session_id

    name = f"{task_id}:{retries}:{delivery}"
    assert task_session_id(task_id, retries, delivery) == str(uuid.uuid5(SESSION_NAMESPACE, name))
    assert task_session_id(task_id, retries, delivery) != task_session_id(task_id, retries)
