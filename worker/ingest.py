"""The listener's decision for received frames: check MSH, deduplicate, queue, acknowledge.

Runs in a thread of the listener (it makes blocking broker calls). The ACK is built only after
the broker accepted the message (AA / CA). Bad input gets AR or AE with an ERR segment and is
kept for review. A resend of (MSH-3, MSH-4, MSH-10) gets the same ACK again and is not queued.
An ACK is never acknowledged.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from worker import metrics
from worker.errors import HL7ParseError, StoreError, cause_name
from worker.hl7.ack import AckError, AckTarget, ack_code, build_ack
from worker.hl7.batch import Batch, build_batch_ack, is_batch, split_batch
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

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """get() of each key, in one round trip."""

    def set_many(self, items: list[tuple[str, bytes]], ttl: int) -> None:
        """set() of each (key, ack), in one round trip."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message answered AR/AE, kept for review (raw text is patient data: never logged)."""

    control_id: str
    code: str
    reason: str
    raw: bytes
    received_at: float


Enqueue = Callable[[bytes, float], None]
# Several messages at once (one broker call), recording their ACKs for resends (key, ACK) in the
# same transaction; all or nothing: raises when it did not queue them.
EnqueueWithAcks = Callable[[list[tuple[bytes, float]], list[tuple[str, bytes]]], None]
KeepRejected = Callable[[Rejected], None]


@dataclass(slots=True)
class _Accepted:
    """A frame whose MSH passed the checks: it still needs the resend lookup and the queue."""

    index: int
    target: AckTarget
    key: str
    digest: bytes = b""  # of the message's content (message_digest): a resend has the same


def message_digest(text: str) -> bytes:
    """A digest of a message's content, kept with its ACK for resends: a resend (the same
    message again, whatever its line ends, trailing blanks or MSH-7 time) has the same one; a
    different message under a used (MSH-3, MSH-4, MSH-10) does not."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\r").replace("\n", "\r").split("\r")]
    lines = [line for line in lines if line]
    if lines and len(lines[0]) > 3:
        fields = lines[0].split(lines[0][3])
        if len(fields) > 6:
            fields[6] = ""  # MSH-7: a resending engine may stamp the time again
        lines[0] = lines[0][3].join(fields)
    return hashlib.sha256("\r".join(lines).encode("utf-8")).hexdigest()[:32].encode()


def _pack(ack: bytes, digest: bytes) -> bytes:
    """What the resend table keeps: the ACK, NUL, the digest (an ACK has no NUL: escaped)."""
    return ack + b"\x00" + digest if digest else ack


def _unpack(value: bytes) -> tuple[bytes, bytes]:
    """(ACK, digest) from the resend table; no digest in entries written before there was one."""
    ack, _, digest = value.partition(b"\x00")
    return ack, digest


def nothing_to_remember() -> None:
    """The `remember` of a batch that has no ACK left to record (the caller may skip it)."""
    return None


class Ingestor:
    """Turns frames into ACKs, queueing the messages that are acceptable.

    handle_batch() takes the frames that arrived together (on any connections) and makes one
    resend lookup and one broker call (which records the ACKs for resends) for all of them:
    under a burst the listener's cost per message is a fraction of one round trip. handle() is
    a batch of one.
    """

    def __init__(
        self,
        settings: Settings,
        dedup: DedupTable,
        enqueue: Enqueue,
        keep_rejected: KeepRejected,
        enqueue_with_acks: EnqueueWithAcks | None = None,
    ) -> None:
        """enqueue_with_acks, when given, queues each batch in one call instead of *enqueue* per
        message: the ACKs are built first and recorded for resends in the queueing transaction
        (no write after). Without it, the ACKs are recorded after they are returned."""
        self.settings = settings
        self.dedup = dedup
        self.enqueue = enqueue
        self.enqueue_with_acks = enqueue_with_acks
        self.keep_rejected = keep_rejected

    def handle(self, frame: bytes) -> bytes | None:
        """The ACK bytes to send back for *frame*, or None to send nothing."""
        return self.handle_batch([frame])[0]

    def handle_batch(self, frames: list[bytes]) -> list[bytes | None]:
        """The ACK (or None) for each frame, in order. Every accepted message is queued before
        any ACK is returned; a resend (of an earlier message, or of one in the same batch) gets
        the first message's ACK and is not queued again."""
        replies, remember = self.handle_batch_early(frames)
        remember()
        return replies

    def handle_batch_early(
        self, frames: list[bytes]
    ) -> tuple[list[bytes | None], Callable[[], None]]:
        """handle_batch(), less the write of the new ACKs to the resend table, returned as a
        function to call once the ACKs are on their way (and before the next batch): the ACKs
        then wait for one round trip to Redis fewer. Until it has run, a resend of one of these
        messages would be queued again, which is harmless (the worker is idempotent).

        A frame holding an HL7 batch (FHS/BHS, worker/hl7/batch.py) has each of its messages
        judged as if it came alone, and gets one batch of their ACKs."""
        if not any(is_batch(frame) for frame in frames):
            return self._handle_messages(frames)
        flat: list[bytes] = []
        spans: list[tuple[int, int, Batch | None]] = []
        for frame in frames:
            batch = split_batch(frame)
            # A batch that holds no message is refused as one (its ACK says why, in the batch
            # answer), never answered with an empty batch: the sender must learn of it.
            messages = [frame] if batch is None or not batch.messages else batch.messages
            spans.append((len(flat), len(flat) + len(messages), batch))
            flat += messages
        replies, remember = self._handle_messages(flat)
        out: list[bytes | None] = []
        for start, end, batch in spans:
            if batch is None:
                out.append(replies[start])
                continue
            log.info("batch", extra={"messages": end - start})
            out.append(
                build_batch_ack(
                    batch, replies[start:end], self.settings.application, self.settings.facility
                )
            )
        return out, remember

    def _handle_messages(
        self, frames: list[bytes]
    ) -> tuple[list[bytes | None], Callable[[], None]]:
        """handle_batch_early() for frames that each hold one message."""
        started = time.perf_counter()
        received_at = time.time()
        metrics.INGEST_BATCH.observe(len(frames))
        replies: list[bytes | None] = [None] * len(frames)
        accepted: list[_Accepted] = []
        for i, frame in enumerate(frames):
            metrics.RECEIVED.inc()
            screened = self._screen(i, frame, received_at, started)
            if isinstance(screened, _Accepted):
                accepted.append(screened)
            else:
                replies[i] = screened
        if not accepted:
            return replies, nothing_to_remember
        try:
            previous = self.dedup.get_many([a.key for a in accepted])
        except Exception as exc:  # last resort: broker down or not, every message gets its ACK
            for a in accepted:
                replies[a.index] = self._unavailable(a.target, exc, started)
            return replies, nothing_to_remember
        first: dict[str, _Accepted] = {}  # key -> the message of this batch that is queued
        fresh: list[_Accepted] = []
        repeats: list[_Accepted] = []
        for a, prev in zip(accepted, previous, strict=True):
            if prev is not None:
                first_ack, digest = _unpack(prev)
                if digest and a.digest and digest != a.digest:
                    replies[a.index] = self._conflict(a, frames[a.index], received_at, started)
                    continue
                metrics.RESENDS.inc()
                log.info(
                    "resend answered with the first ACK", extra={"control_id": a.target.control_id}
                )
                replies[a.index] = self._answer(a.target, first_ack, accepted=True, started=started)
            elif a.key in first:
                if first[a.key].digest != a.digest:
                    replies[a.index] = self._conflict(a, frames[a.index], received_at, started)
                    continue
                repeats.append(a)
            else:
                first[a.key] = a
                fresh.append(a)
        codes = {a.key: ack_code(a.target, "accept") for a in fresh}
        acks = {
            a.key: build_ack(
                a.target,
                codes[a.key],
                application=self.settings.application,
                facility=self.settings.facility,
            )
            for a in fresh
        }
        stored = {a.key: _pack(acks[a.key], a.digest) for a in fresh}
        failed = self._queue(frames, fresh, received_at, stored)
        for a in fresh:
            if a.index in failed:
                del acks[a.key]
                del stored[a.key]
                replies[a.index] = self._unavailable(a.target, failed[a.index], started)
                continue
            code = codes[a.key]
            log.info("queued", extra={"control_id": a.target.control_id})
            replies[a.index] = self._answer(
                a.target, acks[a.key], accepted=True, started=started, code=code
            )
        for a in repeats:
            ack = acks.get(a.key)
            if ack is None:  # the first one could not be queued: neither was this one
                replies[a.index] = self._unavailable(a.target, failed[first[a.key].index], started)
                continue
            metrics.RESENDS.inc()
            replies[a.index] = self._answer(a.target, ack, accepted=True, started=started)

        if not stored or self.enqueue_with_acks is not None:  # none, or recorded with the queueing
            return replies, nothing_to_remember

        def remember() -> None:
            try:
                self.dedup.set_many(list(stored.items()), self.settings.dedup_ttl_seconds)
            except StoreError:  # queued already: the worker is idempotent, a resend is harmless
                log.warning(
                    "could not record the ACKs for resends", extra={"advisories": len(stored)}
                )

        return replies, remember

    def _screen(
        self, index: int, frame: bytes, received_at: float, started: float
    ) -> _Accepted | bytes | None:
        """MSH checks: an _Accepted to queue, or the final answer (an AR/AE ACK, or None)."""
        try:
            raw = parse_message(frame)
            header = read_header(raw)
        except HL7ParseError as exc:
            head = peek_msh(frame)
            if head.message_type.startswith("ACK"):
                return None
            target = AckTarget(
                head.sending_application,
                head.sending_facility,
                head.receiving_application,
                head.receiving_facility,
                head.exact_control_id,
                head.trigger_event,
                head.processing_id or "P",
                head.version or "2.5.1",
                head.enhanced,
            )
            error = AckError(exc.code, str(exc), exc.segment or "", exc.field)
            return self._refuse(target, "error", error, frame, received_at, started)
        if header.message_type == "ACK":
            log.info("ignored an ACK", extra={"control_id": header.control_id})
            return None
        target = AckTarget(
            header.sending_application,
            header.sending_facility,
            header.receiving_application,
            header.receiving_facility,
            raw.delimiters.decode(raw.msh.get(10)),  # MSA-2 echoes MSH-10 exactly: not trimmed
            header.trigger_event,
            header.processing_id,
            header.version,
            bool(header.accept_ack_type or header.application_ack_type),
            header.accept_ack_type,
        )
        problem = self._check_header(
            header.message_type,
            header.trigger_event,
            header.processing_id,
            header.version,
            header.sending_application,
            header.sending_facility,
        )
        if problem is not None:
            return self._refuse(target, "reject", problem, frame, received_at, started)
        key = dedup_key(header.sending_application, header.sending_facility, header.control_id)
        return _Accepted(index, target, key, message_digest(raw.text))

    def _queue(
        self,
        frames: list[bytes],
        fresh: list[_Accepted],
        received_at: float,
        acks: dict[str, bytes],
    ) -> dict[int, Exception]:
        """Queue the fresh messages; returns the frame indexes that could not be, and why."""
        if not fresh:
            return {}
        if self.enqueue_with_acks is not None:
            try:
                self.enqueue_with_acks(
                    [(frames[a.index], received_at) for a in fresh], list(acks.items())
                )
            except Exception as exc:  # last resort: whatever failed, each message gets its ACK
                return {a.index: exc for a in fresh}
            return {}
        failed: dict[int, Exception] = {}
        for a in fresh:
            try:
                self.enqueue(frames[a.index], received_at)
            except Exception as exc:  # last resort: whatever failed, each message gets its ACK
                failed[a.index] = exc
        return failed

    def _check_header(
        self,
        kind: str,
        event: str,
        processing_id: str,
        version: str,
        application: str,
        facility: str,
    ) -> AckError | None:
        s = self.settings
        if processing_id and processing_id not in s.processing_ids:  # empty: read, as by check
            return AckError(
                "202", f"processing id {processing_id!r} is not accepted (MSH-11)", "MSH", 11
            )
        if version and version not in s.versions:  # an empty MSH-12 is read, as by `check`
            return AckError("203", f"version {version!r} is not supported (MSH-12)", "MSH", 12)
        if kind not in ACCEPTED_EVENTS:
            return AckError("200", f"message type {kind!r} is not supported (MSH-9)", "MSH", 9)
        if event and event not in ACCEPTED_EVENTS[kind]:
            return AckError("201", f"event {kind}^{event} is not supported (MSH-9)", "MSH", 9)
        if not s.sender_allowed(application, facility):
            return AckError(
                "207", "sending application/facility is not allowed (MSH-3/MSH-4)", "MSH", 3
            )
        return None

    def _refuse(
        self,
        target: AckTarget,
        outcome: str,
        error: AckError,
        frame: bytes,
        received_at: float,
        started: float,
    ) -> bytes | None:
        code = ack_code(target, outcome)
        metrics.REJECTED.labels(code=code, reason=error.code).inc()
        log.warning(
            "refused", extra={"control_id": target.control_id, "ack": code, "err": error.code}
        )
        try:
            self.keep_rejected(
                Rejected(target.control_id, code, str(error.text), frame, received_at)
            )
        except Exception:  # last resort: the refusal's ACK goes out whatever keeping it did
            log.warning(
                "could not keep a refused message for review",
                extra={"control_id": target.control_id},
            )
        ack = build_ack(target, code, error, self.settings.application, self.settings.facility)
        return self._answer(target, ack, accepted=False, started=started, code=code)

    def _conflict(
        self, a: _Accepted, frame: bytes, received_at: float, started: float
    ) -> bytes | None:
        """A message under a (MSH-3, MSH-4, MSH-10) used by a different message: AE 205, kept
        for review and logged as a conflict; never answered with the other message's ACK."""
        metrics.RESENDS.inc()
        log.warning(
            "control id reused by a different message", extra={"control_id": a.target.control_id}
        )
        error = AckError(
            "205",
            "MSH-10 already used by a different message from this sender (MSH-3, MSH-4); "
            "send it with a new control id",
            "MSH",
            10,
        )
        return self._refuse(a.target, "error", error, frame, received_at, started)

    def _unavailable(self, target: AckTarget, exc: Exception, started: float) -> bytes | None:
        log.error(
            "broker unavailable: %s", cause_name(exc), extra={"control_id": target.control_id}
        )
        error = AckError("207", "message could not be queued; resend later")
        code = ack_code(target, "reject")
        metrics.REJECTED.labels(code=code, reason="207").inc()
        ack = build_ack(target, code, error, self.settings.application, self.settings.facility)
        return self._answer(target, ack, accepted=False, started=started, code=code)

    @staticmethod
    def _answer(
        target: AckTarget, ack: bytes, accepted: bool, started: float, code: str = ""
    ) -> bytes | None:
        """Apply enhanced mode's MSH-15 (AL always, NE never, ER errors, SU successes)."""
        metrics.ACK_LATENCY.observe(time.perf_counter() - started)
        if code:
            metrics.ACKED.labels(code=code).inc()
        return ack if target.wants_accept_ack(accepted) else None
