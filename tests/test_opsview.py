"""The delivery view behind /health and /metrics (worker/opsview.py), the store's pending index,
the failed-delivery log line, and the worker's own /metrics (issue 11, items 4 and 6)."""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.hl7build import order_message
from tests.support import free_port
from worker.guideline import Knowledge
from worker.logs import JSONFormatter
from worker.opsview import OpsCollector, overview
from worker.pipeline import Processor
from worker.publish import DeliveryOutcome
from worker.runtime import Stores
from worker.settings import Route, Settings
from worker.store import RedisStore

DEST = "10.1.2.3:2576"
T0 = 1_700_000_000.0


class Publisher:
    def __init__(self) -> None:
        self.up = False

    def route(self, application: str, facility: str) -> Route | None:
        return Route(host="10.1.2.3", port=2576)

    def send(self, route: Route, message: bytes, control_id: str) -> DeliveryOutcome:
        if self.up:
            return DeliveryOutcome(True, "", DEST)
        return DeliveryOutcome(False, "ConnectionRefusedError: [Errno 111] refused", DEST)

    def close(self) -> None:
        pass


@pytest.fixture
def setup(knowledge: Knowledge) -> Iterator[tuple[Processor, Publisher, RedisStore, Settings]]:
    client = fakeredis.FakeRedis()
    settings = Settings(
        redis_url=None,
        delivery_retries=1,
        advisory_host="10.1.2.3",
        advisory_port=2576,
        advisory_routes={"LAB": Route(host="10.9.9.9", port=2577)},
    )
    stores = Stores(settings, client)
    store = stores.store
    assert isinstance(store, RedisStore)
    publisher = Publisher()
    processor = Processor(
        settings,
        knowledge,
        stores,
        publisher,  # type: ignore[arg-type]
        lambda *_: None,
    )
    yield processor, publisher, store, settings


def _metrics(collector: OpsCollector) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry).decode()


def test_pending_then_undelivered_then_delivered_per_destination(
    setup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    processor, publisher, store, settings = setup
    with caplog.at_level(logging.WARNING, logger="ordercheck.pipeline"):
        [rec_id] = processor.process(order_message(control_id="O1", reason="^thigh mass"), T0)
    assert [i for i, _ in store.pending_ids()] == [rec_id]

    # The failed attempt's log line names its cause and destination, and nothing else.
    failed = [r for r in caplog.records if r.getMessage().startswith("delivery failed")]
    assert failed, [r.getMessage() for r in caplog.records]
    line = json.loads(JSONFormatter().format(failed[0]))
    assert line["destination"] == DEST
    assert line["err"] == "ConnectionRefusedError: [Errno 111] refused"

    view = overview(store, settings, now=T0 + 90)
    assert view.pending == 1 and view.undelivered == 0
    dest = view.destinations[DEST]
    assert dest.state == "retrying" and dest.pending == 1
    assert dest.oldest_pending_seconds == pytest.approx(90, abs=1)
    assert dest.last_error.startswith("ConnectionRefusedError")
    assert view.destinations["10.9.9.9:2577"].as_json()["state"] == "ok"  # configured, idle

    collector = OpsCollector(store, settings, lambda: 3, lambda: 1)
    text = _metrics(collector)
    assert f'ordercheck_advisories_pending{{destination="{DEST}"}} 1.0' in text
    assert 'ordercheck_advisories_pending{destination="10.9.9.9:2577"} 0.0' in text
    assert "ordercheck_broker_queue_depth 3.0" in text
    assert "ordercheck_workers_up 1.0" in text

    processor.deliver(rec_id, 2)  # the last retry fails: undelivered
    assert store.pending_ids() == [] and store.undelivered_ids() == [rec_id]
    view = overview(store, settings)
    assert view.pending == 0 and view.undelivered == 1 and view.not_sent == 0
    assert view.destinations[DEST].undelivered == 1
    assert f'ordercheck_advisories_not_delivered{{destination="{DEST}"}} 1.0' in _metrics(collector)

    publisher.up = True
    assert processor.resend(rec_id)
    assert store.pending_ids() == [] and store.undelivered_ids() == []
    view = overview(store, settings)
    assert (view.pending, view.undelivered) == (0, 0)
    assert f'ordercheck_oldest_pending_seconds{{destination="{DEST}"}} 0.0' in _metrics(collector)


def test_not_sent_is_listed_with_the_undelivered_under_destination_none(
    knowledge: Knowledge,
) -> None:
    client = fakeredis.FakeRedis()
    settings = Settings(redis_url=None)  # no destination at all
    stores = Stores(settings, client)
    store = stores.store
    assert isinstance(store, RedisStore)
    from worker.publish import Publisher as RealPublisher

    processor = Processor(settings, knowledge, stores, RealPublisher(settings), lambda *_: None)
    [rec_id] = processor.process(order_message(control_id="O2", reason="^thigh mass"), T0)
    assert store.get(rec_id).delivery == "not-sent"  # type: ignore[union-attr]
    assert store.undelivered_ids() == [rec_id] and store.pending_ids() == []
    view = overview(store, settings)
    assert view.not_sent == 1 and view.destinations["none"].state == "not configured"


def test_a_scrape_with_redis_down_still_reports_workers(setup: Any) -> None:
    _, _, store, settings = setup

    def down() -> int:
        raise ConnectionError("Redis down")

    text = _metrics(OpsCollector(store, settings, down, lambda: 0))
    assert "ordercheck_workers_up 0.0" in text
    assert "ordercheck_broker_queue_depth" not in text


def test_a_worker_serves_its_own_metrics() -> None:
    from worker.celery_app import start_worker_metrics

    port = free_port()
    server: Any = start_worker_metrics("127.0.0.1", port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        assert "ordercheck_orders_checked" in body
    finally:
        server.shutdown()
        server.server_close()
