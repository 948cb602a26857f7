"""Celery tasks, thin: deserialise, call the pipeline, retry.

validate: one per received message (payload: the raw bytes as Latin-1 text, lossless).
deliver: a retry of an advisory's delivery after a failed first attempt.
"""

from __future__ import annotations

import logging
from functools import cache

from worker.celery_app import app, settings
from worker.guideline import load_knowledge
from worker.pipeline import Processor
from worker.publish import Publisher
from worker.runtime import Stores, redis_client

log = logging.getLogger("ordercheck.tasks")


@cache
def processor() -> Processor:
    """The Processor of this worker process (built on first use, after the fork)."""
    stores = Stores(settings)
    client = redis_client(settings.redis_url) if settings.redis_url else None

    def schedule(advisory_id: str, attempt: int, delay: float) -> None:
        deliver.apply_async((advisory_id, attempt), countdown=delay)

    return Processor(settings, load_knowledge(settings.code_map), stores, Publisher(settings),
                     schedule, client)


@app.task(name="ordercheck.validate", bind=True, max_retries=None, acks_late=True)
def validate(self: object, message: str, received_at: float) -> list[str]:
    try:
        return processor().process(message.encode("latin-1"), received_at)
    except Exception as exc:  # Redis or another dependency failed: run again later
        log.error("validate failed: %s; retrying", type(exc).__name__)
        raise self.retry(exc=exc, countdown=2) from exc  # type: ignore[attr-defined]


@app.task(name="ordercheck.deliver", bind=True, max_retries=None, acks_late=True)
def deliver(self: object, advisory_id: str, attempt: int) -> bool:
    try:
        return processor().deliver(advisory_id, attempt)
    except Exception as exc:
        log.error("deliver failed: %s; retrying", type(exc).__name__)
        raise self.retry(exc=exc, countdown=5) from exc  # type: ignore[attr-defined]


def enqueue(data: bytes, received_at: float) -> None:
    """Hand a message to the broker (raises when the broker did not accept it)."""
    validate.apply_async((data.decode("latin-1"), received_at), retry=False)
