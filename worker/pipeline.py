"""The worker's job for one queued message: check it, record advisories, deliver them.

Idempotent: an advisory's id is derived from (MSH-3, MSH-4, MSH-10, order position), the record
is written once, and a delivered advisory is never sent again, so a message run twice (a killed
worker, a resend that slipped past the listener) gives one advisory. Messages of one patient
are checked and recorded one at a time (a per-patient lock) so that an MRI result and a
biopsy order arriving together are judged against each other.

Locks, batching and Redis round trips belong to the stores' ledger (worker/ledger.py): on Redis,
one round trip to take the patient lock and read the patient's history, one to record the
advisories and release the lock, and one to record the delivery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from worker import metrics
from worker.check import ORDER_TYPES, Checker
from worker.errors import HL7ParseError, StoreError, cause_name
from worker.guideline import Knowledge
from worker.history import History
from worker.hl7.build import advisory_control_id, build_advisory
from worker.hl7.parse import RawMessage, parse_message
from worker.hl7.read import read_message
from worker.ledger import Marks, PatientLock, lock_name
from worker.models import HistoryEntry, ParsedMessage
from worker.publish import Publisher
from worker.records import AdvisoryRecord, Disposition, advisory_id
from worker.runtime import Stores
from worker.settings import Settings
from worker.store import delivery_fields, mark_delivery

log = logging.getLogger("ordercheck.pipeline")

IN_SCOPE = ("appropriate", "not-appropriate")
MRI_DEPENDENT = {"CT_BEFORE_MRI", "BIOPSY_BEFORE_MRI", "PET_INITIAL"}
# Schedules a retry of delivery: (advisory id, attempt number, delay in seconds).
ScheduleRetry = Callable[[str, int, float], None]


@dataclass(slots=True)
class _Job:
    """One message on its way through the worker."""

    index: int  # position in its batch
    raw: RawMessage
    parsed: ParsedMessage
    keys: list[str]  # the patient's identifiers
    received: datetime
    records: list[AdvisoryRecord] = field(default_factory=list)  # its new advisories
    recorded: int = 0  # studies it added to the patient's history


class _ReadAhead:
    """The patient's history as read with the lock (no second round trip); writes go through."""

    def __init__(self, history: History, keys: list[str], entries: list[HistoryEntry]) -> None:
        self.history = history
        self.keys = keys
        self.cached: list[HistoryEntry] | None = entries

    def add(self, patient_keys: list[str], entry: HistoryEntry) -> None:
        self.history.add(patient_keys, entry)
        self.cached = None

    def entries(self, patient_keys: list[str]) -> list[HistoryEntry]:
        if self.cached is not None and patient_keys == self.keys:
            return list(self.cached)
        return self.history.entries(patient_keys)


class Processor:
    """Checks queued messages and delivers their advisories (one per worker process)."""

    def __init__(
        self,
        settings: Settings,
        knowledge: Knowledge,
        stores: Stores,
        publisher: Publisher,
        schedule_retry: ScheduleRetry,
    ) -> None:
        self.settings = settings
        self.kn = knowledge
        self.stores = stores
        self.checker = Checker(knowledge, stores.history, settings.site())
        self.publisher = publisher
        self.schedule_retry = schedule_retry
        self.ledger = stores.ledger
        self._senders: ThreadPoolExecutor | None = None  # see _finish_all

    # -- one message ---------------------------------------------------------------------------
    def process(self, data: bytes, received_at: float, down: set[str] | None = None) -> list[str]:
        """Check one message; returns the ids of the advisories it produced.

        down: the destinations that failed earlier in the same batch (see deliver()).
        """
        try:
            raw = parse_message(data)
            parsed = read_message(raw)
        except HL7ParseError as exc:  # the listener checked it; keep it visible anyway
            log.warning("unreadable message reached a worker: %s", exc.code)
            return []
        job = _Job(0, raw, parsed, parsed.patient.keys(), datetime.fromtimestamp(received_at, UTC))
        with self.ledger.hold(job.keys) as lock:
            self._check(job, lock.history)
            if job.keys and job.recorded:
                self._recheck(job.keys, parsed.header.control_id, job.received)
            added = self.ledger.record([(r, job.keys) for r in job.records], [lock])
        return self._finish(job, added, down=down)

    def _check(self, job: _Job, history: list[HistoryEntry] | None) -> None:
        """Check the message of *job* and build its advisory records (job.records)."""
        checker = (
            self.checker
            if history is None
            else Checker(
                self.kn,
                _ReadAhead(self.stores.history, job.keys, history),
                self.checker.site,
                self.checker.today,
            )
        )
        outcome = checker.check_parsed(job.parsed)
        job.recorded = outcome.recorded
        header = job.parsed.header
        meta = self.kn.guideline.guideline
        for index, (order, result) in enumerate(zip(outcome.orders, outcome.results, strict=False)):
            metrics.CHECKED.labels(verdict=result.verdict).inc()
            if result.verdict not in IN_SCOPE and not self.settings.advisory_for_no_criteria:
                continue
            if result.verdict == "rejected":
                continue
            rec_id = advisory_id(
                header.sending_application, header.sending_facility, header.control_id, index
            )
            out = build_advisory(
                job.raw,
                order,
                result,
                control_id=advisory_control_id(rec_id),
                application=self.settings.application,
                facility=self.settings.facility,
                fmt=self.settings.advisory_format,
                guideline_id=meta.id,
                disclaimer=meta.disclaimer,
                protocol=self.kn.protocol_choice(result),
            )
            job.records.append(
                AdvisoryRecord(
                    id=rec_id,
                    received_at=job.received,
                    result=result,
                    order_index=index,
                    raw_in=job.raw.text,
                    raw_out=out.decode("utf-8"),
                )
            )

    def _finish(
        self,
        job: _Job,
        added: list[bool],
        marks: Marks | None = None,
        down: set[str] | None = None,
    ) -> list[str]:
        """Deliver the records of *job* that are new (or stored but still pending)."""
        ids: list[str] = []
        delivered = 0
        for record, new in zip(job.records, added, strict=True):
            if new:
                for flag in record.result.flags:
                    metrics.FLAGGED.labels(rule=flag.code).inc()
            else:
                stored = self.stores.store.get(record.id)
                if stored is None:
                    continue
                record = stored
            ids.append(record.id)
            if record.delivery == "pending":
                delivered += self.deliver(
                    record.id,
                    attempt=record.delivery_attempts + 1,
                    record=record,
                    marks=marks,
                    down=down,
                    quiet=True,
                )
        # One line per message (its advisories' deliveries included): logging is a tenth of a
        # worker's CPU time.
        log.info(
            "checked",
            extra={
                "control_id": job.parsed.header.control_id,
                "advisories": len(ids),
                "delivered": delivered,
            },
        )
        return ids

    # -- several messages ----------------------------------------------------------------------
    def process_batch(
        self,
        items: list[tuple[bytes, float]],
        on_done: Callable[[Any, list[int]], None] | None = None,
    ) -> tuple[list[str], dict[int, Exception]]:
        """Check several messages (a listener batch) with the same outcome as process() on each,
        in three round trips to Redis for all of them instead of three each: the patient locks
        and histories together, then the records, indexes, stream entries and lock releases
        together, then the delivery states together. Messages that write history (results,
        completed orders), that share a patient with another message of the batch or whose
        patient is locked by another worker go through process(), one by one.

        on_done(pipe, positions): adds to *pipe* the writes that mark the messages at
        *positions* processed (the listener's journal); they go in the batch's last round trip,
        with the delivery states.

        Returns the advisory ids and, by position in *items*, the messages that failed.
        """
        failed: dict[int, Exception] = {}
        together: list[_Job] = []
        alone: list[int] = []
        locks: set[str] = set()
        for i, (data, received_at) in enumerate(items):
            try:
                raw = parse_message(data)
                parsed = read_message(raw)
            except HL7ParseError as exc:
                log.warning("unreadable message reached a worker: %s", exc.code)
                continue
            job = _Job(
                i, raw, parsed, parsed.patient.keys(), datetime.fromtimestamp(received_at, UTC)
            )
            name = lock_name(job.keys) if job.keys else ""
            if not self._batchable(job) or (name and name in locks):
                alone.append(i)
                continue
            locks.add(name)
            together.append(job)
        ids: list[str] = []
        down: set[str] = set()  # destinations that failed in this batch: not tried again in it
        marks: Marks = []  # delivery states to write
        if together:
            try:
                ids, later = self._process_together(together, down, marks)
                alone = sorted(alone + later)
            except Exception as exc:  # last resort: they run again, the others finish
                failed.update((job.index, exc) for job in together)
        if alone and marks:  # process() reads delivery states: these are written first
            marks, written = [], marks
            try:
                self.ledger.write(written)
            except StoreError as exc:
                failed.update((job.index, exc) for job in together)
        for i in alone:
            try:
                ids += self.process(*items[i], down=down)
            except Exception as exc:  # last resort: one bad message fails alone, runs again
                failed[i] = exc
        done = [i for i in range(len(items)) if i not in failed]
        try:
            self.ledger.write(
                marks, (lambda pipe: on_done(pipe, done)) if on_done and done else None
            )
        except StoreError as exc:  # what was delivered is not marked: those messages run again
            log.warning("recording the batch's delivery states failed: %s", cause_name(exc))
            if marks:
                failed.update((job.index, exc) for job in together)
        return ids, failed

    def _batchable(self, job: _Job) -> bool:
        return (
            self.ledger.batched
            and job.parsed.header.message_type in ORDER_TYPES
            and not any(o.order_status == "CM" for o in job.parsed.orders)
        )

    def _process_together(
        self, jobs: list[_Job], down: set[str], marks: Marks
    ) -> tuple[list[str], list[int]]:
        """process() for messages that only read history, one per patient; returns the ids and
        the positions of the messages left for process() (their patient was locked). The
        delivery states are appended to *marks*, for the caller to write (also when this
        raises)."""
        locked = [job for job in jobs if job.keys]
        taken = self.ledger.take([job.keys for job in locked])
        held: dict[int, PatientLock] = {}
        later: list[int] = []
        for job, lock in zip(locked, taken, strict=True):
            if lock is None:
                later.append(job.index)
            else:
                held[job.index] = lock
        jobs = [job for job in jobs if job.index not in later]
        try:
            for job in jobs:
                lock = held.get(job.index)
                self._check(job, lock.history if lock is not None else [])
            added = self.ledger.record(
                [(record, job.keys) for job in jobs for record in job.records],
                list(held.values()),
            )
        finally:
            for lock in held.values():  # a failure before the locks went with the records
                self.ledger.release(lock)
        starts = [0]
        for job in jobs:
            starts.append(starts[-1] + len(job.records))
        return self._finish_all(
            [(job, added[a:b]) for job, a, b in zip(jobs, starts, starts[1:], strict=False)],
            marks,
            down,
        ), later

    def _finish_all(
        self,
        jobs: list[tuple[_Job, list[bool]]],
        marks: Marks,
        down: set[str],
    ) -> list[str]:
        """_finish() for messages of different patients, up to delivery_concurrency at once:
        each waits for the ordering system's ACK on its own connection, so a batch's
        deliveries take about one ACK's time, not one per advisory. Every message is
        finished before the first error, if any, is raised."""
        if self.settings.delivery_concurrency <= 1 or len(jobs) <= 1:
            return [i for job, added in jobs for i in self._finish(job, added, marks, down)]
        if self._senders is None:
            self._senders = ThreadPoolExecutor(
                max_workers=self.settings.delivery_concurrency,
                thread_name_prefix="ordercheck-deliver",
            )
        futures = [
            self._senders.submit(self._finish, job, added, marks, down) for job, added in jobs
        ]
        ids: list[str] = []
        error: BaseException | None = None
        for future in futures:
            try:
                ids += future.result()
            except Exception as exc:  # kept and raised below, once every message is finished
                error = error or exc
        if error is not None:
            raise error
        return ids

    # -- delivery ------------------------------------------------------------------------------
    def deliver(
        self,
        rec_id: str,
        attempt: int,
        record: AdvisoryRecord | None = None,
        retry: bool = True,
        marks: Marks | None = None,
        down: set[str] | None = None,
        quiet: bool = False,
    ) -> bool:
        """One delivery attempt; schedules the next one or marks the advisory undelivered.

        retry: False for a single attempt (an operator's resend): no retry is scheduled.
        marks: when given, a successful delivery's state is appended there, for the caller to
        write with those of the other advisories of its batch (store.update_many).
        down: the destinations that already failed in this batch. An advisory for one of them
        is not tried now but handed to a retry task (same attempt number), so an ordering
        system that accepts connections and never answers costs a batch one ACK timeout, not
        one per advisory, and the batch stays well inside the task time limit. A failure here
        adds its destination.
        quiet: no log line for a success (the caller logs one line for its message).
        """
        store = self.stores.store
        record = record or store.get(rec_id)
        if record is None or record.delivery in ("delivered", "not-sent"):
            return record is not None and record.delivery == "delivered"
        r = record.result
        route = self.publisher.route(r.sending_application, r.sending_facility)
        if route is None:
            mark_delivery(
                store, rec_id, "not-sent", attempt - 1, "no destination configured for this sender"
            )
            return False
        destination = f"{route.host}:{route.port}"
        if retry and down is not None and destination in down:
            mark_delivery(
                store,
                rec_id,
                "pending",
                attempt - 1,
                "not tried: the destination failed earlier in the same batch",
                destination,
            )
            self.schedule_retry(rec_id, attempt, self.settings.delivery_backoff)
            return False
        message = record.raw_out.encode("utf-8")
        # The reply's MSA-2 is compared with the MSH-10 we built, never with one read back from
        # the bytes: bytes that say otherwise (a field that broke the framing) are not delivered.
        outcome = self.publisher.send(
            route, message, advisory_control_id(record.id, record.revision)
        )
        if outcome.ok:
            fields = delivery_fields("delivered", attempt, "", outcome.destination)
            if marks is None:
                store.update(rec_id, **fields)
            else:
                marks.append((rec_id, fields))
            metrics.DELIVERED.inc()
            metrics.DELIVERY_LATENCY.observe(max(0.0, time.time() - record.received_at.timestamp()))
            if not quiet:
                log.info("delivered", extra={"advisory": rec_id, "attempt": attempt})
            return True
        metrics.DELIVERY_FAILED.inc()
        if down is not None:
            down.add(destination)
        if not retry or attempt > self.settings.delivery_retries:
            mark_delivery(store, rec_id, "undelivered", attempt, outcome.error, outcome.destination)
            metrics.UNDELIVERED.inc()
            log.error(
                "undelivered after %d attempts",
                attempt,
                extra={"advisory": rec_id, "destination": destination, "err": outcome.error},
            )
            return False
        mark_delivery(store, rec_id, "pending", attempt, outcome.error, outcome.destination)
        delay = min(
            self.settings.delivery_backoff * 2 ** (attempt - 1), self.settings.delivery_backoff_max
        )
        log.warning(
            "delivery failed, retry in %.1fs",
            delay,
            extra={
                "advisory": rec_id,
                "attempt": attempt,
                "destination": destination,
                "err": outcome.error,
            },
        )
        self.schedule_retry(rec_id, attempt + 1, delay)
        return False

    def resend(self, rec_id: str) -> bool:
        """Send an advisory again now (an operator's resend of an undelivered advisory)."""
        record = self.stores.store.get(rec_id)
        if record is None:
            return False
        self.stores.store.update(rec_id, delivery="pending")
        record = record.model_copy(update={"delivery": "pending"})
        return self.deliver(
            rec_id, attempt=record.delivery_attempts + 1, record=record, retry=False
        )

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
            facts = self.checker.extract(order, parsed, parsed.orders)
            result = self.checker.evaluate(parsed, order, facts, history)
            if result.verdict == rec.result.verdict and [f.code for f in result.flags] == [
                f.code for f in rec.result.flags
            ]:
                continue
            revision = rec.revision + 1
            control = advisory_control_id(rec_id, revision)
            meta = self.kn.guideline.guideline
            out = build_advisory(
                raw,
                order,
                result,
                control_id=control,
                application=self.settings.application,
                facility=self.settings.facility,
                fmt=self.settings.advisory_format,
                guideline_id=meta.id,
                disclaimer=meta.disclaimer,
                status="C",
                protocol=self.kn.protocol_choice(result),
            )
            note = Disposition(
                state=rec.disposition,
                reviewer="ordercheck",
                text=f"re-checked after message {trigger}: "
                f"{rec.result.verdict} -> {result.verdict}",
            )
            revised = self.stores.store.revise(rec_id, result, out.decode("utf-8"), note)
            log.info("advisory revised", extra={"advisory": rec_id, "trigger": trigger})
            self.deliver(rec_id, attempt=1, record=revised)
