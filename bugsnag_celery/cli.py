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
    args = parser.parse_args(argv)
    if args.command == "demo":
        from . import demo as demo_module

        return demo_module.run(args.broker, max(1, args.scale))
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    raise SystemExit(main())
