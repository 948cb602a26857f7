"""A small chaos run (bench/chaos.py): 300 orders over MLLP to `ordercheck serve` on a Redis of
its own (AOF, fsync always) while a Celery pool process is SIGKILLed twice, Redis crashes and
restarts once, the ordering system refuses connections for 2 s, and 5 % of the messages are
resent with the same MSH-10. Every accepted order must give exactly one delivered advisory.

Deterministic: faults are placed by the number of orders accepted (and at least 1 s apart), the
resends by a seeded random generator, and the sender is paced; the drain wait is bounded. The
broker visibility timeout is 8 s (300 s in production), so a message Celery dropped from its
buffer when Redis went away runs again within the test's time.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bench.chaos import ChaosConfig, run_chaos

pytestmark = pytest.mark.slow


def _require_redis_server() -> None:
    """These tests start redis-servers of their own: skip locally without one, fail in CI."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (CI needs it)")
        pytest.skip("redis-server is not installed")


@pytest.mark.timeout(300)  # about 40 s alone on 2 cores; more when the machine is busy
def test_small_chaos_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    _require_redis_server()
    lines: list[str] = []
    cfg = ChaosConfig(
        orders=300,
        kill_every=100,
        workers=2,
        connections=4,
        rate=50,
        resend_rate=0.05,
        refuse_seconds=2,
        redis_downtime=1,
        fault_gap=1,
        drain_timeout=50,
        quiet_seconds=1.5,
        ack_timeout=5,
        max_attempts=100,
        visibility_timeout=8,
        seed=1,
        workdir=tmp_path,
    )
    report = run_chaos(cfg, log=lines.append)
    summary = "\n".join(lines + report.lines())
    assert (report.kills, report.redis_restarts, report.refusal_windows) == (2, 1, 1), summary
    assert report.resends == 15, summary
    assert report.accepted == 300 and report.not_accepted == 0, summary
    assert report.drained, summary
    assert (report.lost, report.duplicated, report.undelivered) == (0, 0, 0), summary
    assert report.unexpected == 0, summary
    assert report.advisories_received == 300 + report.redelivered, summary
    assert report.ok, summary


def test_serve_starts_a_dead_celery_worker_again(tmp_path: Path) -> None:
    """Celery's main process can die (it does on some broker losses); serve starts it again."""
    import signal

    from bench.harness import RedisServer, make_order
    from tests.support import FakeOrderingSystem, Serve, children, wait_until

    _require_redis_server()
    redis = RedisServer(tmp_path / "redis", aof=False).start()
    ris = FakeOrderingSystem().start()
    serve = Serve(
        {
            "ORDERCHECK_REDIS_URL": redis.url(0),
            "ORDERCHECK_WORKERS": "1",
            "ORDERCHECK_ADVISORY_HOST": "127.0.0.1",
            "ORDERCHECK_ADVISORY_PORT": str(ris.port),
        },
        tmp_path / "serve",
    )
    try:
        serve.start()
        (celery,) = children(serve.pid)
        os.kill(celery, signal.SIGKILL)
        wait_until(
            lambda: (
                [p for p in children(serve.pid) if p != celery] != [] and bool(serve.pool_pids())
            ),
            30,
            "a new celery worker",
        )
        order = make_order(1, run="SUP")
        assert serve.send(order.message)[0] == "AA"
        wait_until(lambda: order.placer in ris.by_placer(), 30, "the advisory")
        assert "starting it again" in serve.log_text()
    finally:
        serve.stop()
        ris.stop()
        redis.stop()


def test_an_accepted_message_the_broker_lost_is_queued_again(tmp_path: Path) -> None:
    """The kombu window (BRPOP, then the unacked record): a message taken off the queue by a
    worker that dies with Redis is gone from the broker; the listener's journal queues it
    again after twice the visibility timeout."""
    from bench.harness import RedisServer, make_order
    from tests.support import FakeOrderingSystem, Serve, wait_until
    from worker.journal import Journal

    _require_redis_server()
    redis = RedisServer(tmp_path / "redis", aof=False).start()
    ris = FakeOrderingSystem().start()
    serve = Serve(
        {
            "ORDERCHECK_REDIS_URL": redis.url(0),
            "ORDERCHECK_WORKERS": "1",
            "ORDERCHECK_BROKER_VISIBILITY_TIMEOUT": "5",
            "ORDERCHECK_ADVISORY_HOST": "127.0.0.1",
            "ORDERCHECK_ADVISORY_PORT": str(ris.port),
        },
        tmp_path / "serve",
    )
    try:
        serve.start()
        lost = make_order(1, run="LOST")
        Journal(redis.client()).add([(lost.message, 1.0)])  # accepted, never reached a worker
        wait_until(lambda: lost.placer in ris.by_placer(), 30, "the lost message processed")
        wait_until(lambda: Journal(redis.client()).size() == 0, 10, "the journal cleared")
        assert len(ris.by_placer()[lost.placer]) == 1
    finally:
        serve.stop()
        ris.stop()
        redis.stop()
