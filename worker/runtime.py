"""Builds the stores a process needs from the settings: Redis when configured, else memory."""

from __future__ import annotations

from functools import cache
from typing import Any

from worker.history import History, InMemoryHistory
from worker.settings import Settings
from worker.store import (
    AdvisoryStore,
    MemoryDedup,
    MemoryStore,
    RedisDedup,
    RedisHistory,
    RedisStore,
)


@cache
def redis_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(
        url,
        health_check_interval=30,
        socket_timeout=10,
        socket_connect_timeout=5,
        retry_on_timeout=True,
    )


class Stores:
    """The advisory store, resend table and history of one process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: AdvisoryStore
        self.history: History
        self.dedup: MemoryDedup | RedisDedup
        if settings.redis_url:
            client = redis_client(settings.redis_url)
            redis_store = RedisStore(client)
            self.store = redis_store
            self.history = RedisHistory(client)
            self.dedup = RedisDedup(redis_store)
        else:
            self.store = MemoryStore()
            self.history = InMemoryHistory()
            self.dedup = MemoryDedup()


def open_store(settings: Settings) -> AdvisoryStore:
    """The advisory store the settings name (a new empty memory store without Redis)."""
    return Stores(settings).store
