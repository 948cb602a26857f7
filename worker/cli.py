"""The `ordercheck` command line: check, serve, send, flags, review, replay, advisories, cds."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from worker import __version__


def _add_check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check",
        help="check HL7 files against the guideline and print results",
        description="Read files holding one or more HL7 v2 messages (CR, LF or "
        "CRLF segment ends, optional MLLP framing), in order, sharing one patient "
        "history, and print one result per order. Exit 0 when every file was "
        "read, 2 when a file could not be read.",
    )
    p.add_argument("--json", action="store_true", help="JSON Lines, one object per order")
    p.add_argument("paths", nargs="+", metavar="PATH", help="HL7 file ('-' for standard input)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ordercheck",
        description="Checks HL7 v2 imaging orders against the guideline for an adult soft-tissue "
        "mass of the thigh. Advisories support a clinician's decision; they never "
        "block or change an order.",
    )
    parser.add_argument("--version", action="version", version=f"ordercheck {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_check(sub)
    from worker.commands import register_all

    register_all(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            from worker.commands.check import run_check

            return run_check(args.paths, as_json=args.json)
        handler = getattr(args, "handler", None)
        if handler is None:
            parser.error(f"unknown command {args.command}")
        code: int = handler(args)
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
