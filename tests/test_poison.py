"""A poison message (issue 13 item 1): one whose run kills the worker is set aside as a dead
letter after ORDERCHECK_MAX_ATTEMPTS runs, listed for review, instead of coming back forever.

A real `ordercheck serve` on Redis with one Celery pool process; the test hook
ORDERCHECK_CHAOS_KILL_CONTROL_ID makes the pool process that takes the message SIGKILL itself
(as a message that hits the task time limit is killed). Bounded: each wait has a timeout."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import pytest
import redis

from tests.conftest import real_redis
from tests.hl7build import order_message
from tests.support import FakeOrderingSystem, Serve, wait_until
from worker.cli import main
from worker.journal import Journal, message_key
from worker.store import DeadLetter, MemoryStore, RedisStore

DB = int(os.environ.get("ORDERCHECK_TEST_REDIS_DB_E2E", "12"))


@pytest.mark.slow
@pytest.mark.redis
def test_poison_message_is_dead_lettered_and_listed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ris = FakeOrderingSystem().start()
    with real_redis(DB) as url:
        serve = Serve(
            {
                "ORDERCHECK_REDIS_URL": url,
                "ORDERCHECK_ADVISORY_HOST": "127.0.0.1",
                "ORDERCHECK_ADVISORY_PORT": str(ris.port),
                "ORDERCHECK_WORKERS": "1",
                "ORDERCHECK_MAX_ATTEMPTS": "2",
                "ORDERCHECK_CHAOS_KILL_CONTROL_ID": "POISON1",
            }
        )
        try:
            serve.start()
            poison = order_message(control_id="POISON1", placer="PPOI", reason="^thigh mass")
            assert serve.send(poison)[0] == "AA"
            store = RedisStore(redis.Redis.from_url(url))
            wait_until(lambda: store.dead_letters(), 90, "the poison message set aside")
            dead = store.dead_letters()
            assert [(d.control_id, d.attempts) for d in dead] == [("POISON1", 2)]
            assert dead[0].key == message_key(poison) and dead[0].raw_bytes == len(poison)
            journal = Journal(store.r)
            assert journal.size() == 0  # the sweep will not queue it again
            assert journal.attempts([poison]) == [0]
            # The workers are not stalled: the next order is checked and delivered.
            ok = order_message(
                control_id="AFTER1",
                placer="PAFTER",
                patient_id="POI2^^^H^MR",
                reason="^Left thigh mass 6 cm",
            )
            assert serve.send(ok)[0] == "AA"
            wait_until(lambda: ris.for_placer("PAFTER"), 60, "the next advisory")
            assert ris.for_placer("PPOI") == []
            assert len(store.dead_letters()) == 1
            monkeypatch.setenv("ORDERCHECK_REDIS_URL", url)
            assert main(["dead-letters", "--json"]) == 0
            listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
            assert [e["control_id"] for e in listed] == ["POISON1"] and "raw" not in listed[0]
        finally:
            serve.stop()
            ris.stop()


def test_dead_letters_in_both_stores(redis_url: str) -> None:
    now = datetime.now(UTC)
    for store in (MemoryStore(), RedisStore(redis.Redis.from_url(redis_url))):
        for n in range(3):
            store.keep_dead_letter(
                DeadLetter(
                    key=f"k{n}",
                    control_id=f"C{n}",
                    attempts=3,
                    reason="killed",
                    received_at=now,
                    dead_at=now,
                    raw="MSH|",
                )
            )
        assert [d.control_id for d in store.dead_letters(2)] == ["C2", "C1"]
        assert store.purge(datetime(2100, 1, 1, tzinfo=UTC)) == 0
        assert store.dead_letters() == []


def test_embedded_worker_sets_a_failing_message_aside(knowledge: object) -> None:
    from worker.embedded import EmbeddedRuntime
    from worker.settings import Settings

    runtime = EmbeddedRuntime(Settings(redis_url=None), knowledge)  # type: ignore[arg-type]

    def boom(data: bytes, received_at: float, down: set[str] | None = None) -> list[str]:
        raise RuntimeError("boom")

    runtime.processor.process = boom  # type: ignore[method-assign]
    runtime.start()
    try:
        runtime.enqueue(order_message(control_id="EMBDEAD"), 1_700_000_000.0)
        wait_until(lambda: runtime.stores.store.dead_letters(), 10, "the dead letter")
    finally:
        runtime.stop()
    (dead,) = runtime.stores.store.dead_letters()
    assert dead.control_id == "EMBDEAD" and "RuntimeError" in dead.reason


def test_a_batch_that_died_reruns_one_message_per_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard of a task (worker/tasks.py _guard) on a journal in fakeredis: a batch that was
    started before is split; each message is counted alone; the one that keeps dying is set
    aside after max_attempts (3) runs, the other is cleared when it finishes."""
    import fakeredis

    from worker import celery_app, tasks

    journal = Journal(fakeredis.FakeRedis())
    queued: list[list[tuple[str, float]]] = []
    monkeypatch.setattr(
        tasks.validate_batch, "apply_async", lambda args, **kw: queued.append(args[0])
    )
    monkeypatch.setattr(celery_app.settings, "max_attempts", 3)
    good = (order_message(control_id="GOOD").decode("latin-1"), 1_700_000_000.0)
    bad = (order_message(control_id="BAD", placer="PBAD").decode("latin-1"), 1_700_000_000.0)
    assert tasks._guard(journal, [good, bad]) == [good, bad]  # run 1, then the worker dies
    assert tasks._guard(journal, [good, bad]) is None  # redelivered: split instead of run
    assert queued == [[good], [bad]]
    assert journal.attempts([m.encode("latin-1") for m, _ in (good, bad)]) == [1, 1]
    assert tasks._guard(journal, [good]) == [good]
    journal.done([good[0].encode("latin-1")])  # finished: its count is gone
    assert journal.attempts([good[0].encode("latin-1")]) == [0]
    assert tasks._guard(journal, [bad]) == [bad]  # run 2, dies
    assert tasks._guard(journal, [bad]) == [bad]  # run 3, dies
    assert tasks._guard(journal, [bad]) == []  # set aside, not run a fourth time
    (dead,) = tasks.processor().stores.store.dead_letters()
    assert (dead.control_id, dead.attempts) == ("BAD", 3)
    assert journal.attempts([bad[0].encode("latin-1")]) == [0]


def test_a_run_that_raises_is_not_counted() -> None:
    import fakeredis

    journal = Journal(fakeredis.FakeRedis())
    message = order_message(control_id="FLAKY")
    for _ in range(10):  # Redis flapping: each run raises, the worker lives
        assert journal.start([message]) == [1]
        journal.undo([message])
    assert journal.attempts([message]) == [0]
