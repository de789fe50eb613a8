"""Fork tests that fail instead of hanging: the child's result and exit status, to a deadline."""

from __future__ import annotations

import os
import select
import signal
import time
import traceback
from collections.abc import Callable


def in_child(work: Callable[[], str], timeout: float = 30.0) -> str:
    """Run *work* in a forked child; return what it returned (a short string).

    The child leaves through ``os._exit`` (as billiard's children do): 0 after *work*
    returned, 1 after it raised (its traceback is what this returns then, and the test
    fails with it). The parent reads with a deadline, then reaps the child with one: a
    child that hangs is killed and fails the test, it never hangs the suite.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        status = 1
        try:
            os.close(read)
            try:
                out, status = work(), 0
            except BaseException:
                out = traceback.format_exc()
            os.write(write, out.encode()[:60_000])
        finally:
            os._exit(status)
    os.close(write)
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    try:
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([read], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"the forked child sent nothing within {timeout} s")
            chunk = os.read(read, 65_536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read)
        status = _reap(pid, deadline)
    out = b"".join(chunks).decode()
    assert status == 0, f"the forked child failed (exit status {status}):\n{out}"
    return out


def _reap(pid: int, deadline: float) -> int:
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child did not exit in time (killed)")
        time.sleep(0.01)
