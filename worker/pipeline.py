"""The worker's job for one queued message: check it, record advisories, deliver them.

Idempotent: an advisory's id is derived from (MSH-3, MSH-4, MSH-10, order position), the record
is written once, and a delivered advisory is never sent again, so a message run twice (a killed
worker, a resend that slipped past the listener) gives one advisory. Messages of one patient
are checked one at a time (a per-patient lock in Redis) so that an MRI result and a biopsy order
arriving together are judged against each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from worker import metrics
from worker.check import Checker
from worker.errors import HL7ParseError
from worker.facts import extract
from worker.guideline import Knowledge
from worker.hl7.build import advisory_control_id, build_advisory
from worker.hl7.parse import parse_message, peek_msh
from worker.hl7.read import read_message
from worker.publish import Publisher
from worker.records import AdvisoryRecord, Disposition, advisory_id
from worker.runtime import Stores
from worker.settings import Settings
from worker.store import mark_delivery

log = logging.getLogger("ordercheck.pipeline")

IN_SCOPE = ("appropriate", "not-appropriate")
MRI_DEPENDENT = {"CT_BEFORE_MRI", "BIOPSY_BEFORE_MRI", "PET_INITIAL"}
# Schedules a retry of delivery: (advisory id, attempt number, delay in seconds).
ScheduleRetry = Callable[[str, int, float], None]


class Processor:
    """Checks queued messages and delivers their advisories (one per worker process)."""

    def __init__(self, settings: Settings, knowledge: Knowledge, stores: Stores,
                 publisher: Publisher, schedule_retry: ScheduleRetry,
                 redis_client: Any | None = None) -> None:
        self.settings = settings
        self.kn = knowledge
        self.stores = stores
        self.checker = Checker(knowledge, stores.history, settings.site())
        self.publisher = publisher
        self.schedule_retry = schedule_retry
        self.redis = redis_client

    # -- one message ---------------------------------------------------------------------------
    def process(self, data: bytes, received_at: float) -> list[str]:
        """Check one message; returns the ids of the advisories it produced."""
        try:
            raw = parse_message(data)
            parsed = read_message(raw)
        except HL7ParseError as exc:  # the listener checked it; keep it visible anyway
            log.warning("unreadable message reached a worker: %s", exc.code)
            return []
        header = parsed.header
        keys = parsed.patient.keys()
        received = datetime.fromtimestamp(received_at, UTC)
        with self._patient_lock(keys):
            outcome = self.checker.check_parsed(parsed)
            if keys and outcome.recorded:
                self._recheck(keys, header.control_id, received)
        ids: list[str] = []
        raw_text = raw.text
        for index, (order, result) in enumerate(zip(outcome.orders, outcome.results,
                                                    strict=False)):
            metrics.CHECKED.labels(verdict=result.verdict).inc()
            if result.verdict not in IN_SCOPE and not self.settings.advisory_for_no_criteria:
                continue
            if result.verdict == "rejected":
                continue
            rec_id = advisory_id(header.sending_application, header.sending_facility,
                                 header.control_id, index)
            control = advisory_control_id(rec_id)
            meta = self.kn.guideline.guideline
            out = build_advisory(raw, order, result, control_id=control,
                                 application=self.settings.application,
                                 facility=self.settings.facility,
                                 fmt=self.settings.advisory_format, guideline_id=meta.id,
                                 disclaimer=meta.disclaimer)
            record = AdvisoryRecord(id=rec_id, received_at=received, result=result,
                                    order_index=index, raw_in=raw_text,
                                    raw_out=out.decode("utf-8"))
            if self.stores.store.put(record):
                if keys:
                    self.stores.store.index_patient(keys, rec_id, received)
                for flag in result.flags:
                    metrics.FLAGGED.labels(rule=flag.code).inc()
                self.stores.store.publish(record)
            else:
                stored = self.stores.store.get(rec_id)
                if stored is None:
                    continue
                record = stored
            ids.append(rec_id)
            if record.delivery == "pending":
                self.deliver(record.id, attempt=record.delivery_attempts + 1, record=record)
        log.info("checked", extra={"control_id": header.control_id, "advisories": len(ids)})
        return ids

    # -- delivery ------------------------------------------------------------------------------
    def deliver(self, rec_id: str, attempt: int, record: AdvisoryRecord | None = None,
                retry: bool = True) -> bool:
        """One delivery attempt; schedules the next one or marks the advisory undelivered.

        retry: False for a single attempt (an operator's resend): no retry is scheduled.
        """
        store = self.stores.store
        record = record or store.get(rec_id)
        if record is None or record.delivery in ("delivered", "not-sent"):
            return record is not None and record.delivery == "delivered"
        r = record.result
        route = self.publisher.route(r.sending_application, r.sending_facility)
        if route is None:
            mark_delivery(store, rec_id, "not-sent", attempt - 1,
                          "no destination configured for this sender")
            return False
        outcome = self.publisher.send(route, record.raw_out.encode("utf-8"),
                                      peek_msh(record.raw_out.encode("utf-8")).control_id)
        if outcome.ok:
            mark_delivery(store, rec_id, "delivered", attempt, "", outcome.destination)
            metrics.DELIVERED.inc()
            metrics.DELIVERY_LATENCY.observe(max(0.0, time.time()
                                                 - record.received_at.timestamp()))
            log.info("delivered", extra={"advisory": rec_id, "attempt": attempt})
            return True
        metrics.DELIVERY_FAILED.inc()
        if not retry or attempt > self.settings.delivery_retries:
            mark_delivery(store, rec_id, "undelivered", attempt, outcome.error,
                          outcome.destination)
            metrics.UNDELIVERED.inc()
            log.error("undelivered after %d attempts", attempt, extra={"advisory": rec_id})
            return False
        mark_delivery(store, rec_id, "pending", attempt, outcome.error, outcome.destination)
        delay = min(self.settings.delivery_backoff * 2 ** (attempt - 1),
                    self.settings.delivery_backoff_max)
        log.warning("delivery failed, retry in %.1fs", delay,
                    extra={"advisory": rec_id, "attempt": attempt})
        self.schedule_retry(rec_id, attempt + 1, delay)
        return False

    def resend(self, rec_id: str) -> bool:
        """Send an advisory again now (an operator's resend of an undelivered advisory)."""
        record = self.stores.store.get(rec_id)
        if record is None:
            return False
        self.stores.store.update(rec_id, delivery="pending")
        record = record.model_copy(update={"delivery": "pending"})
        return self.deliver(rec_id, attempt=record.delivery_attempts + 1, record=record,
                            retry=False)

    # -- re-check after a newer result ----------------------------------------------------------
    def _recheck(self, keys: list[str], trigger: str, now: datetime) -> None:
        """Re-judge this patient's recent MRI-dependent flags now that the history grew.

        An MRI result and a biopsy order arriving together may be checked in either order; when
        the result lands second, the flagged advisory is revised and a corrected advisory
        (OBX-11 C, a new MSH-10) is delivered.
        """
        window = self.settings.recheck_window_seconds
        if window <= 0:
            return
        since = datetime.fromtimestamp(now.timestamp() - window, UTC)
        history = self.stores.history.entries(keys)
        for rec_id in self.stores.store.patient_advisories(keys, since):
            rec = self.stores.store.get(rec_id)
            if rec is None or not {f.code for f in rec.result.flags} & MRI_DEPENDENT:
                continue
            try:
                raw = parse_message(rec.raw_in.encode("utf-8"))
                parsed = read_message(raw)
                order = parsed.orders[rec.order_index]
            except (HL7ParseError, IndexError):
                continue
            facts = extract(order, parsed, self.kn, parsed.orders)
            result = self.checker.evaluate(parsed, order, facts, history)
            if result.verdict == rec.result.verdict and [f.code for f in result.flags] == [
                    f.code for f in rec.result.flags]:
                continue
            revision = rec.revision + 1
            control = f"{advisory_control_id(rec_id)[:17]}C{revision}"[:20]
            meta = self.kn.guideline.guideline
            out = build_advisory(raw, order, result, control_id=control,
                                 application=self.settings.application,
                                 facility=self.settings.facility,
                                 fmt=self.settings.advisory_format, guideline_id=meta.id,
                                 disclaimer=meta.disclaimer, status="C")
            note = Disposition(state=rec.disposition, reviewer="ordercheck",
                               text=f"re-checked after message {trigger}: "
                                    f"{rec.result.verdict} -> {result.verdict}")
            revised = self.stores.store.revise(rec_id, result, out.decode("utf-8"), note)
            log.info("advisory revised", extra={"advisory": rec_id, "trigger": trigger})
            self.deliver(rec_id, attempt=1, record=revised)

    # -- serialisation per patient -------------------------------------------------------------
    @contextlib.contextmanager
    def _patient_lock(self, keys: list[str]) -> Iterator[None]:
        if self.redis is None or not keys:
            yield
            return
        name = "oc:lock:" + hashlib.sha256(sorted(keys)[0].encode()).hexdigest()[:32]
        lock = self.redis.lock(name, timeout=30, blocking_timeout=30)
        acquired = lock.acquire()
        try:
            yield
        finally:
            if acquired:
                try:
                    lock.release()
                except Exception as exc:  # expired: it frees itself after `timeout` seconds
                    log.warning("patient lock release failed: %s", type(exc).__name__)
