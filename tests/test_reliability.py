"""The small fixes behind the chaos and fuzz runs, one test each: a retry that cannot be queued
keeps its message, an advisory record is written whole or not at all, an MSH-15 outside table
0155 still gets an ACK, and purging removes what is past retention (stream included)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
from celery.exceptions import Reject, Retry

from worker import tasks
from worker.hl7.ack import AckTarget
from worker.models import CheckResult
from worker.records import AdvisoryRecord
from worker.store import MemoryStore, RedisStore, RejectedEntry, purge_expired


def _record(rec_id: str, received_at: datetime) -> AdvisoryRecord:
    result = CheckResult(
        message_control_id=rec_id,
        message_type="ORM^O01",
        verdict="not-appropriate",
        guideline_version="test",
    )
    return AdvisoryRecord(
        id=rec_id, received_at=received_at, result=result, raw_in="MSH|in", raw_out="MSH|out"
    )


class _Task:
    """A bound Celery task whose retry cannot be queued the first *failures* times."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def retry(self, exc: Exception, countdown: float) -> Exception:
        self.calls += 1
        if self.calls <= self.failures:
            raise Reject(ConnectionError("broker down"), requeue=False)  # what Celery does
        raise Retry("queued", exc)


def test_retry_waits_for_the_broker_instead_of_dropping_the_message() -> None:
    task = _Task(failures=2)
    with pytest.raises(Retry):
        raise tasks._retry(task, ConnectionError("redis"), countdown=0.01)
    assert task.calls == 3


def test_retry_requeues_the_message_when_the_broker_stays_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks, "RETRY_QUEUE_WINDOW", 0.05)
    out = tasks._retry(_Task(failures=10**6), ConnectionError("redis"), countdown=0.01)
    assert isinstance(out, Reject) and out.requeue  # never Reject(requeue=False): a loss


def test_advisory_record_is_written_whole() -> None:
    store = RedisStore(fakeredis.FakeRedis())
    assert store.put(_record("a1", datetime.now(UTC)))
    fields = store.r.hgetall("oc:adv:a1")
    assert {b"record", b"raw_out", b"delivery"} <= set(fields)
    assert not store.put(_record("a1", datetime.now(UTC)))  # written once


class _Racing:
    """A client on which another worker writes the record just before our write reaches Redis."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Any:
        self.real.hset(keys_and_args[0], "record", "written by another worker")
        return self.real.eval(script, numkeys, *keys_and_args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_advisory_record_race_leaves_the_winners_record_alone() -> None:
    real = fakeredis.FakeRedis()
    assert not RedisStore(_Racing(real)).put(_record("a2", datetime.now(UTC)))
    assert real.hgetall("oc:adv:a2") == {b"record": b"written by another worker"}


@pytest.mark.parametrize("mode", ["XX", "\x01", "al", ""])
def test_msh15_outside_table_0155_is_answered(mode: str) -> None:
    target = AckTarget(enhanced=True, accept_ack_type=mode)
    assert target.wants_accept_ack(True) and target.wants_accept_ack(False)


def test_msh15_table_0155_values() -> None:
    def wants(mode: str, accepted: bool) -> bool:
        return AckTarget(enhanced=True, accept_ack_type=mode).wants_accept_ack(accepted)

    assert wants("AL", True) and wants("AL", False)
    assert not wants("NE", True) and not wants("NE", False)
    assert not wants("ER", True) and wants("ER", False)
    assert wants("SU", True) and not wants("SU", False)


@pytest.mark.parametrize("kind", ["memory", "fakeredis"])
def test_purge_expired(kind: str) -> None:
    store: MemoryStore | RedisStore = (
        MemoryStore() if kind == "memory" else RedisStore(fakeredis.FakeRedis())
    )
    now = datetime.now(UTC)
    store.put(_record("old", now - timedelta(days=31)))
    store.put(_record("new", now - timedelta(days=29)))
    for control, days in (("R-OLD", 31), ("R-NEW", 29)):
        store.keep_rejected(
            RejectedEntry(
                control_id=control,
                ack_code="AR",
                reason="x",
                received_at=now - timedelta(days=days),
                raw="MSH|",
            )
        )
    assert purge_expired(store, 30, now) == 1
    assert store.get("old") is None and store.get("new") is not None
    assert [e.control_id for e in store.rejected()] == ["R-NEW"]


def test_purge_trims_the_advisory_stream() -> None:
    store = RedisStore(fakeredis.FakeRedis())
    now = datetime.now(UTC)
    store.publish(_record("s1", now))
    assert purge_expired(store, 1, now) == 0 and store.r.xlen("oc:advisories") == 1
    assert purge_expired(store, 1, now + timedelta(days=2)) == 0
    assert store.r.xlen("oc:advisories") == 0


# ------------------------------------------------------------------------------- the journal
def test_journal_add_done_and_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import journal as jmod

    clock = [1000.0]
    monkeypatch.setattr("worker.journal.time.time", lambda: clock[0])
    j = jmod.Journal(fakeredis.FakeRedis())
    j.add([(b"MSH|one\r", 1.0), (b"MSH|two\xe9\r", 2.0)])
    assert j.size() == 2
    assert j.take_stale(grace=60) == []  # not old enough
    j.done([b"MSH|one\r"])
    clock[0] += 61
    assert j.take_stale(grace=60) == [(b"MSH|two\xe9\r", 2.0)]  # bytes survive as they were
    assert j.take_stale(grace=60) == []  # marked queued again just now
    clock[0] += 61
    assert len(j.take_stale(grace=60)) == 1  # still not processed: again
    j.done([b"MSH|two\xe9\r"])
    assert j.size() == 0


def test_journaled_enqueue_and_requeue_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import journal as jmod

    clock = [1000.0]
    monkeypatch.setattr("worker.journal.time.time", lambda: clock[0])
    client = fakeredis.FakeRedis()
    j = jmod.Journal(client)
    enqueue = jmod.journaled_direct(j, "ordercheck.validate_batch", "q", 60)
    enqueue([(b"A", 1.0)], [])
    assert client.llen("q") == 1 and j.size() == 1  # queued and journaled together

    class Down:
        def pipeline(self, transaction: bool = True) -> Any:
            raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        jmod.journaled_direct(jmod.Journal(Down()), "t", "q", 60)([(b"B", 2.0)], [])
    assert j.size() == 1 and client.llen("q") == 1  # refused (AR): neither kept nor queued
    clock[0] += 100
    queued: list[list[tuple[bytes, float]]] = []
    assert jmod.requeue_stale(j, queued.append, grace=60, queue_length=lambda: 5) == 0
    assert jmod.requeue_stale(j, queued.append, grace=60, queue_length=lambda: 0) == 1
    assert queued[-1] == [(b"A", 1.0)]


def _queued_batches(client: Any, queue: str = "q") -> list[list[str]]:
    """The messages of each task in *queue*, newest task first (LPUSH end)."""
    import base64
    import json

    out = []
    for item in client.lrange(queue, 0, -1):
        envelope = json.loads(item)
        args = json.loads(base64.b64decode(envelope["body"]))[0]
        assert envelope["headers"]["id"] == envelope["properties"]["correlation_id"]
        out.append([text for text, _ in args[0]])
    return out


def test_while_behind_a_batch_joins_the_task_still_waiting_at_the_queue_head() -> None:
    from worker import journal as jmod

    client = fakeredis.FakeRedis()
    j = jmod.Journal(client)
    behind = [True]
    lengths: list[int] = []
    enqueue = jmod.journaled_direct(
        j, "ordercheck.validate_batch", "q", 60, on_queued=lengths.append,
        merge_when=lambda: behind[0], max_task_messages=5,
    )  # fmt: skip
    enqueue([(b"A1", 1.0), (b"A2", 1.0)], [])
    enqueue([(b"B1", 2.0), (b"B2", 2.0), (b"B3", 2.0)], [])  # joins A's task: 5 messages
    assert _queued_batches(client) == [["A1", "A2", "B1", "B2", "B3"]]
    enqueue([(b"C1", 3.0)], [])  # 6 would be too many: a task of its own
    assert _queued_batches(client) == [["C1"], ["A1", "A2", "B1", "B2", "B3"]]
    client.lpop("q")  # a worker cannot take the head, but the test can: C's task is gone
    enqueue([(b"D1", 4.0)], [])  # the task it would join is not at the head: its own task
    assert _queued_batches(client) == [["D1"], ["A1", "A2", "B1", "B2", "B3"]]
    behind[0] = False
    enqueue([(b"E1", 5.0)], [])  # the workers keep up: no waiting for company
    assert _queued_batches(client)[0] == ["E1"]
    assert j.size() == 8 and lengths == [1, 1, 2, 2, 3]  # every message journaled


def test_a_batch_never_joins_a_task_a_worker_has_taken() -> None:
    from worker import journal as jmod

    client = fakeredis.FakeRedis()
    enqueue = jmod.journaled_direct(
        jmod.Journal(client), "ordercheck.validate_batch", "q", 60,
        merge_when=lambda: True, max_task_messages=32,
    )  # fmt: skip
    enqueue([(b"A1", 1.0)], [])
    taken = client.rpop("q")  # Celery takes from the tail: the only task
    enqueue([(b"B1", 2.0)], [])
    assert taken is not None and _queued_batches(client) == [["B1"]]
