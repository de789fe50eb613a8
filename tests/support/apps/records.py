"""What a test task saw, one JSON line per call, in ``$BSC_OUT/records-<pid>.jsonl``.

Shared by the test apps and the stand-in projects (the Django and Flask shops put this
folder on their PYTHONPATH); ``results.wait_for_records`` reads the lines back. One
``O_APPEND`` write per line: processes and threads never interleave within a line.
"""

import json
import os
from typing import Any


def record(**fields: Any) -> None:
    line = (json.dumps({"pid": os.getpid(), **fields}) + "\n").encode()
    fd = os.open(os.path.join(os.environ["BSC_OUT"], f"records-{os.getpid()}.jsonl"),
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # fmt: skip
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
