"""Test seams shipped with the package (tests, bench and chaos runs use them): a fake ordering
system (an MLLP server that ACKs advisories) and `ordercheck serve` in a subprocess.
Everything listens on 127.0.0.1 only and every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from worker.hl7.ack import ack_fields
from worker.hl7.mllp import MLLPClient, MLLPServer
from worker.hl7.parse import peek_msh

ROOT = Path(__file__).resolve().parent.parent  # the checkout, for `python -m worker.cli`


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class FakeOrderingSystem:
    """An MLLP server that ACKs advisories (AA, MSA-2 = their MSH-10) and keeps them.

    keep=False: a counter-only mode for long runs (bench): frames are counted in ``count``, not
    kept. on_frame: called with each frame as it arrives, on the server's thread (for timing).
    """

    def __init__(self, port: int | None = None, keep: bool = True,
                 on_frame: Callable[[bytes], None] | None = None) -> None:
        self.port = port or free_port()
        self.received: list[bytes] = []
        self.keep = keep
        self.on_frame = on_frame
        self.count = 0
        self.delay = 0.0  # seconds to wait before answering
        self.answer = "AA"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: MLLPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def _handle(self, frame: bytes) -> bytes:
        with self._lock:
            self.count += 1
            if self.keep:
                self.received.append(frame)
        if self.on_frame is not None:
            self.on_frame(frame)
        if self.delay:
            await asyncio.sleep(self.delay)
        control = peek_msh(frame).control_id
        return (f"MSH|^~\\&|RIS|HOSP|ORDERCHECK|ORDERCHECK|20261125||ACK^R01^ACK|R{control}|P|"
                f"2.5.1\rMSA|{self.answer}|{control}\r").encode()

    def start(self) -> FakeOrderingSystem:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            server = MLLPServer(self._handle, host="127.0.0.1", port=self.port,
                                idle_timeout=30)
            self._server = server
            loop.run_until_complete(server.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(server.close(1.0))
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(5), "fake ordering system did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop = None

    def advisories(self) -> list[bytes]:
        with self._lock:
            return [f for f in self.received if b"ORU^R01" in f or b"76515-6" in f]

    def for_placer(self, placer: str) -> list[bytes]:
        return [a for a in self.advisories() if f"ORC|RE|{placer}|".encode() in a]


class Serve:
    """`ordercheck serve` in a subprocess with the given environment."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        full = {k: v for k, v in os.environ.items() if not k.startswith("ORDERCHECK_")}
        full.update(env)
        full["ORDERCHECK_LISTEN_PORT"] = str(self.port)
        full.setdefault("ORDERCHECK_DELIVERY_BACKOFF", "0.2")
        full.setdefault("ORDERCHECK_DELIVERY_RETRIES", "30")
        full.setdefault("ORDERCHECK_ADVISORY_ACK_TIMEOUT", "5")
        self.proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "serve"], env=full,
                                     cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        wait_until(self._listening, 30, "ordercheck serve to listen")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise AssertionError(f"ordercheck serve exited: {err[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def client(self) -> MLLPClient:
        return MLLPClient("127.0.0.1", self.port, connect_timeout=5)

    def send(self, message: bytes, timeout: float = 10) -> tuple[str, str, bytes]:
        with self.client() as c:
            reply = c.send(message, timeout=timeout)
        code, control = ack_fields(reply)
        return code, control, reply

    def worker_children(self) -> list[int]:
        """Pids of the Celery pool processes (grandchildren of serve)."""
        out: list[int] = []
        for celery in _children(self.proc.pid):
            out.extend(_children(celery))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]
