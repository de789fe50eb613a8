"""kombu's filesystem transport, with messages that appear whole.

kombu's ``_put`` creates ``<stamp>_<uuid>.<queue>.msg`` and then writes into it; a
consumer polling the folder can move and read the file in between, get an empty payload,
and die on ``JSONDecodeError`` ("Unrecoverable error" in the worker: seen in our test
suite with 8 threads republishing retries). Here the message is written under a name the
consumer ignores and renamed into place, which is atomic within a folder.

The demo and the test suite use it for the embedded broker::

    app.conf.broker_transport = "bugsnag_celery.tools.fs_transport:Transport"  # with filesystem://
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps

__all__ = ["TRANSPORT", "Channel", "Transport"]

#: The value for ``broker_transport`` (Celery) or ``transport`` (kombu).
TRANSPORT = "bugsnag_celery.tools.fs_transport:Transport"


class Channel(filesystem.Channel):
    # kombu's own two base classes disagree on this signature; this is the filesystem one.
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot: partition(".") gives "" first, so _get never matches this name.
        partial = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(partial, "wb") as fh:
                fh.write(dumps(payload).encode())
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
