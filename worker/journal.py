"""The journal of accepted messages: none is lost between the broker and a worker (Redis mode).

Celery's Redis transport takes a message off the queue (BRPOP) and records it as unacknowledged
with a second command; if Redis crashes between the two, the message is gone although the
listener ACKed it (kombu issue #305; the chaos run, bench/chaos.py, hits it). So:

- the listener writes each message here in the transaction that queues it (`journaled_direct`),
  and answers AA only once it is done;
- the worker removes it once processed (`Journal.done`);
- `ordercheck serve` queues again what is still here after `grace` seconds while the queue is
  empty (`requeue_stale`). Processing is idempotent, so a message queued twice gives one
  advisory; a message only ever waits here, it is never processed from here.
- a poison message (one whose run kills the worker: task time limit, pool process killed) would
  come back forever, by the broker's redelivery or by the sweep. So each run of a message is
  counted when it starts (`start`) and the count is cleared when it finishes, or taken back when
  it fails with an exception (the worker lived: `undo`). A batch in which a message was run
  before runs again one message per task; a message started `max_attempts` times is set aside
  (`dead_letter`: listed for review by `ordercheck dead-letters`, never run again).

Redis layout (prefix "oc:"): oc:inflight hash, message key -> JSON [message as Latin-1 text,
received_at]; oc:inflight:at sorted set, message key by the time it was last queued;
oc:attempts hash, message key -> runs started and not finished. The message key is a hash of
the message bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from worker.broker import task_message
from worker.errors import StoreError, cause_name
from worker.store import redis_errors

log = logging.getLogger("ordercheck.journal")

Messages = list[tuple[bytes, float]]  # (message bytes, received_at epoch seconds)


# Journals messages and queues them: KEYS the journal's hash, its index and the queue; ARGV[1]
# the time, ARGV[2] their own task, ARGV[3] the id of a task to merge them into ('' for none) and
# ARGV[4] that task with them added, then (key, entry) pairs. The task to merge into must still be
# the queue's newest (LPUSH end: Celery takes tasks from the other end). Returns {1 when merged,
# the queue's length}.
_ADD_AND_QUEUE = """
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
for i = 5, #ARGV, 2 do redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i]) end
if ARGV[3] ~= '' then
  local head = redis.call('LINDEX', KEYS[3], 0)
  if head and string.find(head, ARGV[3], 1, true) then
    redis.call('LSET', KEYS[3], 0, ARGV[4])
    return {1, redis.call('LLEN', KEYS[3])}
  end
end
return {0, redis.call('LPUSH', KEYS[3], ARGV[2])}
"""
# HINCRBY of several fields of one hash by ARGV[1], in one command (redis-py spends ~13 us of
# CPU per command, in a pipeline too); returns the new values.
_HINCRBY_MANY = """
local out = {}
for i = 2, #ARGV do out[i - 1] = redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[1]) end
return out
"""


def message_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


class Journal:
    """Accepted messages not processed yet, in Redis."""

    def __init__(self, client: Any, prefix: str = "oc:") -> None:
        self.r = client
        self.hash = f"{prefix}inflight"
        self.index = f"{prefix}inflight:at"
        self.tries = f"{prefix}attempts"

    def add(
        self,
        messages: Messages,
        push: tuple[str, str] | None = None,
        also: Callable[[Any], None] | None = None,
        merge: tuple[str, str] | None = None,
    ) -> int:
        """Record *messages* (one round trip, all or nothing); raises when Redis did not.

        push: (list key, value) to LPUSH in the same transaction: the broker message that
        queues them (worker/broker.py), so they are queued if and only if journaled.
        merge: (task id, value): when the task of that id is still the newest in the list (its
        head: not taken by a worker, whose Celery pops from the other end), it is replaced by
        *value* (that task with these messages added) instead of pushing a task of their own.
        also: adds more commands to the same transaction (the ACKs for resends).
        Returns the length of that list after the push (0 without *push*); negative when the
        messages went into the merged task."""
        with redis_errors:
            now = time.time()
            keys = [message_key(d) for d, _ in messages]
            entries = [json.dumps([d.decode("latin-1"), at]) for d, at in messages]
            pipe = self.r.pipeline(transaction=True)
            if push is None:
                pipe.hset(self.hash, mapping=dict(zip(keys, entries, strict=True)))
                pipe.zadd(self.index, dict.fromkeys(keys, now))
            else:
                fields = [x for pair in zip(keys, entries, strict=True) for x in pair]
                merge_id, merged = merge or ("", "")
                pipe.eval(
                    _ADD_AND_QUEUE,
                    3,
                    self.hash,
                    self.index,
                    push[0],
                    now,
                    push[1],
                    merge_id,
                    merged,
                    *fields,
                )
            if also is not None:
                also(pipe)
            replies = pipe.execute()
            if push is None:
                return 0
            went_into, length = replies[0]
            return -int(length) if went_into else int(length)

    def done(self, messages: list[bytes]) -> None:
        """Forget *messages* (processed); never raises: what stays is only queued again."""
        if not messages:
            return
        try:
            with redis_errors:
                pipe = self.r.pipeline(transaction=True)
                self.queue_done(pipe, messages)
                pipe.execute()
        except StoreError as exc:
            log.warning("could not clear processed messages from the journal: %s", cause_name(exc))

    def queue_done(self, pipe: Any, messages: list[bytes]) -> None:
        """done()'s writes, added to *pipe* (the caller executes it)."""
        if messages:
            keys = [message_key(d) for d in messages]
            pipe.hdel(self.hash, *keys)
            pipe.zrem(self.index, *keys)
            pipe.hdel(self.tries, *keys)

    # -- poison messages -------------------------------------------------------------------------
    def attempts(self, messages: list[bytes]) -> list[int]:
        """Runs of each message started and not finished so far."""
        with redis_errors:
            if not messages:
                return []
            values = self.r.hmget(self.tries, [message_key(d) for d in messages])
            return [int(v) if v is not None else 0 for v in values]

    def start(self, messages: list[bytes]) -> list[int]:
        """Count a run of each message, before it runs (one round trip); returns each one's
        runs started and not finished, this one included."""
        return self._add(messages, 1)

    def undo(self, messages: list[bytes]) -> None:
        """Take back start() for runs that failed with an exception (the worker lived, so it
        was not the message that killed it); never raises."""
        try:
            self._add(messages, -1)
        except StoreError as exc:
            log.warning("could not take back a run count: %s", cause_name(exc))

    def _add(self, messages: list[bytes], n: int) -> list[int]:
        with redis_errors:
            if not messages:
                return []
            keys = [message_key(d) for d in messages]
            return [int(v) for v in self.r.eval(_HINCRBY_MANY, 1, self.tries, n, *keys)]

    def dead_letter(self, messages: list[bytes], also: Callable[[Any], None] | None = None) -> None:
        """Take *messages* out of the journal for good (the sweep no longer queues them), with
        *also*'s writes (the dead-letter entries for review) in the same transaction."""
        with redis_errors:
            if not messages:
                return
            pipe = self.r.pipeline(transaction=True)
            self.queue_done(pipe, messages)
            if also is not None:
                also(pipe)
            pipe.execute()

    def size(self) -> int:
        with redis_errors:
            return int(self.r.zcard(self.index))

    def take_stale(self, grace: float, limit: int = 500) -> Messages:
        """Messages queued more than *grace* seconds ago and not processed since; they are
        marked queued now (the caller queues them again)."""
        with redis_errors:
            now = time.time()
            keys = [
                k.decode()
                for k in self.r.zrangebyscore(self.index, "-inf", now - grace, start=0, num=limit)
            ]
            if not keys:
                return []
            values = self.r.hmget(self.hash, keys)
            out: Messages = []
            pipe = self.r.pipeline(transaction=True)
            for key, value in zip(keys, values, strict=True):
                if value is None:  # processed meanwhile
                    pipe.zrem(self.index, key)
                    continue
                text, at = json.loads(value)
                out.append((text.encode("latin-1"), float(at)))
                pipe.zadd(self.index, {key: now})
            pipe.execute()
            return out


def journaled_direct(
    journal: Journal,
    task: str,
    queue: str,
    time_limit: int | None,
    on_queued: Callable[[int], None] | None = None,
    record_acks: Callable[[Any, list[tuple[str, bytes]]], None] | None = None,
    merge_when: Callable[[], bool] | None = None,
    max_task_messages: int = 1,
) -> Callable[[Messages, list[tuple[str, bytes]]], None]:
    """An enqueue that journals the messages and queues them as one Celery task (*task* on
    *queue*) in a single Redis transaction (see worker/broker.py); raises if it failed.
    on_queued: called with the queue's length after each push (the workers' backlog).
    record_acks(pipe, acks): adds the writes of the ACKs for resends to that transaction.
    merge_when: while it says so (the workers are behind), the messages join the task this
    enqueue queued last, if it still waits at the queue's newest end and would hold at most
    *max_task_messages*: a listener batch holds at most one message per connection, and
    Celery's cost is per task (about 1.6 ms in a pool process, 1 ms in its main process)."""
    last: list[Any] = []  # [task id, its messages] of the task queued last
    lock = threading.Lock()

    def enqueue(messages: Messages, acks: list[tuple[str, bytes]] | None = None) -> None:
        batch = [[d.decode("latin-1"), at] for d, at in messages]
        also = None
        if acks and record_acks is not None:

            def also(pipe: Any) -> None:
                record_acks(pipe, acks)

        with lock:
            own_id = str(uuid.uuid4())
            own = task_message(task, [batch], queue, time_limit, own_id)
            merge = None
            if (
                last
                and merge_when is not None
                and len(last[1]) + len(batch) <= max_task_messages
                and merge_when()
            ):
                merged_id = str(uuid.uuid4())
                merged_batch = last[1] + batch
                merge = (last[0], task_message(task, [merged_batch], queue, time_limit, merged_id))
            length = journal.add(messages, push=(queue, own), also=also, merge=merge)
            if length < 0 and merge is not None:
                last[:] = [merged_id, merged_batch]
            else:
                last[:] = [own_id, batch]
        if on_queued is not None:
            on_queued(abs(length))

    return enqueue


def requeue_stale(
    journal: Journal,
    enqueue_many: Callable[[Messages], None],
    grace: float,
    queue_length: Callable[[], int],
) -> int:
    """Queue again the journal's messages older than *grace* seconds, when the broker's queue
    is empty (a backlog is waiting, not lost). Returns how many were queued."""
    if queue_length() > 0:
        return 0
    stale = journal.take_stale(grace)
    if stale:
        enqueue_many(stale)
        log.warning("queued %d accepted messages again that no worker processed", len(stale))
    return len(stale)
