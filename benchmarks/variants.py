"""The instrumentations the benchmarks compare, each set up the way a user would set it up.

- ``plain``: Celery alone.
- ``bugsnag_celery``: ``bugsnag_celery.configure(app, ...)``.
- ``bugsnag_celery_official``: bugsnag-celery with the official client configured too, the way
  a project has it (:func:`configure_official_client`: ``bugsnag.configure`` with
  ``params_filters``, one ``before_notify`` callback, 20 breadcrumbs, 2 feature flags), then
  ``bugsnag_celery.configure(app, ...)`` as for ``bugsnag_celery``: this package adopts that
  client and honours its policy in every event it sends (``reporting/official_event.py``).
  Not in :data:`ALL`: measured where the official policy costs something, the failure path
  and the error storm (``overhead.py --variants``, ``storm.py``, ``compare.py``). Needs the
  ``bugsnag`` package, as ``bugsnag_python`` does.
- ``bugsnag_python``: the official notifier (``pip install bugsnag``): its Celery failure
  handler (``bugsnag.celery.connect_failure_handler``) plus ``bugsnag.start_session()`` in
  ``task_prerun``, the way a user adds sessions with it (its docs say sessions are not
  tracked for Celery on their own).
- ``sentry``: ``sentry_sdk.init(dsn=..., integrations=[CeleryIntegration()])``, errors only
  (Sentry's default: no performance tracing).
- ``otel``: OpenTelemetry's ``CeleryInstrumentor`` with the SDK's ``TracerProvider``, a
  ``BatchSpanProcessor`` and the OTLP/HTTP exporter, set up in each pool child
  (``worker_process_init``), as OpenTelemetry's docs say for prefork.

The peers are optional (``pip install -e '.[bench]'``); a variant whose package is missing
is left out, and the run says so. Every variant points at the local endpoint it is given:
no traffic leaves the machine.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

KEY = "0" * 31 + "1"
OURS = "bugsnag_celery"
#: bugsnag-celery with the official client configured too (1 callback, 20 breadcrumbs, 2 flags).
OURS_OFFICIAL = "bugsnag_celery_official"
#: How the benchmarks' checks and lines name what ``OURS_OFFICIAL`` adds to ``OURS``.
OFFICIAL_SETUP = "official client configured (1 callback, 20 breadcrumbs, 2 flags)"
#: The variants that are this package: the same exactness checks, the same flush.
OURS_VARIANTS = (OURS, OURS_OFFICIAL)
PLAIN = "plain"
PEERS = {
    "bugsnag_python": "bugsnag",
    "sentry": "sentry_sdk",
    "otel": "opentelemetry.instrumentation.celery",
}
#: The package each optional variant needs (a variant whose package is missing is left out).
NEEDS = {**PEERS, OURS_OFFICIAL: "bugsnag"}
ALL = (PLAIN, OURS, *PEERS)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def available(wanted: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(variants to run, variants left out because their package is not installed)."""
    names = list(wanted or ALL)
    missing = [v for v in names if v in NEEDS and not _installed(NEEDS[v])]
    return [v for v in names if v not in missing], missing


def versions() -> dict[str, str]:
    """Versions of what is measured, for the results file."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("celery", "kombu", "bugsnag-celery", "bugsnag", "sentry-sdk",
                 "opentelemetry-instrumentation-celery", "opentelemetry-sdk", "redis"):  # fmt: skip
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def instrument(variant: str, app: Any, endpoint: str, *, worker: bool = False) -> None:
    """Set *variant* up on *app*, reporting to *endpoint* (``http://127.0.0.1:port``).

    *worker*: the app runs in ``celery worker`` (prefork); OpenTelemetry is then set up in
    every pool child, since its span processor's thread does not survive the fork.
    """
    if variant == PLAIN:
        return
    if variant in OURS_VARIANTS:
        import bugsnag_celery

        if variant == OURS_OFFICIAL:
            configure_official_client(endpoint)

        bugsnag_celery.configure(
            app, api_key=KEY, app_version="bench", notify_endpoint=f"{endpoint}/notify",
            sessions_endpoint=f"{endpoint}/sessions",
            queue_prefix=os.environ.get("BENCH_QUEUE_PREFIX", "bugsnag_celery"),
        )  # fmt: skip
        return
    if variant == "bugsnag_python":
        import bugsnag
        from bugsnag.celery import connect_failure_handler
        from celery.signals import task_prerun

        bugsnag.configure(api_key=KEY, app_version="bench", endpoint=f"{endpoint}/notify",
                          session_endpoint=f"{endpoint}/sessions", project_root=os.getcwd())  # fmt: skip
        connect_failure_handler()

        def start_session(**_: Any) -> None:
            bugsnag.start_session()

        task_prerun.connect(start_session, weak=False)
        return
    if variant == "sentry":
        import sentry_sdk
        from sentry_sdk.integrations.celery import CeleryIntegration

        port = endpoint.rsplit(":", 1)[1]
        sentry_sdk.init(dsn=f"http://public@127.0.0.1:{port}/1", integrations=[CeleryIntegration()],
                        release="bench")  # fmt: skip
        return
    if variant == "otel":
        if worker:
            from celery.signals import worker_process_init

            def setup(**_: Any) -> None:
                _otel(endpoint)

            worker_process_init.connect(setup, weak=False)
        else:
            _otel(endpoint)
        return
    raise ValueError(f"unknown variant {variant!r}")


def configure_official_client(endpoint: str, app_version: str = "bench") -> None:
    """The official client as a project has it: configured, one callback, breadcrumbs and flags.

    Its policy then applies to every event this package sends (``reporting/official_event.py``):
    what honouring it costs is the difference between a run with it and one without
    (``ab.py --official``, the ``bugsnag_celery_official`` variant).
    """
    import bugsnag

    bugsnag.configure(api_key=KEY, endpoint=f"{endpoint}/notify", session_endpoint=f"{endpoint}/sessions",
                      app_version=app_version, params_filters=["password", "ssn"])  # fmt: skip

    def callback(event: Any) -> None:
        event.add_tab("account", {"plan": "pro", "region": "eu"})

    bugsnag.before_notify(callback)
    for n in range(20):
        bugsnag.leave_breadcrumb(f"step {n}", {"n": n})
    bugsnag.add_feature_flag("checkout", "v2")
    bugsnag.add_feature_flag("beta")


def _otel(endpoint: str) -> None:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument()


def shutdown(variant: str) -> None:
    """Let a variant send what it still holds (the network figure counts it)."""
    if variant == "bugsnag_python":
        import bugsnag

        bugsnag.configuration  # noqa: B018
        from bugsnag import legacy

        tracker = getattr(legacy.default_client, "session_tracker", None)
        if tracker is not None:
            tracker.send_sessions(asynchronous=False)
    elif variant == "sentry":
        import sentry_sdk

        sentry_sdk.flush(10)
    elif variant == "otel":
        from opentelemetry import trace

        provider: Any = trace.get_tracer_provider()
        if hasattr(provider, "force_flush"):
            provider.force_flush(30_000)
    elif variant in OURS_VARIANTS:
        import bugsnag_celery

        bugsnag_celery.flush_events(10)
