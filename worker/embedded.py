"""The embedded default: one process, an in-memory queue and worker thread, no Redis.

What it keeps: every message ACKed is checked and its advisory delivered (with retries) while
the process runs; a graceful stop (SIGTERM, Ctrl-C) finishes the queue first. What it loses on
a crash or kill: queued messages, pending retries, the advisory store, the resend table and the
patient history. Use Redis (ORDERCHECK_REDIS_URL) for anything that must survive a restart.
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time

from worker.errors import cause_name
from worker.guideline import Knowledge
from worker.pipeline import Processor
from worker.publish import Publisher
from worker.runtime import Stores
from worker.settings import Settings

log = logging.getLogger("ordercheck.embedded")
_STOP = object()


class RetryScheduler:
    """Runs delivery retries when due, on one thread."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, int]] = []
        self._cond = threading.Condition()
        self._seq = 0
        self._stopped = False
        self.deliver: Processor | None = None
        self._thread = threading.Thread(target=self._run, name="ordercheck-retry", daemon=True)

    def start(self, processor: Processor) -> None:
        self.deliver = processor
        self._thread.start()

    def add(self, advisory_id: str, attempt: int, delay: float) -> None:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (time.monotonic() + delay, self._seq, advisory_id, attempt))
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, advisory_id, attempt = heapq.heappop(self._heap)
            try:
                assert self.deliver is not None
                self.deliver.deliver(advisory_id, attempt)
            except Exception:  # last resort: the retry thread outlives any one delivery
                log.exception("delivery retry failed")

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()


class EmbeddedRuntime:
    """Queue, worker thread and retry scheduler of the embedded default."""

    def __init__(self, settings: Settings, knowledge: Knowledge) -> None:
        self.stores = Stores(settings.model_copy(update={"redis_url": None}))
        self.scheduler = RetryScheduler()
        self.processor = Processor(
            settings, knowledge, self.stores, Publisher(settings), self.scheduler.add
        )
        self.queue: queue.Queue[object] = queue.Queue(maxsize=100_000)
        self._worker = threading.Thread(target=self._run, name="ordercheck-worker", daemon=True)

    def start(self) -> None:
        self.scheduler.start(self.processor)
        self._worker.start()

    def enqueue(self, data: bytes, received_at: float) -> None:
        self.queue.put_nowait((data, received_at))  # queue.Full refuses: the sender resends

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is _STOP:
                return
            assert isinstance(item, tuple)
            try:
                self.processor.process(item[0], item[1])
            except Exception as exc:  # last resort: one bad message never stops the worker;
                # not run again here: set aside, listed for review
                log.error("processing failed: %s; message set aside", cause_name(exc))
                self._set_aside(item[0], item[1], exc)

    def _set_aside(self, data: bytes, received_at: float, exc: Exception) -> None:
        from datetime import UTC, datetime

        from worker.hl7.parse import peek_msh
        from worker.journal import message_key
        from worker.store import DEAD_LETTER_RAW_CHARS, DeadLetter

        try:
            self.stores.store.keep_dead_letter(
                DeadLetter(
                    key=message_key(data),
                    control_id=peek_msh(data).control_id[:200],
                    attempts=1,
                    reason=f"processing failed: {cause_name(exc)}",
                    received_at=datetime.fromtimestamp(received_at, UTC),
                    dead_at=datetime.now(UTC),
                    raw=data[:DEAD_LETTER_RAW_CHARS].decode("utf-8", errors="replace"),
                    raw_bytes=len(data),
                )
            )
        except Exception:  # last resort: the worker thread lives on
            log.exception("could not set a failed message aside")

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the queued messages (up to *timeout* seconds), then stop."""
        self.queue.put(_STOP)
        self._worker.join(timeout)
        self.scheduler.stop()
        self.processor.publisher.close()
