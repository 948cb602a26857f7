"""Celery tasks, thin: deserialise, call the pipeline, retry.

validate_batch: the messages the listener received together (one task for a burst; payload:
    a list of [raw bytes as Latin-1 text (lossless), received_at]).
validate: one received message (the same payload, alone; what earlier versions queued).
deliver: a retry of an advisory's delivery after a failed first attempt.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from datetime import UTC, datetime
from functools import cache
from typing import Any

from celery.exceptions import Reject

from worker.celery_app import app, settings
from worker.errors import cause_name
from worker.guideline import load_knowledge
from worker.hl7.parse import peek_msh
from worker.journal import Journal, message_key
from worker.pipeline import Processor
from worker.publish import Publisher
from worker.runtime import Stores, redis_client
from worker.store import DEAD_LETTER_RAW_CHARS, DeadLetter, RedisStore

log = logging.getLogger("ordercheck.tasks")
# Seconds to keep trying to queue a retry: half the task time limit, so the task ends first.
RETRY_QUEUE_WINDOW = settings.task_time_limit / 2


@cache
def processor() -> Processor:
    """The Processor of this worker process (built on first use, after the fork)."""
    stores = Stores(settings)

    def schedule(advisory_id: str, attempt: int, delay: float) -> None:
        deliver.apply_async((advisory_id, attempt), countdown=delay)

    return Processor(
        settings,
        load_knowledge(settings.code_map, protocols=settings.protocols_file),
        stores,
        Publisher(settings),
        schedule,
    )


def _done(messages: list[str]) -> None:
    """Clear processed messages from the listener's journal (worker/journal.py)."""
    if settings.redis_url and messages:
        Journal(redis_client(settings.redis_url)).done([m.encode("latin-1") for m in messages])


def _guard(journal: Journal, messages: list[tuple[str, float]]) -> list[tuple[str, float]] | None:
    """The messages of a task to run now, their runs counted (worker/journal.py, poison
    messages); None when the batch was queued again one message per task instead.

    A batch in which a message was started before and never finished (its worker was killed)
    runs again one message per task, so a poison message is counted alone and the others are
    not held back by it; a message started max_attempts times is set aside as a dead letter."""
    datas = [m.encode("latin-1") for m, _ in messages]
    counts = journal.start(datas)  # one round trip: the count and this run
    if len(messages) > 1 and any(n > 1 for n in counts):
        journal.undo(datas)
        for message in messages:
            validate_batch.apply_async(([message],), retry=False)
        log.warning("a batch that did not finish runs again one message per task")
        return None
    dead = [i for i, n in enumerate(counts) if n > settings.max_attempts]
    if dead:
        _set_aside(journal, [(datas[i], messages[i][1], counts[i] - 1) for i in dead])
    live = [m for i, m in enumerate(messages) if i not in dead]
    if settings.chaos_kill_control_id and any(
        peek_msh(m.encode("latin-1")).control_id == settings.chaos_kill_control_id for m, _ in live
    ):
        os.kill(os.getpid(), signal.SIGKILL)  # the test hook: die as a poison message would
    return live


def _set_aside(journal: Journal, dead: list[tuple[bytes, float, int]]) -> None:
    """Dead-letter these (message, received_at, runs): out of the journal, kept for review."""
    store = processor().stores.store
    now = datetime.now(UTC)
    entries = [
        DeadLetter(
            key=message_key(data),
            control_id=peek_msh(data).control_id[:200],
            attempts=runs,
            reason=f"set aside after {runs} runs that did not finish (the worker was killed: "
            "task time limit or a crash)",
            received_at=datetime.fromtimestamp(at, UTC),
            dead_at=now,
            raw=data[:DEAD_LETTER_RAW_CHARS].decode("utf-8", errors="replace"),
            raw_bytes=len(data),
        )
        for data, at, runs in dead
    ]

    def also(pipe: Any) -> None:
        if isinstance(store, RedisStore):
            for entry in entries:
                store.queue_dead_letter(pipe, entry)

    journal.dead_letter([d for d, _, _ in dead], also)
    if not isinstance(store, RedisStore):
        for entry in entries:
            store.keep_dead_letter(entry)
    for entry in entries:
        log.error(
            "dead letter: a message killed its worker %d times",
            entry.attempts,
            extra={"control_id": entry.control_id},
        )


@app.task(name="ordercheck.validate", bind=True, max_retries=None, acks_late=True)
def validate(self: object, message: str, received_at: float) -> list[str]:
    if settings.redis_url:
        live = _guard(Journal(redis_client(settings.redis_url)), [(message, received_at)])
        if not live:
            return []
    try:
        ids = processor().process(message.encode("latin-1"), received_at)
    except Exception as exc:  # last resort: Redis or anything else failed, run again later
        log.error("validate failed: %s; retrying", cause_name(exc))
        if settings.redis_url:
            Journal(redis_client(settings.redis_url)).undo([message.encode("latin-1")])
        raise _retry(self, exc, countdown=2) from exc
    _done([message])
    return ids


@app.task(name="ordercheck.validate_batch", bind=True, max_retries=None, acks_late=True)
def validate_batch(self: object, messages: list[tuple[str, float]]) -> int:
    """Processor.process_batch; the messages processed leave the journal in the batch's last
    write. The messages that failed run again later in a task of their own (a message that
    always fails holds up no other); when that task cannot be queued either, the whole batch
    runs again (idempotent: what was done is not done twice).
    Returns the number of advisories (a count: the pool sends results to its parent)."""
    journal: Journal | None = None
    if settings.redis_url:
        journal = Journal(redis_client(settings.redis_url))
        live = _guard(journal, messages)
        if live is None or not live:
            return 0
        messages = live
    items = [(message.encode("latin-1"), received_at) for message, received_at in messages]
    on_done = None
    if journal is not None:

        def on_done(pipe: Any, positions: list[int]) -> None:  # in the batch's last write
            journal.queue_done(pipe, [items[i][0] for i in positions])

    ids, errors = processor().process_batch(items, on_done)
    if not errors:
        return len(ids)
    failed = [messages[i] for i in sorted(errors)]
    if journal is not None:  # they raised: the worker lived, it was not a poison message
        journal.undo([m.encode("latin-1") for m, _ in failed])
    error = next(iter(errors.values()))  # Redis or another dependency failed: run again later
    log.error(
        "validate failed: %s; retrying %d of %d messages",
        cause_name(error),
        len(failed),
        len(messages),
    )
    if len(failed) < len(messages):
        try:
            validate_batch.apply_async((failed,), countdown=2, retry=False)
            return len(ids)
        except Exception:  # last resort (the broker's errors): the whole batch runs again
            log.error("could not queue the failed messages again; retrying the batch")
    raise _retry(self, error, countdown=2) from error


@app.task(name="ordercheck.deliver", bind=True, max_retries=None, acks_late=True)
def deliver(self: object, advisory_id: str, attempt: int) -> bool:
    try:
        return processor().deliver(advisory_id, attempt)
    except Exception as exc:  # last resort: whatever failed, the delivery is tried again
        log.error("deliver failed: %s; retrying", cause_name(exc))
        raise _retry(self, exc, countdown=5) from exc


def _retry(task: Any, exc: Exception, countdown: float) -> Exception:
    """The exception that runs the task again in *countdown* seconds.

    Celery's retry queues a new message and acknowledges this one; when the broker is down it
    cannot queue the new one and rejects this one without requeueing (Reject(requeue=False)):
    the message would be lost. So the retry is tried again every *countdown* seconds for up to
    RETRY_QUEUE_WINDOW seconds (a Redis restart); after that this very message is requeued, or,
    with the broker still down, left unacknowledged for Redis to redeliver after the
    visibility timeout.
    """
    deadline = time.monotonic() + RETRY_QUEUE_WINDOW
    while True:
        try:
            retry: Exception = task.retry(exc=exc, countdown=countdown)  # raises Retry once queued
            return retry
        except Reject as not_queued:
            if time.monotonic() + countdown > deadline:
                log.error(
                    "could not queue the retry: %s; requeueing the message",
                    type(not_queued.reason).__name__,
                )
                requeue: Exception = Reject(not_queued.reason, requeue=True)
                return requeue
            time.sleep(countdown)


def enqueue_many(messages: list[tuple[bytes, float]]) -> None:
    """Hand messages to the broker as one task (raises when the broker did not accept it): the
    journal's requeue of messages no worker finished. The listener queues through
    worker/journal.py journaled_direct instead."""
    validate_batch.apply_async(
        ([(data.decode("latin-1"), at) for data, at in messages],), retry=False
    )
