"""`ordercheck dead-letters`: messages set aside after they kept killing workers.

A message whose run ends with the worker killed (the task time limit, a crashed pool process)
is run again up to ORDERCHECK_MAX_ATTEMPTS times, then set aside here instead of being queued
forever (worker/journal.py). The list shows when, why and the message's control id; the raw
message (patient data) is printed only with --raw.
"""

from __future__ import annotations

import argparse
import json
import sys

from worker.runtime import Stores
from worker.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dead-letters", help="list messages set aside after they kept killing workers"
    )
    p.add_argument("--limit", type=int, default=100, help="how many, newest first (default 100)")
    p.add_argument("--json", action="store_true", help="JSON Lines, one object per message")
    p.add_argument("--raw", action="store_true", help="include the message text (patient data)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    if not settings.redis_url:
        print(
            "ordercheck: on the embedded default, dead letters live in the server's memory "
            "(listed on the review page, /refused); set ORDERCHECK_REDIS_URL to "
            "reach a Redis-mode server's store",
            file=sys.stderr,
        )
        return 2
    entries = Stores(settings).store.dead_letters(max(1, args.limit))
    for e in entries:
        if args.json:
            data = e.model_dump(mode="json", exclude=set() if args.raw else {"raw"})
            print(json.dumps(data))
            continue
        print(
            f"{e.dead_at:%Y-%m-%d %H:%M:%S}  {e.control_id or '(no MSH-10)'}  "
            f"{e.attempts} runs  {e.raw_bytes} bytes  {e.reason}"
        )
        if args.raw:
            print(e.raw.replace("\r", "\n"))
    if not entries and not args.json:
        print("no dead letter", file=sys.stderr)
    return 0
