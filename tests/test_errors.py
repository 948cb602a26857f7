"""Errors from outside (Redis, MLLP, sockets) are mapped to the OrdercheckError tree where they
enter: StoreError at the store edge, DeliveryError at the publisher edge. And the ledger, memory
and Redis, does the same for the pipeline."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest
import redis

from worker.errors import (
    DeliveryError,
    GuidelineError,
    HL7ParseError,
    OrdercheckError,
    StoreError,
    cause_name,
)
from worker.history import InMemoryHistory
from worker.hl7.mllp import MLLPError
from worker.journal import Journal
from worker.ledger import Ledger, MemoryLedger, PatientLock, RedisLedger, lock_name
from worker.models import CheckResult, HistoryEntry
from worker.publish import Publisher
from worker.records import AdvisoryRecord
from worker.review.filters import FilterError
from worker.settings import Route, Settings, SettingsError
from worker.store import MemoryStore, RedisHistory, RedisStore, delivery_fields
from worker.testing import free_port

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def _record(rec_id: str) -> AdvisoryRecord:
    result = CheckResult(
        message_control_id=rec_id,
        message_type="ORM^O01",
        verdict="not-appropriate",
        guideline_version="test",
    )
    return AdvisoryRecord(id=rec_id, received_at=NOW, result=result, raw_in="MSH|", raw_out="MSH|")


def test_every_error_ordercheck_raises_is_under_one_root() -> None:
    for cls in (
        HL7ParseError,
        GuidelineError,
        StoreError,
        DeliveryError,
        MLLPError,
        FilterError,
        SettingsError,
    ):
        assert issubclass(cls, OrdercheckError), cls


# -- the store edge: redis-py errors become StoreError -----------------------------------------
def _dead_client() -> Any:
    """A client of a Redis that is not there: every command fails to connect."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))


def _calls() -> dict[str, Callable[[Any], object]]:
    return {
        "store.get": lambda c: RedisStore(c).get("x"),
        "store.add_advisory": lambda c: RedisStore(c).add_advisory(_record("x"), ["H|1"]),
        "store.update_many": lambda c: RedisStore(c).update_many([("x", {"delivery": "pending"})]),
        "store.iter_newest": lambda c: list(RedisStore(c).iter_newest()),
        "store.dedup_get_many": lambda c: RedisStore(c).dedup_get_many(["k"]),
        "history.entries": lambda c: RedisHistory(c).entries(["H|1"]),
        "journal.add": lambda c: Journal(c).add([(b"MSH|", 1.0)]),
        "journal.take_stale": lambda c: Journal(c).take_stale(0),
        "ledger.take": lambda c: _redis_ledger(c).take([["H|1"]]),
        "ledger.record": lambda c: _redis_ledger(c).record([(_record("x"), ["H|1"])], []),
        "ledger.write": lambda c: _redis_ledger(c).write([("x", delivery_fields("delivered", 1))]),
    }


def _redis_ledger(client: Any) -> RedisLedger:
    return RedisLedger(client, RedisStore(client), RedisHistory(client))


@pytest.mark.parametrize("name", sorted(_calls()))
def test_a_store_whose_redis_is_down_raises_store_error(name: str) -> None:
    with pytest.raises(StoreError) as caught:
        _calls()[name](_dead_client())
    assert isinstance(caught.value.__cause__, redis.ConnectionError)
    assert str(caught.value).startswith("ConnectionError: ")  # the text logs and CLIs show
    assert cause_name(caught.value) == "ConnectionError"


def test_the_journal_clean_up_logs_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal(_dead_client())
    with caplog.at_level(logging.WARNING, logger="ordercheck.journal"):
        journal.done([b"MSH|"])
        journal.undo([b"MSH|"])
    assert [r.getMessage() for r in caplog.records] == [
        "could not clear processed messages from the journal: ConnectionError",
        "could not take back a run count: ConnectionError",
    ]


def test_a_lock_that_cannot_be_released_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = _redis_ledger(_dead_client())
    with caplog.at_level(logging.WARNING, logger="ordercheck.pipeline"):
        ledger.release(PatientLock(lock_name(["H|1"]), b"token"))
    assert [r.getMessage() for r in caplog.records] == [
        "patient lock release failed: ConnectionError"
    ]


def test_errors_that_are_not_redis_errors_are_left_alone() -> None:
    from worker.store import redis_errors

    with pytest.raises(KeyError), redis_errors:
        raise KeyError("a bug stays a bug")


# -- the publisher edge: MLLP and socket errors become DeliveryError ---------------------------
def test_a_delivery_to_a_closed_port_raises_and_records_delivery_error() -> None:
    port = free_port()
    publisher = Publisher(Settings(redis_url=None, advisory_ack_timeout=1.0))
    route = Route(host="127.0.0.1", port=port)
    with pytest.raises(DeliveryError) as caught:
        publisher.exchange(route, b"MSH|^~\\&|A|B|C|D|2026||ORU^R01|X1|P|2.5.1\r")
    error = caught.value
    assert isinstance(error.__cause__, MLLPError | OSError)
    assert error.destination == f"127.0.0.1:{port}"
    assert str(error).startswith(f"{type(error.__cause__).__name__}: ")
    outcome = publisher.send(route, b"MSH|^~\\&|A|B|C|D|2026||ORU^R01|X1|P|2.5.1\r", "X1")
    assert not outcome.ok and outcome.error == str(error)  # the text the advisory keeps
    assert outcome.destination == f"127.0.0.1:{port}"
    publisher.close()


# -- the ledger: one interface, memory and Redis ------------------------------------------------
@pytest.fixture(params=["memory", "fakeredis"])
def ledger(request: pytest.FixtureRequest) -> Iterator[tuple[Ledger, Any]]:
    if request.param == "memory":
        store: Any = MemoryStore()
        yield MemoryLedger(store, InMemoryHistory()), store
    else:
        client = fakeredis.FakeRedis()
        redis_store = RedisStore(client)
        yield RedisLedger(client, redis_store, RedisHistory(client)), redis_store


def test_the_ledger_records_once_and_writes_delivery_states(ledger: tuple[Ledger, Any]) -> None:
    led, store = ledger
    with led.hold(["H|1"]) as lock:
        assert lock.history in (None, [])  # memory: read the history store when needed
        assert led.record([(_record("r1"), ["H|1"])], [lock]) == [True]
    with led.hold(["H|1"]) as lock:  # released: taken again at once
        assert led.record([(_record("r1"), ["H|1"])], [lock]) == [False]
    led.write([("r1", delivery_fields("delivered", 1, destination="h:1"))])
    record = store.get("r1")
    assert record is not None and record.delivery == "delivered"
    assert store.patient_advisories(["H|1"], NOW) == ["r1"]


def test_the_redis_ledger_reads_the_history_with_the_lock() -> None:
    client = fakeredis.FakeRedis()
    history = RedisHistory(client)
    entry = HistoryEntry(procedure_class="mri", region="thigh", laterality="left", at=NOW)
    history.add(["H|1"], entry)
    led = RedisLedger(client, RedisStore(client), history)
    [mine, other] = led.take([["H|1"], ["H|2"]])
    assert mine is not None and mine.history == [entry]
    assert other is not None and other.history == []
    assert led.take([["H|1"]]) == [None]  # held: another worker waits
    led.release(mine)
    assert not client.exists(lock_name(["H|1"]))
