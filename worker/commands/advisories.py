"""`ordercheck advisories [--undelivered]`, `advisories --resend ID...|--all-undelivered`.

The delivery view of the advisory store (Redis mode): a table with a header, "none" when there
is nothing to list. --undelivered lists what the ordering system did not get: advisories whose
delivery gave up (undelivered) and those that had no destination (not-sent).
"""

from __future__ import annotations

import argparse
import sys

from worker.records import AdvisoryQuery, AdvisoryRecord
from worker.runtime import Stores
from worker.settings import Settings
from worker.store import RedisStore, query

DEFAULT_LIMIT = 100
HEADER = ("ID", "RECEIVED (UTC)", "CONTROL ID", "VERDICT", "DELIVERY", "ATTEMPTS", "DESTINATION")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "advisories",
        help="list advisories by delivery state; resend them",
        description="List the advisories of the store at ORDERCHECK_REDIS_URL, newest first, "
        "with their delivery state (pending, delivered, undelivered, not-sent), or send "
        "undelivered ones again now. Exit 0 when all went well, 1 when a resend failed, 2 "
        "for a wrong id or setting.",
    )
    p.add_argument(
        "--undelivered",
        action="store_true",
        help="only advisories the ordering system did not get: delivery gave up "
        "(undelivered) or no destination was configured (not-sent)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"list at most N advisories (default {DEFAULT_LIMIT})",
    )
    p.add_argument(
        "--resend",
        nargs="*",
        metavar="ID",
        help="send these advisories again now, one attempt each (with --all-undelivered: "
        "every undelivered and not-sent one)",
    )
    p.add_argument(
        "--all-undelivered",
        action="store_true",
        help="with --resend: resend every advisory listed by --undelivered",
    )
    p.set_defaults(handler=run)


def _row(rec: AdvisoryRecord) -> tuple[str, ...]:
    r = rec.result
    return (
        rec.id,
        f"{rec.received_at:%Y-%m-%d %H:%M}",
        r.message_control_id or "-",
        r.verdict,
        rec.delivery,
        str(rec.delivery_attempts),
        rec.destination or "-",
    )


def _table(rows: list[tuple[str, ...]], errors: list[str]) -> str:
    """The header, then one line per row, or "none"."""
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(HEADER)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)) + "  ERROR"]
    if not rows:
        lines.append("none")
    for row, error in zip(rows, errors, strict=True):
        cells = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
        lines.append(f"{cells}  {error}".rstrip())
    return "\n".join(lines) + "\n"


def undelivered(stores: Stores, limit: int | None) -> list[AdvisoryRecord]:
    """Undelivered and not-sent advisories, newest first."""
    store = stores.store
    if isinstance(store, RedisStore):
        records = [rec for i in store.undelivered_ids() if (rec := store.get(i)) is not None]
        records = [r for r in records if r.delivery in ("undelivered", "not-sent")]
    else:
        records = [r for r in store.iter_newest() if r.delivery in ("undelivered", "not-sent")]
    records.sort(key=lambda r: r.received_at, reverse=True)
    return records[:limit] if limit else records


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    if not settings.redis_url:
        print(
            "ordercheck: advisories live in the server's memory on the embedded default; "
            "set ORDERCHECK_REDIS_URL to reach a Redis-mode server's store",
            file=sys.stderr,
        )
        return 2
    if args.limit < 0:
        print("ordercheck: --limit must be 0 or more", file=sys.stderr)
        return 2
    stores = Stores(settings)
    if args.all_undelivered and args.resend is None:
        print("ordercheck: --all-undelivered goes with --resend", file=sys.stderr)
        return 2
    if args.resend is not None:
        ids = list(args.resend)
        if args.all_undelivered:
            ids += [rec.id for rec in undelivered(stores, None) if rec.id not in ids]
        if not ids:
            if args.all_undelivered:
                print("none to resend")
                return 0
            print("ordercheck: --resend needs IDs or --all-undelivered", file=sys.stderr)
            return 2
        return _resend(settings, stores, ids)
    if args.undelivered:
        records = undelivered(stores, args.limit)
    else:
        records = query(stores.store, AdvisoryQuery(), limit=args.limit or None)
    sys.stdout.write(_table([_row(r) for r in records], [r.delivery_error for r in records]))
    return 0


def _resend(settings: Settings, stores: Stores, ids: list[str]) -> int:
    from worker.guideline import load_knowledge
    from worker.pipeline import Processor
    from worker.publish import Publisher

    publisher = Publisher(settings)
    processor = Processor(
        settings,
        load_knowledge(settings.code_map, protocols=settings.protocols_file),
        stores,
        publisher,
        lambda *_: None,
    )
    status = 0
    try:
        for rec_id in ids:
            if stores.store.get(rec_id) is None:
                print(f"{rec_id}: no such advisory", file=sys.stderr)
                status = 2
                continue
            ok = processor.resend(rec_id)
            rec = stores.store.get(rec_id)
            if ok:
                print(f"{rec_id}: delivered to {rec.destination if rec else '?'}")
                continue
            state = rec.delivery if rec else "?"
            error = rec.delivery_error if rec else ""
            print(f"{rec_id}: {state}: {error}")
            status = max(status, 1)
    finally:
        publisher.close()  # its kept connections
    return status
