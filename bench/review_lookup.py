"""How long `ordercheck flags show KEY` (and the page's search) takes on a Redis store of N
advisories: the first lookup (builds the lookup index), later ones, and one after M new
advisories (the index catches up from the advisory stream); and the list page's first page with
its total count, unfiltered (ZCOUNT) and filtered (counting stops 2,000 records past the page).

    .venv/bin/python -m bench.review_lookup [-n 20000] [--new 1000] [--redis-db 15]

Writes N copies of the review test records (tests/reviewdata.py: about 4.7 KB of record JSON
each, with the raw HL7) with distinct ids, placer numbers and MSH-10s into the given Redis
database through `RedisStore.add_advisory` (as the pipeline does), FLUSHES THAT DATABASE before
and after, and prints seconds per lookup. Without the index a lookup reads every advisory.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

from tests.reviewdata import build_records
from worker.hl7.build import advisory_control_id
from worker.records import AdvisoryQuery as AQ
from worker.records import AdvisoryRecord
from worker.review.lookup import find, find_by_mrn, page_and_total
from worker.store import RedisStore, query

ROOT = Path(__file__).resolve().parent.parent


def ident(i: int) -> str:
    """An advisory id like the real ones (20 hex digits of a SHA-256)."""
    return hashlib.sha256(str(i).encode()).hexdigest()[:20]


def write(store: RedisStore, base: list[AdvisoryRecord], first: int, n: int) -> None:
    pipe = store.r.pipeline(transaction=False)
    for i in range(first, first + n):
        rec = base[i % len(base)]
        result = rec.result.model_copy(
            update={"placer_order_number": f"P{i}", "message_control_id": f"M{i}"}
        )
        store.queue_add_advisory(
            pipe, rec.model_copy(update={"id": ident(i), "result": result}), []
        )
        if i % 500 == 499:
            pipe.execute()
    pipe.execute()


def timed(label: str, fn: object) -> None:
    started = time.perf_counter()
    found = fn()  # type: ignore[operator]
    print(f"{label:<44} {len(found):>5} found  {time.perf_counter() - started:8.3f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20_000, help="advisories in the store")
    ap.add_argument("--new", type=int, default=1_000, help="advisories added before the last")
    ap.add_argument("--redis-db", type=int, default=15, help="Redis database (FLUSHED)")
    args = ap.parse_args()
    import redis

    client = redis.Redis.from_url(f"redis://127.0.0.1:6379/{args.redis_db}")
    client.flushdb()
    try:
        store = RedisStore(client)
        base = build_records()
        write(store, base, 0, args.n)
        print(f"{args.n:,} advisories in Redis db {args.redis_db}")
        timed("scan of every record (no index)", lambda: query(store, _never(), 0, None))
        timed("first lookup, placer number (builds index)", lambda: find(store, "P7"))
        timed("lookup, order MSH-10", lambda: find(store, f"M{args.n // 2}"))
        timed("lookup, advisory MSH-10 (OC...)", lambda: find(store, advisory_control_id(ident(3))))
        timed("lookup, unknown key", lambda: find(store, "nope"))
        timed("lookup, MRN", lambda: find_by_mrn(store, "PAT003", limit=50))
        timed("list page 1 + total, no filter", lambda: page_and_total(store, AQ(), 0, 50)[0])
        timed(
            "list page 1 + total, rule filter",
            lambda: page_and_total(store, AQ(rule="PET_INITIAL"), 0, 50)[0],
        )
        write(store, base, args.n, args.new)
        timed(f"lookup after {args.new:,} new advisories", lambda: find(store, f"P{args.n + 1}"))
    finally:
        client.flushdb()
        client.close()
    return 0


def _never() -> AQ:
    return AQ(verdict="no-such-verdict")


if __name__ == "__main__":
    raise SystemExit(main())
