"""The advisory store, the resend (dedup) table and the patient history, in memory or in Redis.

Redis layout (prefix "oc:" by default; patient keys are hashed, never stored in key names):

    oc:adv:{id}          hash: record (JSON, written once), raw_out, delivery, attempts,
                         delivery_error, delivered_at, destination, disposition
    oc:adv:{id}:audit    list of Disposition JSON, append only
    oc:adv:index         sorted set of ids by received_at (epoch seconds)
    oc:adv:undelivered   set of ids whose delivery gave up, or that had nowhere to go (not-sent)
    oc:adv:pending       sorted set of ids waiting for delivery, by received_at (a resent one:
                         by the time of the resend)
    oc:advisories        stream: one JSON entry per advisory, for other consumers
    oc:dedup:{sha}       the ACK we gave to (MSH-3, MSH-4, MSH-10), with a TTL
    oc:hist:{sha}        set of HistoryEntry JSON for one patient identifier
    oc:rejected          list of RejectedEntry JSON, newest first (count and byte budget)
    oc:deadletter        list of DeadLetter JSON, newest first: messages that kept killing
                         workers, set aside after max_attempts (worker/journal.py)
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Protocol

from pydantic import BaseModel

from worker.errors import StoreError
from worker.models import CheckResult, HistoryEntry
from worker.records import AdvisoryQuery, AdvisoryRecord, Delivery, Disposition

_MUTABLE = (
    "raw_out",
    "delivery",
    "delivery_attempts",
    "delivery_error",
    "delivered_at",
    "destination",
    "disposition",
)


class _RedisErrors:
    """`with redis_errors:` maps the Redis client's errors (redis-py, fakeredis) to StoreError
    where they enter ordercheck: the store, the history, the journal and the ledger. Nothing is
    done when no error is raised, and redis is only imported when one is."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        from redis.exceptions import RedisError

        if isinstance(exc, RedisError):
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc


redis_errors = _RedisErrors()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def dedup_key(application: str, facility: str, control_id: str) -> str:
    return _sha(f"{application}\x1f{facility}\x1f{control_id}")


class AdvisoryStore(Protocol):
    def put(self, record: AdvisoryRecord) -> bool:
        """Store a new record; False (and nothing changed) when the id exists already."""

    def get(self, advisory_id: str) -> AdvisoryRecord | None: ...

    def add_advisory(self, record: AdvisoryRecord, patient_keys: list[str]) -> bool:
        """put(), and when the record is new: index_patient() and publish(), all or nothing;
        False (and nothing changed) when the id exists already."""

    def update(self, advisory_id: str, **fields: Any) -> None:
        """Set delivery fields (raw_out, delivery, delivery_attempts, delivery_error, ...)."""

    def update_many(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """update() of several advisories, in one round trip."""

    def dispose(self, advisory_id: str, disposition: Disposition) -> AdvisoryRecord:
        """Append an entry to the audit trail; a decision also sets the record's disposition."""

    def iter_newest(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[AdvisoryRecord]: ...

    def publish(self, record: AdvisoryRecord) -> None:
        """Append the advisory as JSON to the stream for other consumers."""

    def purge(self, before: datetime) -> int:
        """Delete records received before *before*; returns how many."""

    def keep_rejected(self, entry: RejectedEntry) -> None:
        """Keep a message the listener refused (AR/AE), for review; the newest 10,000."""

    def index_patient(self, patient_keys: list[str], advisory_id: str, at: datetime) -> None:
        """Remember that *advisory_id* concerns this patient (for re-checks)."""

    def patient_advisories(self, patient_keys: list[str], since: datetime) -> list[str]:
        """Ids of this patient's advisories received since *since*."""

    def revise(
        self, advisory_id: str, result: CheckResult, raw_out: str, note: Disposition
    ) -> AdvisoryRecord:
        """Replace the result and advisory after a re-check; the note joins the audit trail."""

    def rejected(self, limit: int = 100, offset: int = 0) -> list[RejectedEntry]: ...

    def keep_dead_letter(self, entry: DeadLetter) -> None:
        """Set aside a message that kept killing workers (listed for review, never run again)."""

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]: ...


class RejectedEntry(BaseModel):
    """A refused message kept for review. raw is patient data: shown only behind the login."""

    control_id: str
    ack_code: str
    reason: str
    received_at: datetime
    raw: str
    raw_bytes: int = 0  # length of the message as received; raw holds at most REJECTED_RAW_CHARS

    def budgeted(self) -> RejectedEntry:
        """This entry with its raw text cut to REJECTED_RAW_CHARS (and control id to 200)."""
        if len(self.raw) <= REJECTED_RAW_CHARS and len(self.control_id) <= 200:
            return self if self.raw_bytes else self.model_copy(update={"raw_bytes": len(self.raw)})
        return self.model_copy(
            update={
                "raw": self.raw[:REJECTED_RAW_CHARS],
                "raw_bytes": self.raw_bytes or len(self.raw),
                "control_id": self.control_id[:200],
            }
        )


class DeadLetter(BaseModel):
    """A message set aside after max_attempts runs that never finished (each killed the worker:
    task time limit, pool process killed). raw is patient data: shown only behind the login."""

    key: str  # the journal's message key (worker/journal.py message_key)
    control_id: str
    attempts: int
    reason: str
    received_at: datetime
    dead_at: datetime
    raw: str  # the first DEAD_LETTER_RAW_CHARS characters
    raw_bytes: int = 0  # length of the message


# Refused messages kept for review: at most REJECTED_KEEP entries and, since a refused frame
# may be 1 MB, the first REJECTED_RAW_CHARS characters of each (about 80 MB at most in all).
REJECTED_KEEP = 10_000
REJECTED_RAW_CHARS = 8192
DEAD_LETTER_KEEP = 1_000
DEAD_LETTER_RAW_CHARS = 1 << 16


def query(
    store: AdvisoryStore, q: AdvisoryQuery, offset: int = 0, limit: int | None = 50
) -> list[AdvisoryRecord]:
    """The records matching *q*, newest first, one page."""
    out: list[AdvisoryRecord] = []
    skipped = 0
    for rec in store.iter_newest(q.since, q.until):
        if not q.matches(rec):
            continue
        if skipped < offset:
            skipped += 1
            continue
        out.append(rec)
        if limit is not None and len(out) >= limit:
            break
    return out


def _apply(rec: AdvisoryRecord, fields: dict[str, Any]) -> AdvisoryRecord:
    unknown = set(fields) - set(_MUTABLE)
    if unknown:
        raise StoreError(f"not updatable: {', '.join(sorted(unknown))}")
    return rec.model_copy(update=fields)


class MemoryStore:
    """Advisories in a dict (the embedded default): lost when the process ends."""

    def __init__(self) -> None:
        self._records: dict[str, AdvisoryRecord] = {}
        self._rejected: list[RejectedEntry] = []
        self._dead: list[DeadLetter] = []
        self._patients: dict[str, dict[str, datetime]] = {}
        self.stream: list[str] = []

    def put(self, record: AdvisoryRecord) -> bool:
        if record.id in self._records:
            return False
        self._records[record.id] = record
        return True

    def get(self, advisory_id: str) -> AdvisoryRecord | None:
        return self._records.get(advisory_id)

    def add_advisory(self, record: AdvisoryRecord, patient_keys: list[str]) -> bool:
        if not self.put(record):
            return False
        if patient_keys:
            self.index_patient(patient_keys, record.id, record.received_at)
        self.publish(record)
        return True

    def update(self, advisory_id: str, **fields: Any) -> None:
        rec = self._records.get(advisory_id)
        if rec is None:
            raise StoreError("no such advisory")
        self._records[advisory_id] = _apply(rec, fields)

    def update_many(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        for advisory_id, fields in items:
            self.update(advisory_id, **fields)

    def dispose(self, advisory_id: str, disposition: Disposition) -> AdvisoryRecord:
        rec = self._records.get(advisory_id)
        if rec is None:
            raise StoreError("no such advisory")
        update: dict[str, Any] = {"audit": [*rec.audit, disposition]}
        if disposition.kind == "decision":  # a protocolled entry leaves the disposition
            update["disposition"] = disposition.state
        rec = rec.model_copy(update=update)
        self._records[advisory_id] = rec
        return rec

    def iter_newest(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[AdvisoryRecord]:
        for rec in sorted(self._records.values(), key=lambda r: r.received_at, reverse=True):
            if (since is None or rec.received_at >= since) and (
                until is None or rec.received_at < until
            ):
                yield rec

    def publish(self, record: AdvisoryRecord) -> None:
        self.stream.append(record.flags_json_text())
        del self.stream[:-10000]

    def keep_rejected(self, entry: RejectedEntry) -> None:
        self._rejected.append(entry.budgeted())
        del self._rejected[:-REJECTED_KEEP]

    def rejected(self, limit: int = 100, offset: int = 0) -> list[RejectedEntry]:
        end = len(self._rejected) - max(0, offset)
        return list(reversed(self._rejected[max(0, end - limit) : max(0, end)]))

    def keep_dead_letter(self, entry: DeadLetter) -> None:
        self._dead.append(entry)
        del self._dead[:-DEAD_LETTER_KEEP]

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return list(reversed(self._dead[-limit:]))

    def index_patient(self, patient_keys: list[str], advisory_id: str, at: datetime) -> None:
        for key in patient_keys:
            self._patients.setdefault(_sha(key), {})[advisory_id] = at

    def patient_advisories(self, patient_keys: list[str], since: datetime) -> list[str]:
        found: dict[str, datetime] = {}
        for key in patient_keys:
            found.update(self._patients.get(_sha(key), {}))
        return sorted((i for i, at in found.items() if at >= since), key=lambda i: found[i])

    def revise(
        self, advisory_id: str, result: CheckResult, raw_out: str, note: Disposition
    ) -> AdvisoryRecord:
        rec = self._records.get(advisory_id)
        if rec is None:
            raise StoreError("no such advisory")
        rec = rec.model_copy(
            update={
                "result": result,
                "raw_out": raw_out,
                "revision": rec.revision + 1,
                "delivery": "pending",
                "delivery_attempts": 0,
                "delivery_error": "",
                "audit": [*rec.audit, note],
            }
        )
        self._records[advisory_id] = rec
        return rec

    def purge(self, before: datetime) -> int:
        self._rejected = [r for r in self._rejected if r.received_at >= before]
        self._dead = [d for d in self._dead if d.received_at >= before]
        # A copy: serve's daily purge runs in a thread while the worker thread adds records.
        old = [k for k, r in list(self._records.items()) if r.received_at < before]
        for k in old:
            self._records.pop(k, None)
        return len(old)


class MemoryDedup:
    """The resend table in memory: (MSH-3, MSH-4, MSH-10) -> the ACK we gave."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self._acks: dict[str, bytes] = {}
        self._max = max_entries

    def get(self, key: str) -> bytes | None:
        return self._acks.get(key)

    def set(self, key: str, ack: bytes, ttl: int) -> None:
        if len(self._acks) >= self._max:
            self._acks.pop(next(iter(self._acks)))
        self._acks[key] = ack

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [self._acks.get(k) for k in keys]

    def set_many(self, items: list[tuple[str, bytes]], ttl: int) -> None:
        for key, ack in items:
            self.set(key, ack, ttl)


PATIENT_INDEX_TTL = 7 * 24 * 3600  # seconds a patient's advisory index lives (re-checks)

# put / add_advisory: KEYS = record hash, index, stream, patient indexes...; ARGV = id, score
# (epoch seconds), stream entry (JSON; "" for none), stream max length, patient index TTL,
# record JSON, then the mutable fields as name, value pairs. Atomic: written whole or not at all.
_ADD_FUNCTION = """
local function add(K, A)
  if redis.call('HSETNX', K[1], 'record', A[6]) == 0 then return 0 end
  if #A > 6 then redis.call('HSET', K[1], unpack(A, 7)) end
  redis.call('ZADD', K[2], A[2], A[1])
  if redis.call('HGET', K[1], 'delivery') == 'pending' then
    redis.call('ZADD', K[4], A[2], A[1])
  end
  for i = 5, #K do
    redis.call('ZADD', K[i], A[2], A[1])
    redis.call('EXPIRE', K[i], A[5])
  end
  if A[3] ~= '' then
    redis.call('XADD', K[3], 'MAXLEN', '~', A[4], '*', 'advisory', A[3])
  end
  return 1
end
"""
# One record: KEYS and ARGV as _add_call builds them.
_ADD_ADVISORY = _ADD_FUNCTION + "return add(KEYS, ARGV)\n"
# Several records, then keys to delete when they still hold a token (patient locks), in one
# script (one command of the client's instead of one per record and lock). KEYS: each record's
# keys in turn, then the keys to release. ARGV[1]: the number of records; then per record the
# number of its keys, the number of its arguments and its arguments; then each key's token.
_ADD_MANY = (
    _ADD_FUNCTION
    + """
local out = {}
local k, a = 1, 2
for r = 1, tonumber(ARGV[1]) do
  local nk, na = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local K, A = {}, {}
  for i = 1, nk do K[i] = KEYS[k + i - 1] end
  for i = 1, na do A[i] = ARGV[a + 1 + i] end
  out[r] = add(K, A)
  k, a = k + nk, a + 2 + na
end
for i = k, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[a] then redis.call('DEL', KEYS[i]) end
  a = a + 1
end
return out
"""
)


def _ts(dt: datetime) -> float:
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


class RedisStore:
    """Advisories, resend table and history in Redis (redis-py client, or fakeredis in tests)."""

    def __init__(self, client: Any, prefix: str = "oc:", stream_maxlen: int = 100_000) -> None:
        self.r = client
        self.p = prefix
        self.stream_maxlen = stream_maxlen

    # -- advisories ----------------------------------------------------------------------------
    def _key(self, advisory_id: str) -> str:
        return f"{self.p}adv:{advisory_id}"

    def put(self, record: AdvisoryRecord) -> bool:
        # The add_advisory script without stream entry or patient index: a worker or Redis
        # dying half-way never leaves a record without its advisory (raw_out) and delivery state.
        with redis_errors:
            keys, args = self._add_call(record, [], stream=False)
            return bool(self.r.eval(_ADD_ADVISORY, len(keys), *keys, *args))

    def add_advisory(self, record: AdvisoryRecord, patient_keys: list[str]) -> bool:
        """One round trip, atomic (a Lua script): see queue_add_advisory."""
        with redis_errors:
            keys, args = self._add_call(record, patient_keys)
            return bool(self.r.eval(_ADD_ADVISORY, len(keys), *keys, *args))

    def add_many(
        self,
        entries: list[tuple[AdvisoryRecord, list[str]]],
        release: list[tuple[str, bytes]] | None = None,
    ) -> list[bool]:
        """add_advisory() of each (record, patient identifiers), then the keys of *release*
        deleted where they still hold their token (patient locks): one command, atomic.
        True for each record that was new."""
        keys: list[str] = []
        args: list[Any] = [len(entries)]
        for record, patient_keys in entries:
            k, a = self._add_call(record, patient_keys)
            keys += k
            args += [len(k), len(a), *a]
        for name, token in release or []:
            keys.append(name)
            args.append(token)
        if not keys:
            return []
        with redis_errors:
            replies = self.r.eval(_ADD_MANY, len(keys), *keys, *args)
        return [bool(r) for r in replies]

    def queue_add_advisory(
        self, pipe: Any, record: AdvisoryRecord, patient_keys: list[str]
    ) -> None:
        """Queue add_advisory() on a redis-py pipeline of this store's client; its reply (1 new,
        0 present already) comes with the pipeline's. The record, its delivery state and
        advisory (raw_out), the index, the patient index and the stream entry are written
        together or not at all, so a worker dying half-way leaves nothing to repair."""
        keys, args = self._add_call(record, patient_keys)
        pipe.eval(_ADD_ADVISORY, len(keys), *keys, *args)  # EVAL: no SCRIPT EXISTS round trip

    def _add_call(
        self, record: AdvisoryRecord, patient_keys: list[str], stream: bool = True
    ) -> tuple[list[str], list[Any]]:
        mutable = self._mutable_fields(record.model_dump(mode="json", include=set(_MUTABLE)))
        keys = [
            self._key(record.id),
            f"{self.p}adv:index",
            f"{self.p}advisories",
            f"{self.p}adv:pending",
            *(f"{self.p}patadv:{_sha(k)}" for k in patient_keys),
        ]
        entry = record.flags_json_text() if stream else ""
        args: list[Any] = [
            record.id,
            _ts(record.received_at),
            entry,
            self.stream_maxlen,
            PATIENT_INDEX_TTL,
            record.model_dump_json(exclude=set(_MUTABLE) | {"audit"}),
        ]
        for name, value in mutable.items():
            args += [name, value]
        return keys, args

    @staticmethod
    def _mutable_fields(values: dict[str, Any]) -> dict[str, str]:
        return {k: "" if v is None else str(v) for k, v in values.items()}

    def get(self, advisory_id: str) -> AdvisoryRecord | None:
        with redis_errors:
            pipe = self.r.pipeline(transaction=False)
            pipe.hgetall(self._key(advisory_id))
            pipe.lrange(f"{self._key(advisory_id)}:audit", 0, -1)
            fields, audit = pipe.execute()
            return self._load(fields, audit) if fields else None

    def _load(self, fields: dict[bytes, bytes], audit: list[bytes]) -> AdvisoryRecord | None:
        f = {k.decode(): v.decode("utf-8") for k, v in fields.items()}
        if "record" not in f:
            return None
        data = json.loads(f["record"])
        for name in _MUTABLE:
            if name in f and f[name] != "":
                data[name] = f[name]
        data["audit"] = [json.loads(a) for a in audit]
        return AdvisoryRecord.model_validate(data)

    def update(self, advisory_id: str, **fields: Any) -> None:
        self.update_many([(advisory_id, fields)])

    def update_many(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        with redis_errors:
            pipe = self.r.pipeline(transaction=False)
            self.queue_update_many(pipe, items)
            pipe.execute()

    def queue_update_many(self, pipe: Any, items: list[tuple[str, dict[str, Any]]]) -> None:
        """update_many's writes, added to *pipe* (the caller executes it)."""
        for advisory_id, fields in items:
            unknown = set(fields) - set(_MUTABLE)
            if unknown:
                raise StoreError(f"not updatable: {', '.join(sorted(unknown))}")
            values = {
                k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in fields.items()
            }
            pipe.hset(self._key(advisory_id), mapping=self._mutable_fields(values))
            state = fields.get("delivery")
            if state in ("undelivered", "not-sent"):
                pipe.sadd(f"{self.p}adv:undelivered", advisory_id)
            elif state is not None:
                pipe.srem(f"{self.p}adv:undelivered", advisory_id)
            if state == "pending":  # a retry keeps its place; a resend queues at its time
                pipe.zadd(f"{self.p}adv:pending", {advisory_id: time.time()}, nx=True)
            elif state is not None:
                pipe.zrem(f"{self.p}adv:pending", advisory_id)

    def dispose(self, advisory_id: str, disposition: Disposition) -> AdvisoryRecord:
        with redis_errors:
            key = self._key(advisory_id)
            if not self.r.hexists(key, "record"):
                raise StoreError("no such advisory")
            pipe = self.r.pipeline(transaction=True)
            pipe.rpush(f"{key}:audit", disposition.model_dump_json())
            if disposition.kind == "decision":  # a protocolled entry leaves the disposition
                pipe.hset(key, "disposition", disposition.state)
            pipe.execute()
            rec = self.get(advisory_id)
            assert rec is not None
            return rec

    def iter_newest(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[AdvisoryRecord]:
        with redis_errors:
            high: str | float = "+inf" if until is None else f"({_ts(until)}"
            low: str | float = "-inf" if since is None else _ts(since)
            start, page = 0, 200
            while True:
                ids = self.r.zrevrangebyscore(
                    f"{self.p}adv:index", high, low, start=start, num=page
                )
                if not ids:
                    return
                pipe = self.r.pipeline(transaction=False)
                for i in ids:
                    key = self._key(i.decode())
                    pipe.hgetall(key)
                    pipe.lrange(f"{key}:audit", 0, -1)
                replies = pipe.execute()
                for fields, audit in zip(replies[::2], replies[1::2], strict=True):
                    rec = self._load(fields, audit) if fields else None
                    if rec is not None:
                        yield rec
                start += page

    def undelivered_ids(self) -> list[str]:
        """Ids of the advisories the ordering system did not get: undelivered and not-sent."""
        with redis_errors:
            return sorted(i.decode() for i in self.r.smembers(f"{self.p}adv:undelivered"))

    def pending_ids(self, limit: int = 10_000) -> list[tuple[str, float]]:
        """The oldest *limit* advisories waiting for delivery: (id, epoch seconds queued)."""
        with redis_errors:
            found = self.r.zrange(f"{self.p}adv:pending", 0, limit - 1, withscores=True)
            return [(i.decode(), float(s)) for i, s in found]

    def delivery_fields_of(self, ids: list[str]) -> list[dict[str, str]]:
        """delivery, delivery_attempts, delivery_error and destination of each id (no patient
        data: the record itself is not read)."""
        with redis_errors:
            names = ("delivery", "delivery_attempts", "delivery_error", "destination")
            pipe = self.r.pipeline(transaction=False)
            for i in ids:
                pipe.hmget(self._key(i), names)
            return [
                {
                    n: (v.decode("utf-8", "replace") if v is not None else "")
                    for n, v in zip(names, row, strict=True)
                }
                for row in pipe.execute()
            ]

    def publish(self, record: AdvisoryRecord) -> None:
        with redis_errors:
            self.r.xadd(
                f"{self.p}advisories",
                {"advisory": record.flags_json_text()},
                maxlen=self.stream_maxlen,
                approximate=True,
            )

    def keep_rejected(self, entry: RejectedEntry) -> None:
        with redis_errors:
            pipe = self.r.pipeline(transaction=False)
            pipe.lpush(f"{self.p}rejected", entry.budgeted().model_dump_json())
            pipe.ltrim(f"{self.p}rejected", 0, REJECTED_KEEP - 1)
            pipe.execute()

    def rejected(self, limit: int = 100, offset: int = 0) -> list[RejectedEntry]:
        with redis_errors:
            start = max(0, offset)
            return [
                RejectedEntry.model_validate_json(v)
                for v in self.r.lrange(f"{self.p}rejected", start, start + limit - 1)
            ]

    def keep_dead_letter(self, entry: DeadLetter) -> None:
        with redis_errors:
            pipe = self.r.pipeline(transaction=False)
            self.queue_dead_letter(pipe, entry)
            pipe.execute()

    def queue_dead_letter(self, pipe: Any, entry: DeadLetter) -> None:
        """keep_dead_letter()'s writes, added to *pipe* (the caller executes it)."""
        pipe.lpush(f"{self.p}deadletter", entry.model_dump_json())
        pipe.ltrim(f"{self.p}deadletter", 0, DEAD_LETTER_KEEP - 1)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with redis_errors:
            return [
                DeadLetter.model_validate_json(v)
                for v in self.r.lrange(f"{self.p}deadletter", 0, limit - 1)
            ]

    def index_patient(self, patient_keys: list[str], advisory_id: str, at: datetime) -> None:
        with redis_errors:
            pipe = self.r.pipeline(transaction=False)
            for key in patient_keys:
                name = f"{self.p}patadv:{_sha(key)}"
                pipe.zadd(name, {advisory_id: _ts(at)})
                pipe.expire(name, PATIENT_INDEX_TTL)
            pipe.execute()

    def patient_advisories(self, patient_keys: list[str], since: datetime) -> list[str]:
        with redis_errors:
            pipe = self.r.pipeline(transaction=False)
            for key in patient_keys:
                pipe.zrangebyscore(f"{self.p}patadv:{_sha(key)}", _ts(since), "+inf")
            ids: list[str] = []
            for found in pipe.execute():
                ids.extend(i.decode() for i in found if i.decode() not in ids)
            return ids

    def revise(
        self, advisory_id: str, result: CheckResult, raw_out: str, note: Disposition
    ) -> AdvisoryRecord:
        with redis_errors:
            rec = self.get(advisory_id)
            if rec is None:
                raise StoreError("no such advisory")
            revised = rec.model_copy(update={"result": result, "revision": rec.revision + 1})
            key = self._key(advisory_id)
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(
                key,
                mapping={
                    "record": revised.model_dump_json(exclude=set(_MUTABLE) | {"audit"}),
                    "raw_out": raw_out,
                    "delivery": "pending",
                    "delivery_attempts": "0",
                    "delivery_error": "",
                },
            )
            pipe.rpush(f"{key}:audit", note.model_dump_json())
            pipe.srem(f"{self.p}adv:undelivered", advisory_id)
            pipe.zadd(f"{self.p}adv:pending", {advisory_id: time.time()}, nx=True)
            pipe.execute()
            out = self.get(advisory_id)
            assert out is not None
            return out

    def purge(self, before: datetime) -> int:
        with redis_errors:
            kept = [
                v
                for v in self.r.lrange(f"{self.p}rejected", 0, -1)
                if RejectedEntry.model_validate_json(v).received_at >= before
            ]
            dead = [
                v
                for v in self.r.lrange(f"{self.p}deadletter", 0, -1)
                if DeadLetter.model_validate_json(v).received_at >= before
            ]
            pipe = self.r.pipeline(transaction=True)
            pipe.delete(f"{self.p}rejected")
            if kept:
                pipe.rpush(f"{self.p}rejected", *kept)
            pipe.delete(f"{self.p}deadletter")
            if dead:
                pipe.rpush(f"{self.p}deadletter", *dead)
            pipe.execute()
            # The advisory stream too: its entry ids are milliseconds since the epoch.
            self.r.xtrim(f"{self.p}advisories", minid=int(_ts(before) * 1000), approximate=False)
            ids = self.r.zrangebyscore(f"{self.p}adv:index", "-inf", f"({_ts(before)}")
            if not ids:
                return 0
            pipe = self.r.pipeline(transaction=False)
            for i in ids:
                key = self._key(i.decode())
                pipe.delete(key, f"{key}:audit")
                pipe.srem(f"{self.p}adv:undelivered", i)
            pipe.zrem(f"{self.p}adv:index", *ids)
            pipe.zrem(f"{self.p}adv:pending", *ids)
            pipe.execute()
            return len(ids)

    # -- resend table (dedup) ------------------------------------------------------------------
    def dedup_get(self, key: str) -> bytes | None:
        with redis_errors:
            value: bytes | None = self.r.get(f"{self.p}dedup:{key}")
            return value

    def dedup_set(self, key: str, ack: bytes, ttl: int) -> None:
        with redis_errors:
            self.r.set(f"{self.p}dedup:{key}", ack, ex=ttl)

    def dedup_get_many(self, keys: list[str]) -> list[bytes | None]:
        with redis_errors:
            if not keys:
                return []
            values: list[bytes | None] = self.r.mget([f"{self.p}dedup:{k}" for k in keys])
            return values

    def dedup_set_many(self, items: list[tuple[str, bytes]], ttl: int) -> None:
        with redis_errors:
            if len(items) == 1:
                self.dedup_set(items[0][0], items[0][1], ttl)
                return
            pipe = self.r.pipeline(transaction=False)
            self.queue_dedup_set_many(pipe, items, ttl)
            pipe.execute()

    def queue_dedup_set_many(self, pipe: Any, items: list[tuple[str, bytes]], ttl: int) -> None:
        """dedup_set_many's commands, added to *pipe* (the caller's transaction)."""
        for key, ack in items:
            pipe.set(f"{self.p}dedup:{key}", ack, ex=ttl)


class RedisDedup:
    """The resend table in Redis, with the same interface as MemoryDedup."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    def get(self, key: str) -> bytes | None:
        return self.store.dedup_get(key)

    def set(self, key: str, ack: bytes, ttl: int) -> None:
        self.store.dedup_set(key, ack, ttl)

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        return self.store.dedup_get_many(keys)

    def set_many(self, items: list[tuple[str, bytes]], ttl: int) -> None:
        self.store.dedup_set_many(items, ttl)


class RedisHistory:
    """Patient imaging history in Redis sets, keyed by a hash of each patient identifier."""

    def __init__(self, client: Any, prefix: str = "oc:", ttl: int = 400 * 24 * 3600) -> None:
        self.r = client
        self.p = prefix
        self.ttl = ttl

    def _key(self, patient_key: str) -> str:
        return f"{self.p}hist:{_sha(patient_key)}"

    def add(self, patient_keys: list[str], entry: HistoryEntry) -> None:
        with redis_errors:
            body = entry.model_dump_json()
            pipe = self.r.pipeline(transaction=False)
            for key in patient_keys:
                pipe.sadd(self._key(key), body)
                pipe.expire(self._key(key), self.ttl)
            pipe.execute()

    def entries(self, patient_keys: list[str]) -> list[HistoryEntry]:
        with redis_errors:
            if not patient_keys:
                return []
            return self.parse_entries(self.r.sunion([self._key(k) for k in patient_keys]))

    def keys_of(self, patient_keys: list[str]) -> list[str]:
        """The Redis keys of the history of the patient known by *patient_keys* (a SUNION's)."""
        return [self._key(k) for k in patient_keys]

    @staticmethod
    def parse_entries(members: Any) -> list[HistoryEntry]:
        return sorted(
            (HistoryEntry.model_validate_json(m) for m in members),
            key=lambda e: (e.at is None, e.at or datetime.min, e.control_id),
        )


def purge_expired(store: AdvisoryStore, retention_days: int, now: datetime | None = None) -> int:
    """Delete advisories and kept refused messages received more than *retention_days* days
    before *now* (default: the current time); returns how many advisories went."""
    return store.purge((now or datetime.now(UTC)) - timedelta(days=retention_days))


def delivery_fields(
    state: Delivery, attempts: int, error: str = "", destination: str = ""
) -> dict[str, Any]:
    """The fields mark_delivery() sets (for store.update or store.update_many)."""
    fields: dict[str, Any] = {
        "delivery": state,
        "delivery_attempts": attempts,
        "delivery_error": error,
    }
    if destination:
        fields["destination"] = destination
    if state == "delivered":
        fields["delivered_at"] = datetime.now(UTC)
    return fields


def mark_delivery(
    store: AdvisoryStore,
    advisory_id: str,
    state: Delivery,
    attempts: int,
    error: str = "",
    destination: str = "",
) -> None:
    store.update(advisory_id, **delivery_fields(state, attempts, error, destination))
