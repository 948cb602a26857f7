"""`ordercheck flags list|show|resolve|export|summary`: the review queries on the command line.

Same query layer as the web page (worker.store.query over AdvisoryQuery, built from the same
filters by worker.review.filters). Errors print one line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from typing import TextIO

from worker.errors import OrdercheckError, StoreError
from worker.records import OVERRIDE_REASONS
from worker.review.decide import STATES, DecisionError, decide, flag_rules, make_decision
from worker.review.filters import DELIVERIES, DISPOSITIONS, VERDICTS, FilterError, Filters
from worker.review.lookup import find
from worker.review.present import (
    decision_line,
    detail_text,
    format_table,
    json_safe,
    printable,
    table_row,
    write_csv,
)
from worker.review.summary import percent, summarise_store
from worker.runtime import open_store
from worker.settings import Settings
from worker.store import AdvisoryStore, query

DEFAULT_LIMIT = 100


def _add_filters(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters")
    g.add_argument(
        "--since",
        default="",
        metavar="DATE",
        help="received on or after DATE (YYYY-MM-DD, local) or an ISO date-time",
    )
    g.add_argument(
        "--until",
        default="",
        metavar="DATE",
        help="received up to and including DATE (YYYY-MM-DD), or before a date-time",
    )
    g.add_argument(
        "--verdict", default="", choices=VERDICTS, help="only this verdict (default: any)"
    )
    g.add_argument(
        "--rule", default="", metavar="R", help="rule id in flags or advice, e.g. CT_BEFORE_MRI"
    )
    g.add_argument(
        "--provider",
        default="",
        metavar="P",
        help="ordering provider contains P (case-insensitive)",
    )
    g.add_argument("--facility", default="", metavar="F", help="sending facility (MSH-4) is F")
    g.add_argument(
        "--delivery", default="", choices=DELIVERIES, help="only this delivery state (default: any)"
    )
    g.add_argument(
        "--disposition",
        default="",
        choices=DISPOSITIONS,
        help="only this review state (default: any)",
    )


def _filters(args: argparse.Namespace) -> Filters:
    return Filters(
        since=args.since,
        until=args.until,
        verdict=args.verdict,
        rule=args.rule,
        provider=args.provider,
        facility=args.facility,
        delivery=args.delivery,
        disposition=args.disposition,
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "flags",
        help="list, show, resolve and export advisories",
        description="Review advisories in the advisory store "
        "(ORDERCHECK_REDIS_URL; without it the store is empty). The review web "
        "page (`ordercheck review`) runs the same queries.",
    )
    fsub = p.add_subparsers(dest="flags_command", required=True, metavar="ACTION")

    ls = fsub.add_parser(
        "list",
        help="advisories, newest first",
        description="Advisories, newest first: a table, or JSON Lines with "
        "the fields of `check --json` plus id, received_at, delivery and "
        "disposition.",
    )
    ls.add_argument("--json", action="store_true", help="JSON Lines, one object per advisory")
    ls.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"at most N advisories (default {DEFAULT_LIMIT}; 0: all)",
    )
    ls.add_argument("--offset", type=int, default=0, metavar="N", help="skip the first N")
    _add_filters(ls)
    ls.set_defaults(handler=_handler(_list))

    show = fsub.add_parser(
        "show",
        help="one advisory in full: flags, facts and where each "
        "came from, audit trail, raw HL7 (patient data)",
        description="Show the advisory KEY names: its id, its own MSH-10 (OC...), the order's "
        "placer number or the order's MSH-10 (a message with several orders shows each). "
        "Exit 0 when found, 2 when not.",
    )
    show.add_argument(
        "id", metavar="KEY", help="advisory id, advisory MSH-10, placer number or order MSH-10"
    )
    show.add_argument(
        "--json", action="store_true", help="the whole record as JSON (one object per line)"
    )
    show.set_defaults(handler=_handler(_show))

    res = fsub.add_parser(
        "resolve",
        help="record a review decision (appended to the audit trail, never overwriting)",
        description="Record a decision on an advisory. Override reasons: "
        + "; ".join(f"{k} ({v})" for k, v in OVERRIDE_REASONS.items())
        + ".",
    )
    res.add_argument("id", metavar="ID", help="the advisory id (first column of `flags list`)")
    res.add_argument(
        "--as", dest="state", required=True, choices=STATES, help="the decision (required)"
    )
    res.add_argument(
        "--reason",
        default="",
        metavar="CODE",
        choices=list(OVERRIDE_REASONS),
        help="override reason code (required with --as overridden)",
    )
    res.add_argument("--text", default="", metavar="T", help="free text kept with the decision")
    res.add_argument(
        "--rule",
        default="",
        metavar="RULE",
        help="with --as missed: the flag rule the order should have raised ("
        + ", ".join(flag_rules())
        + ")",
    )
    res.add_argument(
        "--reviewer", default="", metavar="NAME", help="who decided (default: the login name)"
    )
    res.set_defaults(handler=_handler(_resolve))

    exp = fsub.add_parser("export", help="matching advisories as CSV on standard output")
    exp.add_argument("--csv", action="store_true", required=True, help="CSV (the only format)")
    _add_filters(exp)
    exp.set_defaults(handler=_handler(_export))

    summ = fsub.add_parser(
        "summary",
        help="flags per ISO week by rule and by ordering "
        "provider, and the share overridden (as on the web page)",
    )
    summ.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    _add_filters(summ)
    summ.set_defaults(handler=_handler(_summary))


def _fail(message: str) -> int:
    print(f"ordercheck flags: {message}", file=sys.stderr)
    return 2


def _handler(
    action: Callable[[argparse.Namespace, AdvisoryStore, TextIO], int],
) -> Callable[[argparse.Namespace], int]:
    """Wraps an action: settings, store, and one-line errors with exit 2."""

    def run(args: argparse.Namespace) -> int:
        import redis

        settings = Settings()  # a wrong setting: one line per setting at the CLI edge
        if not settings.redis_url:
            print(
                "ordercheck flags: note: ORDERCHECK_REDIS_URL is not set, so this reads an "
                "empty in-memory store; set it to the running server's Redis.",
                file=sys.stderr,
            )
        try:
            return action(args, open_store(settings), sys.stdout)
        except (FilterError, DecisionError) as exc:
            return _fail(str(exc))
        except StoreError as exc:  # from Redis: its error's "<class>: <message>"
            return _fail(f"the advisory store (Redis) failed: {exc}" if exc.__cause__ else str(exc))
        except redis.RedisError as exc:  # the review's find index reads Redis itself
            return _fail(f"the advisory store (Redis) failed: {type(exc).__name__}: {exc}")
        except OrdercheckError as exc:
            return _fail(str(exc))

    return run


def _list(args: argparse.Namespace, store: AdvisoryStore, out: TextIO) -> int:
    if args.limit < 0 or args.offset < 0:
        return _fail("--limit and --offset must be 0 or more")
    limit = args.limit or None
    rows = query(store, _filters(args).query(), args.offset, None if limit is None else limit + 1)
    more = limit is not None and len(rows) > limit
    rows = rows[:limit] if limit is not None else rows
    if args.json:
        for rec in rows:
            out.write(
                json_safe(json.dumps(rec.flags_json(), ensure_ascii=False, separators=(",", ":")))
                + "\n"
            )
    elif rows:
        out.write(format_table([table_row(rec) for rec in rows]))
    else:
        print("no advisory matches", file=sys.stderr)
    if more:
        print(
            f"(more than {limit}: use --limit 0 or --offset {args.offset + limit})", file=sys.stderr
        )
    return 0


def _show(args: argparse.Namespace, store: AdvisoryStore, out: TextIO) -> int:
    found = find(store, args.id, keep_days=Settings().retention_days)
    if not found:
        return _fail(f"no advisory with id, MSH-10 or placer number {printable(args.id)[:200]!r}")
    for i, rec in enumerate(found):
        if args.json:
            out.write(json_safe(rec.model_dump_json()) + "\n")
        else:
            out.write(("\n" if i else "") + detail_text(rec))
    if len(found) > 1:
        print(f"{len(found)} advisories match {printable(args.id)!r}", file=sys.stderr)
    return 0


def _reviewer(given: str) -> str:
    if given.strip():
        return given
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "cli"


def _resolve(args: argparse.Namespace, store: AdvisoryStore, out: TextIO) -> int:
    made = make_decision(args.state, _reviewer(args.reviewer), args.reason, args.text, args.rule)
    rec = decide(store, args.id, made)
    out.write(
        f"{rec.id}: {printable(decision_line(made))}\n"
        f"  {len(rec.audit)} decision(s) in the audit trail; disposition now "
        f"{rec.disposition}\n"
    )
    return 0


def _export(args: argparse.Namespace, store: AdvisoryStore, out: TextIO) -> int:
    write_csv(query(store, _filters(args).query(), 0, None), out)
    return 0


def _summary(args: argparse.Namespace, store: AdvisoryStore, out: TextIO) -> int:
    s = summarise_store(store, _filters(args).query())
    if args.json:
        out.write(json.dumps(s.as_json(), ensure_ascii=False) + "\n")
        return 0
    head = ("WEEK", *s.rules, "FLAGGED", "OVERRIDDEN", "SHARE")
    rows = [
        (
            w.week,
            *(str(w.by_rule[r]) for r in s.rules),
            str(w.flagged),
            str(w.overridden),
            percent(w.override_share),
        )
        for w in s.weeks
    ]
    rows.append(
        (
            "total",
            *(str(s.rule_total(r)) for r in s.rules),
            str(s.flagged),
            str(s.overridden),
            percent(s.override_share),
        )
    )
    out.write(format_table(rows, head))
    if s.providers:
        out.write("\n")
        out.write(
            format_table(
                [
                    (
                        printable(p),
                        str(s.provider_total(p)),
                        str(s.provider_overridden(p)),
                        percent(s.provider_share(p)),
                    )
                    for p in s.providers
                ],
                ("ORDERING PROVIDER", "FLAGGED", "OVERRIDDEN", "SHARE"),
            )
        )
    if s.missed_rules:
        out.write("\n")
        out.write(
            format_table(
                [(r, str(s.missed_total(r))) for r in s.missed_rules],
                ("MISSED FLAG RULE", "ORDERS"),
            )
        )
    return 0
