"""The operations view: delivery state per destination, for /health and /metrics.

Read from the advisory store's indexes (pending, undelivered), never from the records' patient
data: a destination is "host:port", or "none" for advisories that had nowhere to go (not-sent).

    overview(store, settings, now) -> Overview
    OpsCollector(service)           Prometheus gauges computed at each scrape (the listener's)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from worker.settings import Settings
from worker.store import AdvisoryStore, RedisStore

NO_DESTINATION = "none"
SCAN_LIMIT = 10_000  # pending / undelivered advisories looked at per view (counts stay exact)


@dataclass
class Destination:
    pending: int = 0
    undelivered: int = 0
    oldest_pending_seconds: float = 0.0
    retrying: int = 0  # pending after a failed attempt
    last_error: str = ""
    configured: bool = False

    @property
    def state(self) -> str:
        if not self.configured and self.undelivered and not self.pending:
            return "not configured"
        if self.retrying:
            return "retrying"
        return "ok"

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "pending": self.pending,
            "undelivered": self.undelivered,
            "oldest_pending_seconds": round(self.oldest_pending_seconds, 1),
            "last_error": self.last_error,
        }


@dataclass
class Overview:
    destinations: dict[str, Destination] = field(default_factory=dict)
    pending: int = 0
    undelivered: int = 0  # undelivered and not-sent
    not_sent: int = 0

    def dest(self, name: str) -> Destination:
        return self.destinations.setdefault(name or NO_DESTINATION, Destination())


def configured_destinations(settings: Settings) -> list[str]:
    names = {f"{r.host}:{r.port}" for r in settings.advisory_routes.values()}
    if settings.advisory_host and settings.advisory_port:
        names.add(f"{settings.advisory_host}:{settings.advisory_port}")
    return sorted(names)


def _rows(store: AdvisoryStore) -> Iterator[tuple[dict[str, str], float]]:
    """(delivery fields, queued at) of every advisory not delivered."""
    if isinstance(store, RedisStore):
        pending = store.pending_ids(SCAN_LIMIT)
        others = store.undelivered_ids()[:SCAN_LIMIT]
        ids = [i for i, _ in pending] + others
        at = dict(pending)
        for i, fields in zip(ids, store.delivery_fields_of(ids), strict=True):
            if fields["delivery"]:
                yield fields, at.get(i, 0.0)
        return
    for rec in list(store.iter_newest()):
        if rec.delivery != "delivered":
            fields = {
                "delivery": rec.delivery,
                "delivery_attempts": str(rec.delivery_attempts),
                "delivery_error": rec.delivery_error,
                "destination": rec.destination,
            }
            yield fields, rec.received_at.timestamp()


def overview(store: AdvisoryStore, settings: Settings, now: float | None = None) -> Overview:
    now = time.time() if now is None else now
    view = Overview()
    for name in configured_destinations(settings):
        view.dest(name).configured = True
    for fields, queued_at in _rows(store):
        state = fields["delivery"]
        dest = view.dest(fields["destination"] if state != "not-sent" else NO_DESTINATION)
        if state == "pending":
            view.pending += 1
            dest.pending += 1
            if queued_at:
                dest.oldest_pending_seconds = max(dest.oldest_pending_seconds, now - queued_at)
            if fields["delivery_error"] and fields["delivery_attempts"] not in ("", "0"):
                dest.retrying += 1
                dest.last_error = fields["delivery_error"]
        elif state in ("undelivered", "not-sent"):
            view.undelivered += 1
            dest.undelivered += 1
            if state == "not-sent":
                view.not_sent += 1
            elif fields["delivery_error"] and not dest.last_error:
                dest.last_error = fields["delivery_error"]
    return view


class OpsCollector:
    """Gauges read at each scrape: broker queue depth, workers up, and per destination the
    advisories pending and undelivered and the age of the oldest pending one."""

    def __init__(
        self,
        store: AdvisoryStore,
        settings: Settings,
        queue_depth: Callable[[], int],
        workers_up: Callable[[], int],
    ) -> None:
        self.store = store
        self.settings = settings
        self.queue_depth = queue_depth
        self.workers_up = workers_up

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily(
            "ordercheck_workers_up", "Worker processes of this listener running (0: none)"
        )
        up.add_metric([], self.workers_up())
        yield up
        try:
            depth = self.queue_depth()
            view = overview(self.store, self.settings)
        except Exception:  # last resort: a scrape never fails (Redis down: no gauges; /health)
            return
        queue = GaugeMetricFamily(
            "ordercheck_broker_queue_depth", "Tasks waiting in the broker queue (batches)"
        )
        queue.add_metric([], depth)
        yield queue
        pending = GaugeMetricFamily(
            "ordercheck_advisories_pending",
            "Advisories waiting for delivery, by destination (host:port)",
            labels=["destination"],
        )
        undelivered = GaugeMetricFamily(
            "ordercheck_advisories_not_delivered",
            "Advisories the ordering system did not get (undelivered after the last retry, "
            "or not sent: destination none), by destination",
            labels=["destination"],
        )
        oldest = GaugeMetricFamily(
            "ordercheck_oldest_pending_seconds",
            "Age of the oldest advisory waiting for delivery, by destination (0: none)",
            labels=["destination"],
        )
        for name, dest in sorted(view.destinations.items()):
            pending.add_metric([name], dest.pending)
            undelivered.add_metric([name], dest.undelivered)
            oldest.add_metric([name], round(dest.oldest_pending_seconds, 3))
        yield pending
        yield undelivered
        yield oldest
