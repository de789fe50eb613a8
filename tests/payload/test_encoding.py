"""The JSON body: compact UTF-8, trimmed to BugSnag's limit in a known order, always valid.

Covers: bugsnag_celery/payload/encoding.py, bugsnag_celery/payload/wire.py
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from payload_cases import (
    ROOT,
    BadRepr,
    _caught,
    _decode,
    _outer,
    _payload,
    _raise,
    _raise_from,
)

from bugsnag_celery.payload.encoding import (
    EncodedList,
    PayloadTooLarge,
    encode_event,
    encode_json,
    encode_payload,
)
from bugsnag_celery.payload.exceptions import exception_entries
from bugsnag_celery.payload.redaction import redact
from bugsnag_celery.payload.shapes import ExceptionEntry
from bugsnag_celery.payload.wire import MAX_BODY_BYTES

# ---------------------------------------------------------------------------------------------
# encode_payload


def test_encode_common_case_is_compact_utf8_json() -> None:
    payload = _payload(exception_entries(_caught(_outer), project_root=ROOT), {"task": {"name": "café"}})
    body = encode_payload(payload)
    assert body == json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert "café".encode() in body
    assert _decode(body) == payload


def test_encode_5mb_argument_is_trimmed_and_recorded() -> None:
    payload = _payload(
        exception_entries(_caught(_raise_from), project_root=ROOT),
        {"task": redact({"args": ["x" * 5_000_000], "kwargs": {}}, max_string=10_000_000), "small": {"a": 1}},
    )
    before = copy.deepcopy(payload)
    body = encode_payload(payload)
    assert len(body) < 1_000_000
    parsed = _decode(body)
    event = parsed["events"][0]
    assert event["metaData"]["bugsnag_celery"]["trimmed"] == ["strings>1024"]
    assert event["metaData"]["bugsnag_celery"]["original_bytes"] > 5_000_000
    assert event["metaData"]["task"]["args"][0] == "x" * 1024 + "…"
    assert event["metaData"]["small"] == {"a": 1}
    assert event["exceptions"] == payload["events"][0]["exceptions"]  # untouched: not needed
    assert payload == before  # the caller's payload is not mutated


def test_encode_drops_largest_tabs_first() -> None:
    meta = {"big": {"n": list(range(200_000))}, "medium": {"n": list(range(50_000))}, "tiny": {"ok": True}}
    payload = _payload(meta=meta)
    before = copy.deepcopy(payload)
    parsed = _decode(encode_payload(payload, limit=400_000))
    tabs = parsed["events"][0]["metaData"]
    assert "big" not in tabs and tabs["medium"] == {"n": list(range(50_000))} and tabs["tiny"] == {"ok": True}
    assert tabs["bugsnag_celery"]["trimmed"] == ["metaData.big"]
    assert payload == before


def _frames_payload(exceptions: int = 3, frames: int = 200) -> dict[str, Any]:
    code = {str(n): "x = 1  # " + "c" * 150 for n in range(1, 8)}
    entries: list[ExceptionEntry] = [
        {
            "errorClass": f"E{e}",
            "message": "m",
            "type": "python",
            "stacktrace": [
                {
                    "file": f"app/f{n}.py",
                    "lineNumber": n,
                    "method": f"m{n}",
                    "inProject": True,
                    "code": dict(code),
                }
                for n in range(frames)
            ],
        }
        for e in range(exceptions)
    ]
    return _payload(entries)


@pytest.mark.parametrize(
    ("limit", "trimmed", "frames", "exceptions"),
    [
        (100_000, ["code"], 200, 3),
        (10_000, ["code", "frames"], 30, 3),
        (1_500, ["code", "frames"], 1, 3),
        (1_000, ["code", "frames", "exceptions"], 1, 1),
    ],
)
def test_encode_trims_code_then_frames_then_exceptions(
    limit: int, trimmed: list[str], frames: int, exceptions: int
) -> None:
    payload = _frames_payload()
    before = copy.deepcopy(payload)
    body = encode_payload(payload, limit=limit)
    assert len(body) <= limit
    event = _decode(body)["events"][0]
    assert event["metaData"]["bugsnag_celery"]["trimmed"] == trimmed
    assert len(event["exceptions"]) == exceptions
    for entry in event["exceptions"]:
        assert len(entry["stacktrace"]) == frames
        assert entry["stacktrace"][0]["method"] == "m0"  # innermost kept
        assert all("code" not in frame for frame in entry["stacktrace"])
    assert payload == before


def test_encode_cuts_long_strings_to_256_when_1024_is_not_enough() -> None:
    meta = {"task": {"args": ["y" * 2000] * 400}}
    event = _decode(encode_payload(_payload(meta=meta), limit=200_000))["events"][0]
    assert event["metaData"]["bugsnag_celery"]["trimmed"] == ["strings>1024", "strings>256"]
    assert event["metaData"]["task"]["args"][0] == "y" * 256 + "…"


def test_encode_raises_when_it_cannot_fit() -> None:
    with pytest.raises(PayloadTooLarge) as info:
        encode_payload(_payload(), limit=100)
    assert isinstance(info.value, ValueError) and info.value.size > 100
    huge_context = _payload()
    huge_context["events"][0]["context"] = "c" * 2_000_000
    with pytest.raises(PayloadTooLarge):
        encode_payload(huge_context)


def test_encode_neutralises_lone_surrogates() -> None:
    payload = _payload(
        [{"errorClass": "E", "message": "bad \udcff", "type": "python", "stacktrace": []}],
        {"tab": {"k\ud800": "v\udfff"}},
    )
    parsed = _decode(encode_payload(payload))
    assert parsed["events"][0]["exceptions"][0]["message"] == "bad \\udcff"
    assert parsed["events"][0]["metaData"]["tab"] == {"k\\ud800": "v\\udfff"}


def test_encode_non_json_values() -> None:
    looped: list[Any] = []
    looped.append(looped)
    meta = {
        "tab": {
            "nan": float("nan"),
            "inf": float("inf"),
            "set": {1},
            "bytes": b"\xff",
            "obj": BadRepr(),
            "loop": looped,
            ("tuple", "key"): 1,
            "big": 10**5000,
        }
    }
    payload = _payload(meta=meta)
    tab = _decode(encode_payload(payload))["events"][0]["metaData"]["tab"]
    assert tab["nan"] == "nan" and tab["inf"] == "inf" and tab["set"] == "{1}"
    assert tab["bytes"] == "\\xff" and tab["obj"] == "<unrepresentable BadRepr>"
    assert tab["loop"] == ["<cycle>"] and tab["('tuple', 'key')"] == 1
    assert tab["big"] == "<unrepresentable int>"
    assert _decode(encode_payload({"events": [], "x": {1: b"ab"}})) == {"events": [], "x": {"1": "ab"}}


# ---------------------------------------------------------------------------------------------
# property tests


ANY_CHAR = st.characters(exclude_categories=()) | st.characters(categories=["Cs"])

TEXT = st.text(ANY_CHAR, max_size=20) | st.integers(0, 3000).map(lambda n: "é\udcff" * n)

LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([70, -1000, 13_000]).map(lambda bits: 2**bits if bits > 0 else -(2**-bits))
    | st.floats()
    | TEXT
    | st.binary(max_size=20)
)

TREES = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(ANY_CHAR, max_size=8) | st.integers(), children, max_size=5)
        | st.tuples(children, children)
    ),
    max_leaves=30,
)

LIMITS = st.sampled_from([700, 2_000, 20_000, MAX_BODY_BYTES])  # an empty event is ~630 bytes


def _mutable_containers(value: Any) -> list[Any]:
    found: list[Any] = []
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, (list, dict)):
            found.append(node)
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return found


@st.composite
def maybe_cyclic(draw: st.DrawFn) -> Any:
    value = draw(TREES)
    containers = _mutable_containers(value)
    for _ in range(draw(st.integers(0, 2)) if containers else 0):
        holder = draw(st.sampled_from(containers))
        target = draw(st.sampled_from(containers))
        if isinstance(holder, list):
            holder.append(target)
        else:
            holder["cycle"] = target
    return value


# Below this, even an event with every trimmable part gone may not fit (an empty event is
# ~630 bytes): the one place PayloadTooLarge is a right answer for these inputs.
SIZE_FLOOR = 1_000


def _check_body(payload: dict[str, Any], limit: int) -> None:
    snapshot = repr(payload)
    try:
        body = encode_payload(payload, limit)
    except PayloadTooLarge:
        # Trimming must make room: with a limit above the floor, refusing is a bug.
        assert limit < SIZE_FLOOR, f"PayloadTooLarge at limit {limit}"
        event("PayloadTooLarge")
    else:
        assert len(body) <= limit
        parsed = _decode(body)
        event(f"trimmed: {parsed['events'][0]['metaData'].get('bugsnag_celery', {}).get('trimmed')}")
    assert repr(payload) == snapshot


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(maybe_cyclic(), LIMITS)
def test_property_redact_then_encode_is_always_valid_json(value: Any, limit: int) -> None:
    safe = redact(value)
    json.dumps(safe, allow_nan=False)  # redact's output is plain JSON data already
    _check_body(_payload(meta={"task": {"args": safe}}), limit)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(maybe_cyclic(), LIMITS)
def test_property_encode_of_raw_data_is_always_valid_json(value: Any, limit: int) -> None:
    _check_body(_payload(meta={"task": {"args": value}}), limit)


class CustomError(Exception):
    pass


@settings(max_examples=300, deadline=None)
@given(st.text(ANY_CHAR), st.sampled_from([ValueError, KeyError, CustomError]), LIMITS)
def test_property_exception_messages_encode(message: str, exc_type: type[Exception], limit: int) -> None:
    exc = _caught(_raise, exc_type(message))
    entries = exception_entries(exc, project_root=ROOT)
    expected_class = exc_type.__qualname__ if exc_type is not CustomError else f"{__name__}.CustomError"
    assert entries[0]["errorClass"] == expected_class
    payload = _payload(entries)
    try:
        body = encode_payload(payload, limit)
    except PayloadTooLarge:
        assert limit < SIZE_FLOOR, f"PayloadTooLarge at limit {limit}"
        return
    assert len(body) <= limit
    sent = _decode(body)["events"][0]["exceptions"][0]["message"]
    expected = str(exc)
    if limit == MAX_BODY_BYTES and len(expected) <= 1024:
        if not any(0xD800 <= ord(c) <= 0xDFFF for c in expected):
            assert sent == expected
        else:
            assert sent == expected.encode("utf-8", "backslashreplace").decode("utf-8")


def test_an_encoded_list_is_spliced_in_while_it_holds_what_it_was_made_with() -> None:
    """``encode_event``: breadcrumbs whose JSON is known (the official policy's stored ones)
    are spliced in, byte for byte what encoding them would give; a list changed since it was
    made -- an item added, removed or replaced -- is encoded afresh, never sent stale."""
    crumbs = [{"name": "a", "metaData": {"n": 1}}, {"name": "ü", "metaData": {}}]
    made = EncodedList(crumbs, [encode_json(c) for c in crumbs])
    event: dict[str, Any] = {"context": "t", "breadcrumbs": made, "featureFlags": []}
    assert json.loads(encode_event(event)) == json.loads(encode_json(event))
    assert encode_event(event).endswith(b',"breadcrumbs":' + made.json + b"}")
    assert json.loads(encode_event({"breadcrumbs": made})) == {"breadcrumbs": crumbs}
    changes: list[Callable[[EncodedList], object]] = [
        lambda c: c.append({"name": "later"}),
        lambda c: c.pop(),
        lambda c: c.__setitem__(0, {"name": "replaced"}),
    ]
    for change in changes:
        copy_ = EncodedList(crumbs, [encode_json(c) for c in crumbs])
        change(copy_)
        sent = json.loads(encode_event({"context": "t", "breadcrumbs": copy_}))
        assert sent["breadcrumbs"] == list(copy_)
