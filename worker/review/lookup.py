"""Finding advisories by the numbers people have at hand (the query layer of `flags show KEY` and
the page's search box).

A KEY is any of: the advisory's id, the advisory's own MSH-10 (`OC...`, as the ordering system
received it; a corrected advisory's `OC...C1` too), the order's placer number (ORC-2 or OBR-2,
first component) or the order's MSH-10. One message with several orders has one MSH-10 and
several advisories: every one is returned, newest first.

A patient's MRN (PID-3, any repetition, first component) is a separate search: it is patient
data, so the caller logs that the access happened (who, how many advisories) but never the MRN.

In memory the store is scanned; in Redis a lookup index answers (worker.review.find_index) and
each candidate is read and checked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime

from worker.errors import OrdercheckError, StoreError
from worker.hl7.build import advisory_control_id
from worker.hl7.parse import parse_message
from worker.records import AdvisoryQuery, AdvisoryRecord
from worker.review.find_index import RedisFindIndex, mrn_key, mrns_in
from worker.store import AdvisoryStore, RedisStore, query

MAX_KEY = 200  # characters of a key; longer ones match nothing
MAX_FOUND = 200  # advisories returned for one key at most


def _clean(key: str) -> str:
    key = key.strip()
    return "" if len(key) > MAX_KEY or not key.isprintable() else key


def advisory_msh10(rec: AdvisoryRecord) -> str:
    """MSH-10 of the advisory as sent (raw_out), else the one it will be sent with."""
    if rec.raw_out:
        try:
            return parse_message(rec.raw_out.encode("utf-8")).msh.get(10)
        except (OrdercheckError, ValueError, IndexError):
            pass
    try:
        return advisory_control_id(rec.id)
    except ValueError:
        return ""


def keys_of(rec: AdvisoryRecord) -> set[str]:
    """Every KEY that finds *rec* (empty values left out)."""
    r = rec.result
    keys = {rec.id, r.message_control_id, r.placer_order_number, advisory_msh10(rec)}
    with contextlib.suppress(ValueError):
        keys.add(advisory_control_id(rec.id))
    return {k for k in keys if k}


def _get(store: AdvisoryStore, key: str) -> AdvisoryRecord | None:
    """store.get(key), None for a key that names another of the store's Redis structures
    ("index", "undelivered", "ID:audit": WRONGTYPE) rather than an advisory."""
    try:
        return store.get(key)
    except StoreError as exc:
        import redis

        if isinstance(exc.__cause__, redis.ResponseError):
            return None
        raise


def _checked(
    store: AdvisoryStore, ids: list[str], match: Callable[[AdvisoryRecord], bool], limit: int
) -> list[AdvisoryRecord]:
    """The records of *ids* (newest first already) that really match, up to *limit*."""
    out: list[AdvisoryRecord] = []
    for advisory_id in ids:
        rec = store.get(advisory_id)
        if rec is not None and match(rec):
            out.append(rec)
            if len(out) >= limit:
                break
    return out


def find(
    store: AdvisoryStore, key: str, limit: int = MAX_FOUND, keep_days: int = 400
) -> list[AdvisoryRecord]:
    """The advisories *key* names, newest first ([] when none or when the key is not usable).

    keep_days: the retention period (Redis lookup index entries live that long)."""
    key = _clean(key)
    if not key:
        return []
    direct = _get(store, key)
    if direct is not None:
        return [direct]
    if isinstance(store, RedisStore):
        index = RedisFindIndex(store, keep_days)
        ids = index.newest_first(index.candidates(key))
        return _checked(store, ids, lambda rec: key in keys_of(rec), limit)
    out: list[AdvisoryRecord] = []
    for rec in store.iter_newest():
        r = rec.result
        if key in (r.message_control_id, r.placer_order_number) or (
            key.upper().startswith("OC") and key in keys_of(rec)
        ):
            out.append(rec)
            if len(out) >= limit:
                break
    return out


def mrns_of(rec: AdvisoryRecord) -> set[str]:
    """The patient identifiers of PID-3 (first component of each repetition) of the order."""
    return mrns_in(rec.raw_in)


def find_by_mrn(
    store: AdvisoryStore, mrn: str, limit: int = MAX_FOUND, keep_days: int = 400
) -> list[AdvisoryRecord]:
    """The advisories of the patient with this MRN, newest first (exact match)."""
    mrn = _clean(mrn)
    if not mrn:
        return []
    if isinstance(store, RedisStore):
        index = RedisFindIndex(store, keep_days)
        ids = index.newest_first(index.candidates(mrn_key(mrn)))
        return _checked(store, ids, lambda rec: mrn in mrns_of(rec), limit)
    out: list[AdvisoryRecord] = []
    for rec in store.iter_newest():
        if mrn in mrns_of(rec):
            out.append(rec)
            if len(out) >= limit:
                break
    return out


COUNT_BUDGET = 2_000  # records read past the page to count a filtered list in Redis


def _unfiltered(q: AdvisoryQuery) -> bool:
    """True when *q* filters by received_at at most (the advisory index can count it)."""
    return not any(
        (q.verdict, q.rule, q.provider, q.facility, q.delivery, q.disposition, q.flagged_only)
    )


def _epoch(when: datetime) -> float:
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def page_and_total(
    store: AdvisoryStore, q: AdvisoryQuery, offset: int, limit: int, budget: int = COUNT_BUDGET
) -> tuple[list[AdvisoryRecord], int, bool]:
    """One page of the records matching *q* (newest first), how many match, and whether that
    count is exact.

    In memory, and in Redis for a list filtered by date only (ZCOUNT of the advisory index),
    the count is exact. A filtered list in Redis reads records to count them: past the page it
    stops after *budget* more records, and the count is then a lower bound (exact False)."""
    if isinstance(store, RedisStore) and _unfiltered(q):
        low: str | float = "-inf" if q.since is None else _epoch(q.since)
        high: str | float = "+inf" if q.until is None else f"({_epoch(q.until)}"
        total = int(store.r.zcount(f"{store.p}adv:index", low, high))
        return query(store, q, offset, limit), total, True
    rows: list[AdvisoryRecord] = []
    total = 0
    for read, rec in enumerate(store.iter_newest(q.since, q.until), start=1):
        if q.matches(rec):
            if offset <= total < offset + limit:
                rows.append(rec)
            total += 1
        if (
            isinstance(store, RedisStore)
            and total >= offset + limit
            and read >= offset + limit + budget
        ):
            return rows, total, False
    return rows, total, True
