"""Checks `serve` (and `review`) make before they say they are ready: one line each on failure.

    redis_problem(url)      Redis answers PING within a few seconds, or why not
    worker_problem(url)     the Celery worker's imports load here: the tasks and the broker
                            transport for *url* (a bare install once lacked kombu's `packaging`)

Each returns None when all is well, else one line naming the cause (no password, no traceback).
"""

from __future__ import annotations

from worker.settings import redact_url

PING_TIMEOUT = 5.0  # seconds


def redis_problem(url: str, timeout: float = PING_TIMEOUT) -> str | None:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        return f"cannot reach Redis at {redact_url(url)}: {type(exc).__name__}: {exc}"
    return None


def worker_problem(url: str) -> str | None:
    """Import what the Celery worker imports at start, in this interpreter (the worker runs
    with the same one and the same environment)."""
    try:
        from kombu.transport import resolve_transport

        import worker.tasks  # noqa: F401 - the task modules and the Celery app
        from worker.celery_app import app

        resolve_transport(app.connection_for_write(url).transport_cls)
    except ImportError as exc:
        return (
            f"the Celery worker cannot start: {type(exc).__name__}: {exc} "
            "(reinstall ordercheck: pip install -c constraints.txt .)"
        )
    return None
