"""Sessions: the current session of a task run (``current.py``) and the per-minute counts (``counts.py``).

No I/O and no threads: counting is the hot path of every task run. Moving the counts
out of the process is the delivery layer's job.
"""
