"""The `ordercheck` command line: check, serve, send, flags, review, replay, advisories, cds."""

from __future__ import annotations

import argparse
import os
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


def _one_line(exc: Exception) -> str | None:
    """The one-line message for an error of the environment (a wrong setting, Redis down), or
    None for anything else (a bug: its traceback is wanted)."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError as SourceError

    from worker.settings import SettingsError, describe, redact_url

    if isinstance(exc, SettingsError):
        return "\n".join(f"ordercheck: {line}" for line in str(exc).splitlines())
    if isinstance(exc, SourceError) or (
        isinstance(exc, ValidationError) and exc.title == "Settings"
    ):
        return "\n".join(f"ordercheck: {line}" for line in describe(exc).splitlines())
    import redis

    from worker.errors import StoreError

    if isinstance(exc, redis.RedisError) or (
        isinstance(exc, StoreError) and isinstance(exc.__cause__, redis.RedisError)
    ):
        url = os.environ.get("ORDERCHECK_REDIS_URL", "")
        where = f" at {redact_url(url)}" if url else ""
        # A StoreError's text is its cause's "<class>: <message>".
        said = str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
        return f"ordercheck: Redis{where} failed: {said}"
    return None


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
    except Exception as exc:  # deliberate: an error of the environment in one line, else raised
        line = _one_line(exc)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
