"""The machine's ceiling for bench/e2e.py: a Celery app with a trivial task on the same broker.

    celery -A bench.echo_app worker -c W -Q bench-echo --without-gossip --without-mingle \
        --without-heartbeat

Its configuration is copied from ordercheck's own Celery app (worker/celery_app.py: late
acknowledgement, prefetch, serializer, no result backend, ...), so the only difference between
an echo task and an `ordercheck.validate` task is the work done in the task body: here a single
Redis INCR, which lets the load generator see when every task has been consumed.

Broker: ORDERCHECK_REDIS_URL, as for ordercheck.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from celery import Celery

from worker.celery_app import app as ordercheck_app
from worker.celery_app import settings

QUEUE = "bench-echo"
COUNTER = "bench:echo:done"

app = Celery("bench-echo")
app.conf.update(
    {
        k: v
        for k, v in ordercheck_app.conf.changes.items()
        if k not in ("include", "task_default_queue")
    }
)
app.conf.update(task_default_queue=QUEUE)


@cache
def _redis() -> Any:
    import redis

    return redis.Redis.from_url(settings.redis_url or "redis://127.0.0.1:6379/9")


@app.task(name="bench.echo", acks_late=True)
def echo(message: str, received_at: float) -> None:
    """Consume one message: the same payload and signature as `ordercheck.validate`."""
    _redis().incr(COUNTER)
