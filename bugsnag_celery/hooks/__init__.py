"""Hooks: the only code that knows how Celery is wired, and where user code calls in.

wiring.py       configure() / unconfigure(): record the app, connect everything, undo it
tracer_hook.py  the build_tracer hook, installed and removed
instrument.py   a task's wrapper, put on (instrument) and taken off (uninstrument)
runner.py       the task wrapper itself: a run = a session (the success path)
disguise.py     the wrapper made to look exactly like what it replaces
modes.py        which runs count (tracked, @no_session / exclude_tasks / internal, manual)
failures.py     a task's exception -> an event, in the process that saw it
signals.py      worker signals: consumer patching, crashes only the main process sees, shutdown
exit_flush.py   flush_events() and the bounded flush at interpreter exit
beat.py         the periodic delivery task, deliver() and flush()
notify.py       notify(): handled exceptions from any code
"""
