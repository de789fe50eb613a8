"""The ``bugsnag-celery`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bugsnag-celery", description="BugSnag sessions for Celery workers")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a real worker on an embedded broker and show its sessions")
    demo.add_argument("--broker", default="filesystem://", help="broker URL (default: embedded filesystem)")
    demo.add_argument("--scale", type=int, default=1, help="multiply the workload (default 1: 292 tasks)")
    demo.add_argument("--collector", help="use this running collector (URL) instead of starting one")
    demo.add_argument(
        "--no-worker", action="store_true", help="only send the workload: a worker and beat already run"
    )
    demo.add_argument(
        "--port", type=int, default=9339, help="the demo collector's port, if free (default: %(default)s)"
    )
    demo.add_argument("--serve", action="store_true", help="keep the collector's page up after the run")
    collector = commands.add_parser("collector", help="run a local BugSnag-compatible collector")
    collector.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    collector.add_argument("--port", type=int, default=9339, help="port to listen on (default: %(default)s)")
    collector.add_argument(
        "--db",
        default="bugsnag-collector.sqlite",
        help="SQLite file (default: %(default)s), kept across restarts",
    )
    collector.add_argument(
        "--fail-status",
        type=int,
        help="answer every POST with this status, for fault testing (default: none, answer as BugSnag would)",
    )
    collector.add_argument(
        "--delay", type=float, default=0.0, help="seconds to wait before answering (default: %(default)s)"
    )
    collector.add_argument(
        "--sessions-port",
        type=int,
        help="also take sessions at POST / on this port, as sessions.bugsnag.com (default: none, "
        "sessions only at /sessions on --port)",
    )
    args = parser.parse_args(argv)
    if args.command == "collector":
        from .collector import Collector

        server = Collector(args.host, args.port, args.db, sessions_port=args.sessions_port)
        server.fail_status, server.delay = args.fail_status, args.delay
        extra = f", sessions also at {server.sessions_url}/" if server.sessions_url else ""
        routes = f"page: /, events: /notify, sessions: /sessions{extra}"
        print(f"bugsnag-celery collector on {server.url} ({routes})", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        return 0
    if args.command == "demo":
        from .demo import run as demo_module

        if args.no_worker and not args.collector:
            parser.error("--no-worker needs --collector URL (the collector the running worker reports to)")
        return demo_module.run(
            args.broker, max(1, args.scale), collector_url=args.collector, start_worker=not args.no_worker,
            port=args.port, serve=args.serve,
        )  # fmt: skip
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    raise SystemExit(main())
