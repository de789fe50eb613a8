"""Transport: how bytes leave the process.

    http.py     one POST to BugSnag and what its answer means
    sender.py   the per-process event sender thread (off the task's path)
    queues.py   the package's durable queues on the app's own broker

Nothing here knows about Celery tasks or sessions: it moves payloads and messages.
"""
