"""The sender thread in an error storm: few requests, each under 1 MB, every event once.

A storm of failures (an outage downstream) must not become a storm of requests: events
queued while a request is out, and those that fail within ``min_interval`` of the last
request, go out together, packed into requests of at most BugSnag's 1 MB. A slow endpoint
answers the second, patient send; a hung one leaves the event kept on the spool, never
given up. These run the real thread against the real local endpoint (``tests/endpoint.py``).

Covers: bugsnag_celery/transport/sender.py, bugsnag_celery/transport/http.py
Covers: bugsnag_celery/transport/outcome.py, bugsnag_celery/payload/packing.py
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from endpoint import Endpoint

from bugsnag_celery.payload.encoding import encode_json
from bugsnag_celery.payload.wire import MAX_BODY_BYTES
from bugsnag_celery.transport import http as http_module
from bugsnag_celery.transport import sender as sender_module
from bugsnag_celery.transport.http import Request, post
from bugsnag_celery.transport.outcome import Outcome
from bugsnag_celery.transport.sender import Sender, encoded

KEY = "a" * 32


def keep_in(spooled: list[Request]) -> Any:
    def spool(payloads: list[Request]) -> bool:
        spooled.extend(payloads)
        return True

    return spool


@pytest.mark.parametrize("delay", [0.2, 0.0], ids=["slow-endpoint", "fast-endpoint"])
def test_a_storm_becomes_a_few_requests_a_second_and_every_event_arrives_once(
    endpoint: Endpoint, delay: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,500 failures in about 1.5 s against an endpoint answering after 200 ms, or at once:
    every event delivered exactly once, nothing spooled, requests ``min_interval`` apart."""
    endpoint.delay = delay
    spooled: list[Request] = []
    sender = Sender(keep_in(spooled), timeout=5)
    # When each request began, on the sender's own clock: what ``min_interval`` binds. The
    # endpoint's arrival times also carry the loopback's and the server thread's scheduling
    # on a loaded machine (CI once saw two arrivals 165 ms apart for starts 250 ms apart).
    starts: list[float] = []

    def timed_post(request: Request, timeout: Any) -> Any:
        starts.append(sender._last_request)
        return post(request, timeout)

    monkeypatch.setattr(sender_module, "post", timed_post)
    start = time.monotonic()
    for n in range(1500):
        sender.submit(Request(f"{endpoint.url}/notify", KEY, "4.0", events=[{"n": n, "pad": "x" * 300}]))
        if n % 10 == 9:
            time.sleep(0.01)
    took = time.monotonic() - start
    sender.flush(30)
    delivered = [e["n"] for e in endpoint.events()]
    assert sorted(delivered) == list(range(1500)) and not spooled
    assert len(starts) == len(endpoint.requests)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 0.25, gaps  # min_interval between the starts of two requests
    assert len(endpoint.requests) <= (took + 1) / 0.25 + 2, (len(endpoint.requests), took)
    assert all(len(r["raw"]) <= MAX_BODY_BYTES for r in endpoint.requests)


def test_a_lone_failure_is_sent_at_once(endpoint: Endpoint) -> None:
    """A failure after a quiet spell longer than ``min_interval`` does not wait for it. With a
    2 s interval, a sender that waited would start the second request 2 s after the first
    ended; one that does not starts it well within a second, however loaded the machine."""
    sender = Sender(timeout=5, min_interval=2.0)
    sender.submit(Request(f"{endpoint.url}/notify", KEY, "4.0", events=[{"n": 0}]))
    sender.flush(5)
    time.sleep(2.1)  # idle longer than min_interval: the next one does not wait either
    sent = time.monotonic()
    sender.submit(Request(f"{endpoint.url}/notify", KEY, "4.0", events=[{"n": 1}]))
    sender.flush(5)
    assert [e["n"] for e in endpoint.events()] == [0, 1]
    assert sender._last_request - sent < 1.0


@pytest.mark.parametrize("form", ["events", "encoded"])
def test_merged_requests_are_packed_under_the_limit_in_order(form: str) -> None:
    """30 payloads of ~100 kB: as few bodies as fit under 1 MB, each valid JSON, in order; a
    payload over the limit alone is trimmed into its own request. The same whether the events
    were handed over as dicts or already encoded (as the failure path hands them over)."""
    outcomes: list[str] = []

    def event_payload(endpoint: str, event: dict[str, Any], **extra: Any) -> Request:
        if form == "encoded":
            return Request(endpoint, KEY, "4.0", encoded=[encode_json(event)], **extra)
        return Request(endpoint, KEY, "4.0", events=[event], **extra)

    pads = [f"{n:03d}" + "y" * 100_000 for n in range(30)]
    payloads = [event_payload("http://e/notify", {"n": n, "pad": pad}) for n, pad in enumerate(pads)]
    huge = event_payload(
        "http://e/notify", {"n": 99, "metaData": {"big": {"v": "z" * 2_000_000}}}, on_done=outcomes.append
    )
    other = event_payload("http://other/notify", {"n": 100})
    out = encoded([*payloads[:15], huge, other, *payloads[15:]])
    bodies = [(p.endpoint, json.loads(p.body)) for p in out]
    assert all(len(p.body) <= MAX_BODY_BYTES for p in out)
    same = [body for endpoint, body in bodies if endpoint == "http://e/notify"]
    ns = [e["n"] for body in same for e in body["events"]]
    assert sorted(ns) == [*range(30), 99]
    packed = [[e["n"] for e in body["events"]] for body in same if 99 not in [e["n"] for e in body["events"]]]
    assert [n for chunk in packed for n in chunk] == list(range(30))  # in order
    assert len(packed) == 4  # 30 x 100 kB in bodies of at most 1 MB: 9 + 9 + 9 + 3
    trimmed = next(body for body in same if body["events"][0]["n"] == 99)
    meta = trimmed["events"][0]["metaData"]
    assert len(trimmed["events"]) == 1 and meta["bugsnag_celery"]["trimmed"] == ["strings>1024"]
    assert len(meta["big"]["v"]) <= 1025 and meta["big"]["v"].endswith("…")  # cut, marked
    assert [body["events"] for endpoint, body in bodies if endpoint == "http://other/notify"] == [
        [{"n": 100}]
    ]
    for _, body in bodies:
        assert body["apiKey"] == KEY and body["payloadVersion"] == "4.0" and body["notifier"]["name"]
    assert {len(p.originals()) for p in out} >= {1, 9}
    assert outcomes == []  # trimmed, not dropped


def wait_for(outcomes: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not outcomes and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_slow_endpoint_answers_the_patient_second_send(endpoint: Endpoint) -> None:
    """Answering after 1.5 s, delivery_timeout 1 s: the first send has no answer in time (the
    endpoint processes it anyway); the second waits 3 s and gets the answer. Delivered, two
    copies at most (the second send used to wait 1 s too, and give the event up)."""
    endpoint.delay = 1.5
    spooled: list[Request] = []
    outcomes: list[str] = []
    sender = Sender(keep_in(spooled), timeout=1, backoff=0.05)
    sender.submit(Request(f"{endpoint.url}/notify", KEY, "4.0", events=[{"n": 1}], on_done=outcomes.append))
    wait_for(outcomes, 15)
    assert outcomes == ["delivered"] and not spooled
    assert [e["n"] for e in endpoint.events()] == [1, 1]


def test_a_hung_endpoint_keeps_the_event_for_a_later_delivery(endpoint: Endpoint) -> None:
    """Hung: no answer within 0.5 s, nor to the second send within 1.5 s. The event is kept
    on the spool, marked hung (its later sends wait 1.5 s too), never given up."""
    endpoint.hang(30)
    spooled: list[Request] = []
    outcomes: list[str] = []
    sender = Sender(keep_in(spooled), timeout=0.5, backoff=0.05)
    sender.submit(Request(f"{endpoint.url}/notify", KEY, "4.0", events=[{"n": 1}], on_done=outcomes.append))
    wait_for(outcomes, 15)
    done = time.monotonic()
    assert outcomes == ["spooled"] and [json.loads(p.body)["events"] for p in spooled] == [[{"n": 1}]]
    assert spooled[0].unknown == 2
    first, second = (r["at"] for r in endpoint.unanswered)
    assert second - first >= 0.5 and done - second >= 1.4  # waited 0.5 s, then 1.5 s


def test_a_shutdown_during_the_patient_send_spools_the_event_marked(endpoint: Endpoint) -> None:
    """A flush (the process shutting down) takes over a request still waiting for its answer:
    spooled as one more send without an answer, so that its next send waits patiently."""
    endpoint.hang(30)
    spooled: list[Request] = []
    sender = Sender(keep_in(spooled), timeout=1, backoff=0.05)
    sender.submit(Request(f"{endpoint.url}/notify", KEY, "4.0", events=[{"n": 1}]))
    sender.flush(2.0)  # the first send had no answer at 1 s; the second (3 s) is in flight
    assert len(endpoint.unanswered) == 2
    assert [(p.unknown, json.loads(p.body)["events"]) for p in spooled] == [(2, [{"n": 1}])]


def test_a_second_flush_does_not_wait_again_for_a_request_taken_over(endpoint: Endpoint) -> None:
    """A worker's main process flushes at ``worker_shutdown``, then again at interpreter exit:
    the request the first flush took over (hanging on BugSnag) holds the second for nothing."""
    endpoint.hang(30)
    spooled: list[Request] = []
    sender = Sender(keep_in(spooled), timeout=5)
    sender.submit(Request(f"{endpoint.url}/notify", KEY, "4.0", events=[{"n": 1}]))
    sender.flush(0.5)
    started = time.monotonic()
    sender.flush(5.0)
    assert time.monotonic() - started < 0.5  # it waited 5.5 s
    assert [json.loads(p.body)["events"] for p in spooled] == [[{"n": 1}]]


def test_requests_take_the_environments_proxy_and_no_proxy_read_once_a_minute(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``HTTP_PROXY`` and ``NO_PROXY`` apply as requests applies them (the stand-in plays the
    proxy: a proxied request names the whole URL), read once a minute, not for every request."""
    far = "http://127.0.0.1:9/notify"  # nothing listens there: only the proxy can answer
    monkeypatch.setattr(http_module, "_environment", {})
    monkeypatch.setenv("HTTP_PROXY", endpoint.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert post(Request(far, KEY, "4.0", body=b"{}"), 5)[0] is Outcome.DELIVERED
    assert [r["path"] for r in endpoint.requests] == [far]

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # within the minute: the proxy still
    assert post(Request(far, KEY, "4.0", body=b"{}"), 5)[0] is Outcome.DELIVERED
    assert len(endpoint.requests) == 2

    monkeypatch.setattr(http_module, "ENVIRONMENT_TTL", 0.0)  # the minute is over: straight to port 9
    assert post(Request(far, KEY, "4.0", body=b"{}"), 5)[0] is Outcome.RETRY
    assert len(endpoint.requests) == 2
