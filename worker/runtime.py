"""Builds the stores a process needs from the settings: Redis when configured, else memory."""

from __future__ import annotations

from functools import cache
from typing import Any

from worker.history import History, InMemoryHistory
from worker.ledger import Ledger, MemoryLedger, RedisLedger
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
    """The advisory store, resend table and history of one process, and the ledger the worker's
    pipeline uses them through (worker/ledger.py).

    client: a Redis client to use instead of one for settings.redis_url (tests: fakeredis)."""

    def __init__(self, settings: Settings, client: Any | None = None) -> None:
        self.settings = settings
        self.store: AdvisoryStore
        self.history: History
        self.dedup: MemoryDedup | RedisDedup
        self.ledger: Ledger
        if client is None and settings.redis_url:
            client = redis_client(settings.redis_url)
        if client is not None:
            redis_store = RedisStore(client)
            redis_history = RedisHistory(client)
            self.store, self.history = redis_store, redis_history
            self.dedup = RedisDedup(redis_store)
            self.ledger = RedisLedger(client, redis_store, redis_history)
        else:
            memory_store, memory_history = MemoryStore(), InMemoryHistory()
            self.store, self.history = memory_store, memory_history
            self.dedup = MemoryDedup()
            self.ledger = MemoryLedger(memory_store, memory_history)


def open_store(settings: Settings) -> AdvisoryStore:
    """The advisory store the settings name (a new empty memory store without Redis)."""
    return Stores(settings).store
