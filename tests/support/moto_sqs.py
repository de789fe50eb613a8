"""moto's SQS server, with receives that are atomic as SQS's are: ``python moto_sqs.py PORT``.

SQS hides a received message from every other consumer for its visibility timeout. moto
5.2's ``receive_message`` checks that a message is visible and marks it received without a
lock, and its server answers each request on a thread of its own: two receives at once can
both take the same message. Under load that is what three delivery runs at once met (a
count message received twice: 603 sessions for 600, in two pairs of the CI matrix; three
threads receiving 300 messages ten times over, on a loaded machine: one message twice).
The suite tests what the package does with SQS, so each receive here holds one lock while
it takes its messages; a long poll waits outside the lock, as many short looks.

AWS documents one case of a message received twice on a standard queue, rare and outside
any consumer's control (a copy on a server that was unavailable at a delete); the README's
"Brokers" section says what that means for the counts.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from moto import server
from moto.sqs.models import SQSBackend

_lock = threading.Lock()
_receive = SQSBackend.receive_message


def _atomic_receive(self: SQSBackend, queue_name: str, count: int, wait_seconds_timeout: int,
                    *args: Any, **kwargs: Any) -> Any:  # fmt: skip
    deadline = time.monotonic() + (wait_seconds_timeout or 0)
    while True:
        with _lock:
            got = _receive(self, queue_name, count, 0, *args, **kwargs)
        if got or time.monotonic() >= deadline:
            return got
        time.sleep(0.05)


SQSBackend.receive_message = _atomic_receive  # type: ignore[method-assign]

if __name__ == "__main__":
    server.main(["-H", "127.0.0.1", "-p", sys.argv[1]])
