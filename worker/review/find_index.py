"""A lookup index in Redis for `flags show KEY` and the page's search: without it every lookup
would read every advisory (about 3 s per 10,000 on a laptop; a year of a busy site holds
hundreds of thousands).

Built lazily by the reader, so the pipeline's write path is unchanged: the advisory stream
(`{p}advisories`, one entry per new advisory, in the order they were stored) says which
advisories are new since the last lookup; each is read once and indexed under its order's
MSH-10, its placer number, the first 17 characters of its own MSH-10 (`OC` + 15 of its id; a
corrected advisory's `OC...C1` shares them) and a SHA-256 of each PID-3 identifier (the MRN
search; never the MRN itself). When the stream no longer reaches back to the last lookup (it
was trimmed) or on the first lookup, the index is rebuilt from the whole advisory index once.

    {p}find:{YYYY-Www}    sorted set, all scores 0, members "KEY\\x1fID" (lex range lookup),
                          one per ISO week of received_at, expiring after the retention period
    {p}find:weeks         set of those week keys
    {p}find:upto          the last stream entry indexed

Lookups return candidate ids; the caller reads each record and checks it really matches, so a
stale entry (an advisory purged since) or a shared prefix never shows a wrong advisory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from worker.errors import OrdercheckError
from worker.hl7.build import advisory_control_id
from worker.hl7.parse import parse_message
from worker.store import RedisStore

PAGE = 500  # advisories read per round trip when indexing
OC_PREFIX = 17  # characters of an advisory MSH-10 indexed ("OC" + 15 of the id)


def mrn_key(mrn: str) -> str:
    """The index key of a patient identifier: a hash, never the MRN."""
    return "mrn:" + hashlib.sha256(mrn.encode("utf-8")).hexdigest()[:32]


def mrns_in(raw_in: str) -> set[str]:
    """PID-3 identifiers (first component of each repetition) of an order message."""
    if not raw_in:
        return set()
    try:
        msg = parse_message(raw_in.encode("utf-8"))
    except (OrdercheckError, ValueError, IndexError):
        return set()
    pid = msg.first("PID")
    if pid is None:
        return set()
    found = {msg.component(rep, 1) for rep in msg.repetitions(pid.get(3))}
    if not found and pid.get(2):  # PID-2, the external id of older feeds
        found.add(msg.component(pid.get(2), 1))
    return {m for m in found if m}


def index_keys(record: dict[str, Any]) -> set[str]:
    """The index keys of one stored record (its JSON as written by the store)."""
    result = record.get("result") or {}
    keys = {
        str(result.get("message_control_id") or ""),
        str(result.get("placer_order_number") or ""),
    }
    with contextlib.suppress(ValueError):
        keys.add(advisory_control_id(str(record.get("id", "")))[:OC_PREFIX])
    keys |= {mrn_key(m) for m in mrns_in(str(record.get("raw_in") or ""))}
    return {k for k in keys if k}


def _stream_id(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class RedisFindIndex:
    """The lookup index of one RedisStore (see the module docstring)."""

    def __init__(self, store: RedisStore, keep_days: int = 400) -> None:
        self.r = store.r
        self.p = store.p
        self.ttl = keep_days * 86400 + 14 * 86400  # a fortnight beyond the retention period

    # -- writing ---------------------------------------------------------------------------------
    def _bucket(self, received_at: str) -> str:
        try:
            when = datetime.fromisoformat(received_at)
        except ValueError:
            when = datetime.now(UTC)
        year, week, _ = (
            (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC).isocalendar()
        )
        return f"{self.p}find:{year}-W{week:02d}"

    def _index_ids(self, ids: list[str]) -> None:
        for start in range(0, len(ids), PAGE):
            chunk = ids[start : start + PAGE]
            pipe = self.r.pipeline(transaction=False)
            for advisory_id in chunk:
                pipe.hget(f"{self.p}adv:{advisory_id}", "record")
            writes = self.r.pipeline(transaction=False)
            buckets: set[str] = set()
            for advisory_id, body in zip(chunk, pipe.execute(), strict=True):
                if not body:
                    continue  # purged since
                record = json.loads(body)
                bucket = self._bucket(str(record.get("received_at", "")))
                members = {f"{k}\x1f{advisory_id}": 0 for k in index_keys(record)}
                if members:
                    writes.zadd(bucket, members)
                    buckets.add(bucket)
            for bucket in buckets:
                writes.expire(bucket, self.ttl)
            if buckets:
                writes.sadd(f"{self.p}find:weeks", *buckets)
            writes.execute()

    def _stream_info(self) -> dict[Any, Any] | None:
        import redis

        try:
            info: dict[Any, Any] = self.r.xinfo_stream(f"{self.p}advisories")
        except redis.ResponseError:  # no stream yet
            return None
        return info

    def _rebuild(self) -> bytes:
        """Index every advisory (first lookup, or the stream lost entries since the last);
        returns the stream position it covers (entries after it are caught up next)."""
        info = self._stream_info()
        upto = info["last-generated-id"] if info else b"0-0"
        start = 0
        while True:
            ids = self.r.zrange(f"{self.p}adv:index", start, start + PAGE * 4 - 1)
            if not ids:
                break
            self._index_ids([i.decode() for i in ids])
            start += len(ids)
        self.r.set(f"{self.p}find:upto", upto)
        return bytes(upto) if not isinstance(upto, str) else upto.encode()

    def refresh(self) -> None:
        """Index the advisories stored since the last lookup (two round trips when none)."""
        stream = f"{self.p}advisories"
        upto: bytes | None = self.r.get(f"{self.p}find:upto")
        if upto is None:
            upto = self._rebuild()
        info = self._stream_info()
        if info is None or _stream_id(info["last-generated-id"]) <= _stream_id(upto):
            return  # nothing stored since
        first = info.get("first-entry")
        if not first or _stream_id(first[0]) > _stream_id(upto):
            upto = self._rebuild()  # trimmed past our position: entries may be lost
        ms, seq = _stream_id(upto)
        after = f"{ms}-{seq + 1}"
        while True:
            entries = self.r.xrange(stream, after, "+", count=PAGE)
            if not entries:
                return
            ids = []
            for _, fields in entries:
                with contextlib.suppress(KeyError, ValueError, TypeError):
                    ids.append(str(json.loads(fields[b"advisory"])["id"]))
            self._index_ids(ids)
            last = entries[-1][0]
            self.r.set(f"{self.p}find:upto", last)
            ms, seq = _stream_id(last)
            after = f"{ms}-{seq + 1}"

    def newest_first(self, ids: list[str]) -> list[str]:
        """*ids* still in the store, newest first (by the advisory index's received_at)."""
        if not ids:
            return []
        scores = self.r.zmscore(f"{self.p}adv:index", ids)
        kept = [(score, i) for i, score in zip(ids, scores, strict=True) if score is not None]
        return [i for _, i in sorted(kept, reverse=True)]

    # -- reading ---------------------------------------------------------------------------------
    def candidates(self, key: str) -> list[str]:
        """Ids indexed under *key* (an exact key, or an advisory MSH-10 by its prefix)."""
        self.refresh()
        probes = {key}
        if key.upper().startswith("OC") and len(key) >= OC_PREFIX:
            probes.add(key[:OC_PREFIX])
        weeks = sorted(w.decode() for w in self.r.smembers(f"{self.p}find:weeks"))
        pipe = self.r.pipeline(transaction=False)
        for week in weeks:
            for probe in probes:
                low = b"[" + probe.encode("utf-8") + b"\x1f"
                pipe.zrangebylex(week, low, low + b"\xff")
        found: list[str] = []
        replies = pipe.execute()
        for members in replies:
            for m in members:
                advisory_id = m.rsplit(b"\x1f", 1)[1].decode()
                if advisory_id not in found:
                    found.append(advisory_id)
        gone = [w for w, reply in zip(weeks, replies[:: len(probes)], strict=False) if not reply]
        if gone:  # expired weeks leave the list
            pipe = self.r.pipeline(transaction=False)
            for week in gone:
                pipe.exists(week)
            dead = [w for w, alive in zip(gone, pipe.execute(), strict=True) if not alive]
            if dead:
                self.r.srem(f"{self.p}find:weeks", *dead)
        return found
