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
import time
from collections.abc import Callable
from typing import Any

from worker.broker import task_message
from worker.errors import StoreError, cause_name
from worker.store import redis_errors

log = logging.getLogger("ordercheck.journal")

Messages = list[tuple[bytes, float]]  # (message bytes, received_at epoch seconds)


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
    ) -> int:
        """Record *messages* (one round trip, all or nothing); raises when Redis did not.

        push: (list key, value) to LPUSH in the same transaction: the broker message that
        queues them (worker/broker.py), so they are queued if and only if journaled.
        also: adds more commands to the same transaction (the ACKs for resends).
        Returns the length of that list after the push (0 without *push*)."""
        with redis_errors:
            now = time.time()
            keys = [message_key(d) for d, _ in messages]
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(
                self.hash,
                mapping={
                    key: json.dumps([d.decode("latin-1"), at])
                    for key, (d, at) in zip(keys, messages, strict=True)
                },
            )
            pipe.zadd(self.index, dict.fromkeys(keys, now))
            if push is not None:
                pipe.lpush(*push)
            if also is not None:
                also(pipe)
            replies = pipe.execute()  # HSET, ZADD[, LPUSH][, ...]
            return int(replies[2]) if push is not None else 0

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
) -> Callable[[Messages, list[tuple[str, bytes]]], None]:
    """An enqueue that journals the messages and queues them as one Celery task (*task* on
    *queue*) in a single Redis transaction (see worker/broker.py); raises if it failed.
    on_queued: called with the queue's length after each push (the workers' backlog).
    record_acks(pipe, acks): adds the writes of the ACKs for resends to that transaction."""

    def enqueue(messages: Messages, acks: list[tuple[str, bytes]] | None = None) -> None:
        batch = [[d.decode("latin-1"), at] for d, at in messages]
        also = None
        if acks and record_acks is not None:

            def also(pipe: Any) -> None:
                record_acks(pipe, acks)

        length = journal.add(
            messages, push=(queue, task_message(task, [batch], queue, time_limit)), also=also
        )
        if on_queued is not None:
            on_queued(length)

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
