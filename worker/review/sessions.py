"""Server-side review sessions: the signed cookie carries a random session id, and the page
accepts the cookie only while that id is live here. Logging out revokes the id, so a copy of
the old cookie stops working at once (not after its 8 hours).

Ids are kept hashed (SHA-256): in Redis (`{prefix}review:session:{sha}`, with the session's
lifetime as TTL, so every review page process shares them) or, on the embedded default, in this
process's memory.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from typing import Any, Protocol

from worker.store import AdvisoryStore, RedisStore

MAX_MEMORY_SESSIONS = 10_000


def _digest(sid: str) -> str:
    return hashlib.sha256(sid.encode("utf-8")).hexdigest()


class Sessions(Protocol):
    def create(self) -> str:
        """A new live session id (random, 256 bits)."""

    def alive(self, sid: str) -> bool: ...

    def revoke(self, sid: str) -> None: ...


class MemorySessions:
    """Live session ids in this process (the embedded default), each for *ttl* seconds."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._ids: dict[str, float] = {}  # digest -> monotonic expiry
        self._lock = threading.Lock()

    def create(self) -> str:
        sid = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            for key in [k for k, end in self._ids.items() if end <= now]:
                del self._ids[key]
            if len(self._ids) >= MAX_MEMORY_SESSIONS:  # the oldest goes
                del self._ids[next(iter(self._ids))]
            self._ids[_digest(sid)] = now + self.ttl
        return sid

    def alive(self, sid: str) -> bool:
        with self._lock:
            end = self._ids.get(_digest(sid))
        return end is not None and end > time.monotonic()

    def revoke(self, sid: str) -> None:
        with self._lock:
            self._ids.pop(_digest(sid), None)


class RedisSessions:
    """Live session ids in Redis, shared by every review page process on that Redis."""

    def __init__(self, client: Any, prefix: str, ttl: float) -> None:
        self.r = client
        self.p = prefix
        self.ttl = max(1, int(ttl))

    def _key(self, sid: str) -> str:
        return f"{self.p}review:session:{_digest(sid)}"

    def create(self) -> str:
        sid = secrets.token_urlsafe(32)
        self.r.set(self._key(sid), "1", ex=self.ttl)
        return sid

    def alive(self, sid: str) -> bool:
        return bool(self.r.exists(self._key(sid)))

    def revoke(self, sid: str) -> None:
        self.r.delete(self._key(sid))


def sessions_for(store: AdvisoryStore, ttl: float) -> Sessions:
    """Redis sessions next to a Redis store, memory ones otherwise."""
    if isinstance(store, RedisStore):
        return RedisSessions(store.r, store.p, ttl)
    return MemorySessions(ttl)
