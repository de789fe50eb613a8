"""Redaction: keys we hide, whatever the container, its depth, cycles or hostility.

Covers: bugsnag_celery/payload/redaction.py
"""

from __future__ import annotations

import enum
import json
from collections import namedtuple
from typing import Any

from payload_cases import (
    BadRepr,
)

from bugsnag_celery.options.declared import DEFAULT_REDACTED_KEYS
from bugsnag_celery.payload.redaction import redact

# ---------------------------------------------------------------------------------------------
# redact


def test_redact_password_in_list_in_tuple_in_dict() -> None:
    data = {"outer": ({"items": [{"Password": "hunter2", "name": "bob"}]}, 2)}
    assert redact(data) == {"outer": [{"items": [{"Password": "[REDACTED]", "name": "bob"}]}, 2]}


def test_redact_case_insensitive_substrings_whatever_the_value() -> None:
    data = {
        "X-Api-Key": "k",
        "sessionid": "s",
        "AUTHORIZATION": {"nested": ["whole", "subtree"]},
        "db_passwd": ["a", "b"],
        "creditCard": 4111,
        "userToken": None,
        "username": "bob",
    }
    assert redact(data) == {
        "X-Api-Key": "[REDACTED]",
        "sessionid": "[REDACTED]",
        "AUTHORIZATION": "[REDACTED]",
        "db_passwd": "[REDACTED]",
        "creditCard": "[REDACTED]",
        "userToken": "[REDACTED]",
        "username": "bob",
    }
    assert redact({"password": 1, "pin": 2}, keys=("PIN",)) == {"password": 1, "pin": "[REDACTED]"}


def test_redact_scalars() -> None:
    assert redact(None) is None
    assert redact(True) is True
    assert redact(7) == 7
    assert redact(1.5) == 1.5
    assert [redact(float("nan")), redact(float("inf")), redact(float("-inf"))] == ["nan", "inf", "-inf"]
    assert redact("é\udcff") == "é\\udcff"
    assert redact(2**100) == str(2**100)  # beyond 64 bits JSON readers lose it: text


def test_redact_subclasses_and_objects() -> None:
    class Color(enum.IntEnum):
        RED = 1

    class Name(str):
        pass

    Creds = namedtuple("Creds", ["user", "password"])
    assert redact(Color.RED) == 1 and type(redact(Color.RED)) is int
    assert type(redact(Name("x"))) is str
    assert redact(Creds("bob", "hunter2")) == {"user": "bob", "password": "[REDACTED]"}
    assert redact({1, 2}) == "{1, 2}"
    assert redact(BadRepr()) == "<unrepresentable BadRepr>"
    assert redact({("a", 1): "tuple key", 3: "int key"}) == {"('a', 1)": "tuple key", "3": "int key"}


def test_redact_cycles() -> None:
    looped: list[Any] = [1]
    looped.append(looped)
    assert redact(looped) == [1, "<cycle>"]
    mapping: dict[str, Any] = {"a": 1}
    mapping["self"] = {"back": mapping}
    assert redact(mapping) == {"a": 1, "self": {"back": "<cycle>"}}
    shared = [1]
    assert redact([shared, shared]) == [[1], [1]]  # repeated, not cyclic


def test_redact_bytes() -> None:
    assert redact(b"ok \xff\xfe") == "ok \\xff\\xfe"
    assert redact(bytearray(b"abc")) == "abc"
    assert redact(b"x" * 5000) == "x" * 1024 + "…"


def test_redact_huge_containers_and_strings() -> None:
    assert redact(list(range(1000)))[-1] == "… 900 more"
    assert redact(list(range(1000)))[:100] == list(range(100))
    assert len(redact(tuple(range(101)))) == 101
    cut = redact({f"k{n}": n for n in range(250)})
    assert len(cut) == 101 and cut["…"] == "150 more" and cut["k99"] == 99
    assert redact("s" * 5000) == "s" * 1024 + "…"
    assert redact("s" * 10, max_string=4) == "ssss…"
    assert redact(list(range(10)), max_items=3) == [0, 1, 2, "… 7 more"]


def test_redact_depth() -> None:
    deep: Any = "leaf"
    for _ in range(20):
        deep = [deep]
    out = redact(deep)
    for _ in range(8):
        assert isinstance(out, list)
        out = out[0]
    assert isinstance(out, str) and len(out) <= 129
    secret: Any = {"password": "hunter2"}
    for _ in range(10):
        secret = [secret]
    assert "hunter2" not in json.dumps(redact(secret))
    # past the depth limit: the kind and size of what was there, never its contents
    assert redact({"a": {"b": 1}}, max_depth=1) == {"a": "<dict of 1 item(s), nested too deep>"}
    # ... even where a repr would have cut the key that names the secret
    deep = {"x" * 60 + "password": "hunter2"}
    for _ in range(9):
        deep = [deep]
    assert "hunter2" not in json.dumps(redact(deep))


def test_redaction_decides_on_the_whole_key_with_every_separator_and_every_mapping() -> None:
    import collections
    import types

    secret = "s3cr3t-value"
    cases: list[Any] = [
        {"api key": secret},  # space
        {"credit.card": secret},  # dot
        {"Api-Key": secret, "API_KEY": secret, "apiKey": secret},
        {"k" * 2000 + "password": secret},  # the word past the 1,024 characters shown
        collections.UserDict({"token": secret}),
        types.MappingProxyType({"password": secret}),
        collections.OrderedDict(secret_sauce=secret),
    ]
    for case in cases:
        out = redact(case)
        assert secret not in json.dumps(out), (case, out)
        assert isinstance(out, dict) and set(out.values()) == {"[REDACTED]"}
    long_key = next(iter(redact({"k" * 2000 + "password": secret})))
    assert len(long_key) <= 1024 + 1  # shown cut, after the decision


def test_redact_hostile_containers() -> None:
    class ItemsRaise(dict):  # type: ignore[type-arg]
        def items(self) -> Any:
            raise RuntimeError("no items")

    class IterRaises(list):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            raise RuntimeError("no iter")

    assert redact(ItemsRaise(token="t", a=1)) == {"token": "[REDACTED]", "a": 1}
    assert redact(IterRaises([1])) == "<unrepresentable IterRaises>"


def test_default_redacted_keys() -> None:
    assert DEFAULT_REDACTED_KEYS == (
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "authorization",
        "cookie",
        "session",
        "credit_card",
    )
