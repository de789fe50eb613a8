"""The embedded broker's message files: how kombu's filesystem transport names them, and
reading them where they lie.

A queue of kombu's filesystem transport is the set of files ``<stamp>_<uuid>.<queue>.msg`` in
one folder; a consumer takes one by moving it away. Taking is the only read kombu offers, so a
check that only wants to look (the oldest count's age, the delivery status, the beat's mark)
would take a message and put it back -- as a new file, the newest of its queue -- and a process
that ended in between (a reader killed, a prefork child leaving through ``os._exit`` while its
flusher thread checks) would lose it for good: a count gone. :func:`peek` reads the files in
place instead.
``tools/fs_transport.py`` (the demo's and tests' channel) names and matches files with the
same functions.
"""

from __future__ import annotations

import json
import os
import uuid
from time import monotonic
from typing import Any

__all__ = ["message_name", "is_message_of", "message_names", "peek"]


def message_name(queue: str) -> str:
    """kombu's file name for a new message: ``<stamp>_<uuid>.<queue>.msg``.

    The stamp (milliseconds of the machine's monotonic clock, shared by its processes) is
    zero-padded, so that sorting names sorts messages by age even across a digit carry.
    """
    return f"{round(monotonic() * 1000):016d}_{uuid.uuid4()}.{queue}.msg"


def is_message_of(name: str, queue: str) -> bool:
    """Exactly a message of *queue* (``<stamp>_<uuid>.<queue>.msg``), as kombu 5.7 matches.

    Temporary and claimed files start with a dot, and ``a.msg`` is not a message of ``a.b``.
    """
    return not name.startswith(".") and name.partition(".")[2] == f"{queue}.msg"


def message_names(folder: str, queue: str) -> list[str]:
    """The queue's messages now in *folder*, oldest first."""
    return sorted(n for n in os.listdir(folder) if is_message_of(n, queue))


def peek(channel: Any, queue: str, limit: int) -> list[Any]:
    """kombu messages for up to *limit* of *queue*'s oldest files, read and left in place.

    A file taken by a consumer meanwhile is passed over (it is no longer the queue's).
    *channel* is a filesystem channel (kombu's or ``fs_transport``'s); its ``Message``
    decodes the body as a taken message would be.
    """
    folder = channel.data_folder_in
    messages: list[Any] = []
    for name in message_names(folder, queue):
        if len(messages) >= limit:
            break
        try:
            with open(os.path.join(folder, name), "rb") as fh:
                payload = fh.read()
        except OSError:
            continue
        try:
            messages.append(channel.Message(json.loads(payload), channel=channel))
        except Exception:  # not kombu's envelope: as an undecodable body, left out
            pass
    return messages
