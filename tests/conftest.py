"""Shared fixtures: the packaged guideline, a fresh checker, the real Redis when it is up."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from worker.check import Checker
from worker.guideline import Knowledge, default_knowledge
from worker.history import InMemoryHistory
from worker.store import AdvisoryStore, MemoryStore, RedisStore


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A command run in-process (serve, cds) sets up logging on the stderr pytest captured for
    that test; later threads would write to it after pytest closed it. Put the root logger's
    handlers and level back after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"
# shared/ beside the clone (as in CI); ORDERCHECK_TEST_SHARED names it elsewhere.
SHARED = Path(os.environ.get("ORDERCHECK_TEST_SHARED") or ROOT.parent / "shared")


@pytest.fixture(scope="session")
def knowledge() -> Knowledge:
    return default_knowledge()


@pytest.fixture
def checker(knowledge: Knowledge) -> Checker:
    return Checker(knowledge, InMemoryHistory())


# The fields every `ordercheck check --json` object has (design.md contract).
CONTRACT_FIELDS = {
    "message_control_id",
    "message_type",
    "placer_order_number",
    "verdict",
    "flags",
    "advice",
    "preferred_procedure",
    "protocol",
    "error",
}


REDIS_TEST_DB = int(os.environ.get("ORDERCHECK_TEST_REDIS_DB", "13"))


@contextmanager
def real_redis(db: int) -> Iterator[str]:
    """The real Redis on database *db*, flushed before and after.

    Skips locally when Redis is down; fails in CI (CI=true), where it must be up.
    """
    import redis

    url = f"redis://127.0.0.1:6379/{db}"
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError:
        if os.environ.get("CI"):
            pytest.fail("Redis is not running on 127.0.0.1:6379 (CI needs it)")
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The real Redis on a database of the tests' own, flushed around each test."""
    with real_redis(REDIS_TEST_DB) as url:
        yield url


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A key and a self-signed certificate for localhost / 127.0.0.1 in *folder* (the openssl
    command; the test skips where it is missing)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available")
    key, cert = folder / "key.pem", folder / "cert.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key)]
    command += ["-out", str(cert), "-days", "1", "-subj", "/CN=localhost"]
    command += ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return key, cert


@pytest.fixture(params=["memory", "fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
def any_store(request: pytest.FixtureRequest) -> AdvisoryStore:
    """Each advisory store in turn: memory, fakeredis, and the real Redis (marked redis)."""
    if request.param == "memory":
        return MemoryStore()
    if request.param == "fakeredis":
        import fakeredis

        return RedisStore(fakeredis.FakeRedis())
    import redis

    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    request.addfinalizer(client.close)
    return RedisStore(client)
