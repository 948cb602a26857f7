"""The stores as the worker's pipeline uses them: patient locks, the history read with them,
advisories recorded with the locks' release, delivery states written together.

`Ledger` is the interface. `MemoryLedger` (the embedded default, the CLI) calls the store and
history one by one and has no locks: one process, one worker thread. `RedisLedger` makes each
step one round trip to Redis, whatever the number of messages, and take and record one command
(a Lua script for all the patients and records: redis-py spends about 13 us of CPU per command):

    take / hold   SET NX of each patient's lock, with the SUNION of its history (_TAKE)
    record        the add-advisory function of each record, then the release of each lock
                  (store.add_many)
    write         the delivery states (HSET ...), with the caller's writes (the journal's)

A patient lock is "oc:lock:{sha}" (the patient's first identifier, hashed), held with a random
token for at most LOCK_SECONDS, and released only by the token's holder.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from worker.errors import StoreError, cause_name
from worker.history import History
from worker.models import HistoryEntry
from worker.records import AdvisoryRecord
from worker.store import AdvisoryStore, RedisHistory, RedisStore, redis_errors

log = logging.getLogger("ordercheck.pipeline")

LOCK_SECONDS = 30  # a patient lock frees itself after this long (a killed worker)
# Deletes a lock only if it still holds our token (it may have expired and been taken since).
# Takes each patient's lock (SET NX EX) and reads its history (SUNION) in one script: one
# command of the client's per batch. KEYS: per patient its lock, then its history keys. ARGV[1]:
# the lock's seconds; then per patient its token and the number of its history keys. Returns per
# patient its history's members, or nil when another worker holds the lock.
_TAKE = """
local out = {}
local k = 1
for p = 1, (#ARGV - 1) / 2 do
  local token, nh = ARGV[2 * p], tonumber(ARGV[2 * p + 1])
  if redis.call('SET', KEYS[k], token, 'NX', 'EX', ARGV[1]) then
    out[p] = redis.call('SUNION', unpack(KEYS, k + 1, k + nh))
  else
    out[p] = false
  end
  k = k + 1 + nh
end
return out
"""
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Delivery states to write: (advisory id, fields), as store.update_many takes them.
Marks = list[tuple[str, dict[str, Any]]]
# (record, the patient's identifiers) to store with store.add_advisory.
Entries = list[tuple[AdvisoryRecord, list[str]]]


def lock_name(keys: list[str]) -> str:
    """The Redis key of the lock of the patient known by *keys*."""
    return "oc:lock:" + hashlib.sha256(sorted(keys)[0].encode()).hexdigest()[:32]


@dataclass(slots=True)
class PatientLock:
    """A patient lock held (or not) by this worker, and the history read when it was taken."""

    name: str = ""
    token: bytes | None = None  # ours, taken with SET NX: released with _UNLOCK
    waited: Any = None  # a redis-py Lock, taken after waiting for another worker's
    history: list[HistoryEntry] | None = None  # read under the lock; None: read it when needed
    released: bool = False


class Ledger(Protocol):
    batched: bool
    """Whether take() and record() serve several patients in one round trip each (the pipeline
    then checks the messages of a batch together)."""

    def hold(self, keys: list[str]) -> contextlib.AbstractContextManager[PatientLock]:
        """Hold the lock of the patient known by *keys* for one message, waiting for another
        worker's; the patient's history is read with it when it can be."""

    def take(self, patients: list[list[str]]) -> list[PatientLock | None]:
        """Take each patient's lock without waiting, and read its history with it; None for a
        patient another worker holds."""

    def record(self, entries: Entries, locks: list[PatientLock]) -> list[bool]:
        """store.add_advisory() of each (record, patient keys), releasing *locks*; True for each
        record that was new."""

    def release(self, lock: PatientLock) -> None:
        """Release *lock* if it is still held; never raises (an expired lock frees itself)."""

    def write(self, marks: Marks, also: Callable[[Any], None] | None = None) -> None:
        """store.update_many(*marks*), and also(transaction) for more writes of the caller's
        to go with them (the journal's, Redis mode only)."""


class MemoryLedger:
    """The store and history called one by one; no locks (one process, one worker thread)."""

    batched = False

    def __init__(self, store: AdvisoryStore, history: History) -> None:
        self.store = store
        self.history = history

    @contextlib.contextmanager
    def hold(self, keys: list[str]) -> Iterator[PatientLock]:
        yield PatientLock()

    def take(self, patients: list[list[str]]) -> list[PatientLock | None]:
        return [PatientLock() for _ in patients]

    def record(self, entries: Entries, locks: list[PatientLock]) -> list[bool]:
        return [self.store.add_advisory(record, keys) for record, keys in entries]

    def release(self, lock: PatientLock) -> None:
        lock.released = True

    def write(self, marks: Marks, also: Callable[[Any], None] | None = None) -> None:
        if also is not None:
            raise StoreError("no Redis transaction to add writes to in memory mode")
        if marks:
            self.store.update_many(marks)


class RedisLedger:
    """Store and history on one Redis client: each step one round trip (see the module)."""

    batched = True

    def __init__(self, client: Any, store: RedisStore, history: RedisHistory) -> None:
        self.r = client
        self.store = store
        self.history = history

    @contextlib.contextmanager
    def hold(self, keys: list[str]) -> Iterator[PatientLock]:
        if not keys:
            yield PatientLock()
            return
        [lock] = self.take([keys])
        if lock is None:  # another worker has this patient: wait for it (history read later)
            lock = PatientLock(lock_name(keys))
            with redis_errors:
                waited = self.r.lock(
                    lock.name, timeout=LOCK_SECONDS, sleep=0.01, blocking_timeout=LOCK_SECONDS
                )
                if waited.acquire():
                    lock.waited = waited
        try:
            yield lock
        finally:
            self.release(lock)

    def take(self, patients: list[list[str]]) -> list[PatientLock | None]:
        if not patients:
            return []
        locks = [PatientLock(lock_name(keys), uuid.uuid4().hex.encode()) for keys in patients]
        keys: list[str] = []
        args: list[Any] = [LOCK_SECONDS]
        for patient, lock in zip(patients, locks, strict=True):
            history = self.history.keys_of(patient)
            keys += [lock.name, *history]
            args += [lock.token, len(history)]
        with redis_errors:
            replies = self.r.eval(_TAKE, len(keys), *keys, *args)
        taken: list[PatientLock | None] = []
        for lock, members in zip(locks, replies, strict=True):
            if members is not None:
                lock.history = self.history.parse_entries(members)
                taken.append(lock)
            else:
                taken.append(None)
        return taken

    def record(self, entries: Entries, locks: list[PatientLock]) -> list[bool]:
        ours = [lock for lock in locks if lock.token is not None and not lock.released]
        if not entries and not ours:
            return []
        added = self.store.add_many(
            entries, [(lock.name, lock.token) for lock in ours if lock.token is not None]
        )
        for lock in ours:
            lock.released = True
        return added

    def release(self, lock: PatientLock) -> None:
        if lock.released:
            return
        lock.released = True
        try:
            with redis_errors:
                if lock.token is not None:
                    self.r.eval(_UNLOCK, 1, lock.name, lock.token)
                elif lock.waited is not None:
                    lock.waited.release()
        except StoreError as exc:  # expired: it frees itself after LOCK_SECONDS
            log.warning("patient lock release failed: %s", cause_name(exc))

    def write(self, marks: Marks, also: Callable[[Any], None] | None = None) -> None:
        if not marks and also is None:
            return
        with redis_errors:
            pipe = self.r.pipeline(transaction=False)
            self.store.queue_update_many(pipe, marks)
            if also is not None:
                also(pipe)
            pipe.execute()
