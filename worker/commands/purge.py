"""`ordercheck purge [--days N]`: delete advisories and kept refused messages past retention."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta

from worker.errors import StoreError
from worker.runtime import Stores
from worker.settings import Settings
from worker.store import purge_expired


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "purge",
        help="delete advisories and refused messages older than the retention period",
        description="Delete the advisories (with the order message and the "
        "advisory message they hold) and the refused messages kept for review "
        "that were received more than ORDERCHECK_RETENTION_DAYS days ago. "
        "`ordercheck serve` does this at start and once a day; this command is "
        "for a cron job or an operator.",
    )
    p.add_argument(
        "--days",
        type=int,
        help="retention in days (default: ORDERCHECK_RETENTION_DAYS, 365 unless set)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    days = settings.retention_days if args.days is None else args.days
    if days < 1:
        print("ordercheck: --days must be at least 1", file=sys.stderr)
        return 2
    if not settings.redis_url:
        print(
            "ordercheck: advisories live in the server's memory on the embedded default, and "
            "`ordercheck serve` purges them daily; set ORDERCHECK_REDIS_URL to purge a "
            "Redis-mode store",
            file=sys.stderr,
        )
        return 2
    now = datetime.now(UTC)
    try:
        removed = purge_expired(Stores(settings).store, days, now)
    except StoreError as exc:  # Redis unreachable, wrong password: say so, no traceback
        print(f"ordercheck: cannot purge: {exc}", file=sys.stderr)
        return 2
    print(
        f"purged {removed} advisories received before "
        f"{now - timedelta(days=days):%Y-%m-%d %H:%M} UTC (retention {days} days)"
    )
    return 0
