"""Options: what each may be (``declared``) and where each comes from (``sources``).

One declaration per option, in :class:`~bugsnag_celery.options.declared.Options`: its
default, its check, and the names other sources give it. ``sources`` reads those names;
nothing else spells them (``hooks/official.py`` writes the official client's through it).
"""
