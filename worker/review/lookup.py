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

from worker.errors import OrdercheckError
from worker.hl7.build import advisory_control_id
from worker.hl7.parse import parse_message
from worker.records import AdvisoryQuery, AdvisoryRecord
from worker.review.find_index import RedisFindIndex, mrn_key, mrns_in
from worker.store import AdvisoryStore, RedisStore

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
    direct = store.get(key)
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


def page_and_total(
    store: AdvisoryStore, q: AdvisoryQuery, offset: int, limit: int
) -> tuple[list[AdvisoryRecord], int]:
    """One page of the records matching *q* (newest first) and how many match in all, in one
    pass over the store."""
    rows: list[AdvisoryRecord] = []
    total = 0
    for rec in store.iter_newest(q.since, q.until):
        if not q.matches(rec):
            continue
        if offset <= total < offset + limit:
            rows.append(rec)
        total += 1
    return rows, total
