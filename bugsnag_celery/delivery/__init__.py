"""Delivery: what is on its way, from the process that made it to BugSnag.

flusher.py   session counts: process -> broker (a lazy, fork-aware thread)
drain.py     the one drain loop: broker -> send -> hand back -> acknowledge
sessions.py  session counts: broker -> BugSnag (one request per release group)
spool.py     events that could not be sent: process -> broker -> BugSnag
status.py    the last run's outcome, kept on the broker
run.py       one delivery run (the beat task, ``flush``, ``celery bugsnag flush``)
"""
