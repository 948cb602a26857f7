"""`ordercheck advisories [--undelivered]` and `ordercheck advisories resend ID...`."""

from __future__ import annotations

import argparse
import sys

from worker.records import AdvisoryQuery
from worker.runtime import Stores
from worker.settings import Settings
from worker.store import query


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("advisories", help="list advisories by delivery state; resend them")
    p.add_argument(
        "--undelivered", action="store_true", help="only advisories whose delivery gave up"
    )
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--resend", nargs="+", metavar="ID", help="send these advisories again now")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    if not settings.redis_url:
        print(
            "ordercheck: advisories live in the server's memory on the embedded default; "
            "set ORDERCHECK_REDIS_URL to reach a Redis-mode server's store",
            file=sys.stderr,
        )
        return 2
    stores = Stores(settings)
    if args.resend:
        from worker.guideline import load_knowledge
        from worker.pipeline import Processor
        from worker.publish import Publisher

        processor = Processor(
            settings,
            load_knowledge(settings.code_map, protocols=settings.protocols_file),
            stores,
            Publisher(settings),
            lambda *_: None,
        )
        status = 0
        for rec_id in args.resend:
            if stores.store.get(rec_id) is None:
                print(f"{rec_id}: no such advisory", file=sys.stderr)
                status = 2
                continue
            ok = processor.resend(rec_id)
            rec = stores.store.get(rec_id)
            error = rec.delivery_error if rec else ""
            print(f"{rec_id}: {'delivered' if ok else 'not delivered: ' + error}")
            status = status if ok else max(status, 1)
        return status
    q = AdvisoryQuery(delivery="undelivered" if args.undelivered else None)
    for rec in query(stores.store, q, limit=args.limit):
        r = rec.result
        print(
            f"{rec.id}  {rec.received_at:%Y-%m-%d %H:%M}  {r.message_control_id}  "
            f"{r.verdict}  {rec.delivery} ({rec.delivery_attempts} attempts)  "
            f"{rec.delivery_error}"
        )
    return 0
