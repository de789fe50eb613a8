"""Payload: pure functions from Python objects to what BugSnag receives. No I/O, no threads.

    exceptions.py  (with frames.py)  an exception chain -> the event's ``exceptions``
    redaction.py                     task arguments, metadata -> JSON-safe, secrets removed
    packing.py                       encoded events -> as few v4 bodies as fit under the limit
    encoding.py                      an event payload -> UTF-8 JSON under the limit (trimmed)
    sessions.py                      minute buckets -> a session payload, and their broker message
    wire.py                          BugSnag's API, written once: versions, body limit, v4 envelope
    text.py                          the safe-text helpers all of them share

Everything here runs at the worst possible moment -- while a task is failing, sometimes
while the interpreter is short of stack after a ``RecursionError`` -- and it handles
objects we do not control: exceptions with hostile ``__str__``/``__repr__``/
``__getattribute__``, cyclic cause chains, task arguments that are huge, cyclic or not
JSON at all. So the rule for this layer is that nothing in it raises for bad *input*:
each piece degrades to a smaller, still valid piece instead (a minimal exception entry, a
``"<unrepresentable T>"`` string, a trimmed payload). The one deliberate exception is
:class:`PayloadTooLarge`, because BugSnag answers an oversized body with a 400 and the
event would be lost anyway: the caller must drop it rather than retry it.

We only catch :class:`Exception`, never :class:`BaseException`: Celery stops workers by
raising ``SystemExit`` subclasses from signal handlers, and swallowing one of those while
formatting an error would make the worker ignore its shutdown.

Wire format facts (innermost frame first, ``errorClass`` module-qualified except for
``builtins`` and ``__main__``, ``code`` as a ``{line: text}`` map) follow bugsnag-python
4.9 so that users moving from its Celery handler keep their error groups.
"""
