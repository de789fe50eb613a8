"""The ``bugsnag-celery`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bugsnag-celery", description="BugSnag sessions for Celery workers")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a real worker on an embedded broker and show its sessions")
    demo.add_argument("--broker", default="filesystem://", help="broker URL (default: embedded filesystem)")
    demo.add_argument("--scale", type=int, default=1, help="multiply the workload (default 1: 58 tasks)")
    collector = commands.add_parser("collector", help="run a local BugSnag-compatible collector")
    collector.add_argument("--host", default="127.0.0.1")
    collector.add_argument("--port", type=int, default=9339)
    collector.add_argument(
        "--db", default="bugsnag-collector.sqlite", help="SQLite file (kept across restarts)"
    )
    collector.add_argument(
        "--fail-status", type=int, help="answer every POST with this status (fault testing)"
    )
    collector.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering")
    args = parser.parse_args(argv)
    if args.command == "collector":
        from .collector import Collector

        server = Collector(args.host, args.port, args.db)
        server.fail_status, server.delay = args.fail_status, args.delay
        print(f"bugsnag-celery collector on {server.url} (events: /notify, sessions: /sessions)", flush=True)
        try:
            server.server.serve_forever()
        except KeyboardInterrupt:
            pass
        return 0
    if args.command == "demo":
        from . import demo as demo_module

        return demo_module.run(args.broker, max(1, args.scale))
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    raise SystemExit(main())
