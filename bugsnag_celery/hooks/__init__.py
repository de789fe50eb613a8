"""Hooks: the only code that knows how Celery is wired, and where user code calls in.

wiring.py    configure() / unconfigure(): record the app, connect everything, undo it
tracer.py    the build_tracer hook and the task wrapper (a run = a session)
modes.py     which runs count (tracked, @no_session / exclude_tasks / internal, manual)
failures.py  a task's exception -> an event, in the process that saw it
signals.py   worker signals: consumer patching, crashes only the main process sees, shutdown
beat.py      the periodic delivery task, deliver() and flush()
notify.py    notify(): handled exceptions from any code
"""
