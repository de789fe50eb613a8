"""Transport: how bytes leave the process.

    sender.py   the per-process event sender thread (off the task's path)
    http.py     one POST to BugSnag, and its outcome
    outcome.py  what an outcome means and what to do next: the delivery policy, once
    queues.py   the package's durable queues on the app's own broker

Nothing here knows about Celery tasks or sessions, nor builds a body (that is ``payload/``):
it moves bodies and messages.
"""
