"""Reporting: a failure becomes an event dict, attributed to its session. No HTTP here.

reporter.py  builds the event (exceptions, metadata, app/device, session) and hands it over
task_tab.py  the ``task`` metadata tab of a task run
"""
