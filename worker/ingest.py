"""The listener's decision for one received frame: check MSH, deduplicate, queue, acknowledge.

Runs in a thread of the listener (it makes blocking broker calls). The ACK is built only after
the broker accepted the message (AA / CA). Bad input gets AR or AE with an ERR segment and is
kept for review. A resend of (MSH-3, MSH-4, MSH-10) gets the same ACK again and is not queued.
An ACK is never acknowledged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from worker import metrics
from worker.errors import HL7ParseError
from worker.hl7.ack import AckError, AckTarget, ack_code, build_ack
from worker.hl7.parse import parse_message, peek_msh
from worker.hl7.read import read_header
from worker.settings import Settings
from worker.store import dedup_key

log = logging.getLogger("ordercheck.ingest")

# Message types and trigger events ordercheck accepts (MSH-9).
ACCEPTED_EVENTS = {"ORM": {"O01"}, "OMI": {"O23"}, "OMG": {"O19"}, "ORU": {"R01"}}


class DedupTable(Protocol):
    """What the listener needs of the resend table (MemoryDedup or RedisDedup)."""

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, ack: bytes, ttl: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message answered AR/AE, kept for review (raw text is patient data: never logged)."""

    control_id: str
    code: str
    reason: str
    raw: bytes
    received_at: float


Enqueue = Callable[[bytes, float], None]
KeepRejected = Callable[[Rejected], None]


class Ingestor:
    """Turns a frame into an ACK, queueing the message when it is acceptable."""

    def __init__(self, settings: Settings, dedup: DedupTable, enqueue: Enqueue,
                 keep_rejected: KeepRejected) -> None:
        self.settings = settings
        self.dedup = dedup
        self.enqueue = enqueue
        self.keep_rejected = keep_rejected

    def handle(self, frame: bytes) -> bytes | None:
        """The ACK bytes to send back for *frame*, or None to send nothing."""
        started = time.perf_counter()
        received_at = time.time()
        metrics.RECEIVED.inc()
        try:
            raw = parse_message(frame)
            header = read_header(raw)
        except HL7ParseError as exc:
            head = peek_msh(frame)
            if head.message_type.startswith("ACK"):
                return None
            target = AckTarget(head.sending_application, head.sending_facility,
                               head.receiving_application, head.receiving_facility,
                               head.control_id, head.trigger_event, head.processing_id or "P",
                               head.version or "2.5.1", head.enhanced)
            error = AckError(exc.code, str(exc), exc.segment or "", exc.field)
            return self._refuse(target, "error", error, frame, received_at, started)
        if header.message_type == "ACK":
            log.info("ignored an ACK", extra={"control_id": header.control_id})
            return None
        target = AckTarget(header.sending_application, header.sending_facility,
                           header.receiving_application, header.receiving_facility,
                           header.control_id, header.trigger_event, header.processing_id,
                           header.version, bool(header.accept_ack_type
                                                or header.application_ack_type),
                           header.accept_ack_type)
        problem = self._check_header(header.message_type, header.trigger_event,
                                     header.processing_id, header.version,
                                     header.sending_application, header.sending_facility)
        if problem is not None:
            return self._refuse(target, "reject", problem, frame, received_at, started)
        key = dedup_key(header.sending_application, header.sending_facility, header.control_id)
        try:
            previous = self.dedup.get(key)
        except Exception as exc:  # broker down: the sender must resend
            return self._unavailable(target, exc, frame, received_at, started)
        if previous is not None:
            metrics.RESENDS.inc()
            log.info("resend answered with the first ACK",
                     extra={"control_id": header.control_id})
            return self._answer(target, previous, accepted=True, started=started)
        try:
            self.enqueue(frame, received_at)
        except Exception as exc:
            return self._unavailable(target, exc, frame, received_at, started)
        code = ack_code(target, "accept")
        ack = build_ack(target, code, application=self.settings.application,
                        facility=self.settings.facility)
        try:
            self.dedup.set(key, ack, self.settings.dedup_ttl_seconds)
        except Exception:  # queued already: the worker is idempotent, a resend is harmless
            log.warning("could not record the ACK for resends",
                        extra={"control_id": header.control_id})
        log.info("queued", extra={"control_id": header.control_id})
        return self._answer(target, ack, accepted=True, started=started, code=code)

    def _check_header(self, kind: str, event: str, processing_id: str, version: str,
                      application: str, facility: str) -> AckError | None:
        s = self.settings
        if processing_id not in s.processing_ids:
            return AckError("202", f"processing id {processing_id!r} is not accepted (MSH-11)",
                            "MSH", 11)
        if version not in s.versions:
            return AckError("203", f"version {version!r} is not supported (MSH-12)", "MSH", 12)
        if kind not in ACCEPTED_EVENTS:
            return AckError("200", f"message type {kind!r} is not supported (MSH-9)", "MSH", 9)
        if event and event not in ACCEPTED_EVENTS[kind]:
            return AckError("201", f"event {kind}^{event} is not supported (MSH-9)", "MSH", 9)
        if not s.sender_allowed(application, facility):
            return AckError("207", "sending application/facility is not allowed (MSH-3/MSH-4)",
                            "MSH", 3)
        return None

    def _refuse(self, target: AckTarget, outcome: str, error: AckError, frame: bytes,
                received_at: float, started: float) -> bytes | None:
        code = ack_code(target, outcome)
        metrics.REJECTED.labels(code=code, reason=error.code).inc()
        log.warning("refused", extra={"control_id": target.control_id, "ack": code,
                                      "err": error.code})
        try:
            self.keep_rejected(Rejected(target.control_id, code, str(error.text), frame,
                                        received_at))
        except Exception:
            log.warning("could not keep a refused message for review",
                        extra={"control_id": target.control_id})
        ack = build_ack(target, code, error, self.settings.application, self.settings.facility)
        return self._answer(target, ack, accepted=False, started=started, code=code)

    def _unavailable(self, target: AckTarget, exc: Exception, frame: bytes, received_at: float,
                     started: float) -> bytes | None:
        log.error("broker unavailable: %s", type(exc).__name__,
                  extra={"control_id": target.control_id})
        error = AckError("207", "message could not be queued; resend later")
        code = ack_code(target, "reject")
        metrics.REJECTED.labels(code=code, reason="207").inc()
        ack = build_ack(target, code, error, self.settings.application, self.settings.facility)
        return self._answer(target, ack, accepted=False, started=started, code=code)

    @staticmethod
    def _answer(target: AckTarget, ack: bytes, accepted: bool, started: float,
                code: str = "") -> bytes | None:
        """Apply enhanced mode's MSH-15 (AL always, NE never, ER errors, SU successes)."""
        metrics.ACK_LATENCY.observe(time.perf_counter() - started)
        if code:
            metrics.ACKED.labels(code=code).inc()
        return ack if target.wants_accept_ack(accepted) else None
