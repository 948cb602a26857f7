"""Celery tasks, thin: deserialise, call the pipeline, retry.

validate_batch: the messages the listener received together (one task for a burst; payload:
    a list of [raw bytes as Latin-1 text (lossless), received_at]).
validate: one received message (the same payload, alone; what earlier versions queued).
deliver: a retry of an advisory's delivery after a failed first attempt.
"""

from __future__ import annotations

import logging
import time
from functools import cache
from typing import Any

from celery.exceptions import Reject

from worker.celery_app import app, settings
from worker.guideline import load_knowledge
from worker.journal import Journal
from worker.pipeline import Processor
from worker.publish import Publisher
from worker.runtime import Stores, redis_client

log = logging.getLogger("ordercheck.tasks")
# Seconds to keep trying to queue a retry: half the task time limit, so the task ends first.
RETRY_QUEUE_WINDOW = settings.task_time_limit / 2


@cache
def processor() -> Processor:
    """The Processor of this worker process (built on first use, after the fork)."""
    stores = Stores(settings)
    client = redis_client(settings.redis_url) if settings.redis_url else None

    def schedule(advisory_id: str, attempt: int, delay: float) -> None:
        deliver.apply_async((advisory_id, attempt), countdown=delay)

    return Processor(
        settings,
        load_knowledge(settings.code_map, protocols=settings.protocols_file),
        stores,
        Publisher(settings),
        schedule,
        client,
    )


def _done(messages: list[str]) -> None:
    """Clear processed messages from the listener's journal (worker/journal.py)."""
    if settings.redis_url and messages:
        Journal(redis_client(settings.redis_url)).done([m.encode("latin-1") for m in messages])


@app.task(name="ordercheck.validate", bind=True, max_retries=None, acks_late=True)
def validate(self: object, message: str, received_at: float) -> list[str]:
    try:
        ids = processor().process(message.encode("latin-1"), received_at)
    except Exception as exc:  # Redis or another dependency failed: run again later
        log.error("validate failed: %s; retrying", type(exc).__name__)
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
    items = [(message.encode("latin-1"), received_at) for message, received_at in messages]
    on_done = None
    if settings.redis_url:
        journal = Journal(redis_client(settings.redis_url))

        def on_done(pipe: Any, positions: list[int]) -> None:  # in the batch's last write
            journal.queue_done(pipe, [items[i][0] for i in positions])

    ids, errors = processor().process_batch(items, on_done)
    if not errors:
        return len(ids)
    failed = [messages[i] for i in sorted(errors)]
    error = next(iter(errors.values()))  # Redis or another dependency failed: run again later
    log.error(
        "validate failed: %s; retrying %d of %d messages",
        type(error).__name__,
        len(failed),
        len(messages),
    )
    if len(failed) < len(messages):
        try:
            validate_batch.apply_async((failed,), countdown=2, retry=False)
            return len(ids)
        except Exception:
            log.error("could not queue the failed messages again; retrying the batch")
    raise _retry(self, error, countdown=2) from error


@app.task(name="ordercheck.deliver", bind=True, max_retries=None, acks_late=True)
def deliver(self: object, advisory_id: str, attempt: int) -> bool:
    try:
        return processor().deliver(advisory_id, attempt)
    except Exception as exc:
        log.error("deliver failed: %s; retrying", type(exc).__name__)
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
