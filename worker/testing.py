"""In-process fakes shipped with the package: `ordercheck demo` uses the fake ordering system,
and the tests and bench runs use it too (their subprocess launchers and /proc readers are in the
checkout's tests/support/, not here). Everything listens on and talks to 127.0.0.1 only.

    free_port() -> int                     a TCP port free on 127.0.0.1 right now

    FakeOrderingSystem(port=None, *, ssl=None, keep=True, on_frame=None).start()
        An MLLP server in a thread that ACKs every advisory (MSA-1 = .answer, "AA"; MSA-2 = its
        MSH-10), after .delay seconds (0). .stop() closes it (connections are then refused),
        .start() again opens it on the same port. Kept: .advisories() -> [Advisory(control_id,
        placer, body, at)], .for_placer(placer) -> [Advisory], .by_placer() -> {placer: [...]};
        .count() -> frames received. keep=False: counted only (long runs); on_frame(body) is
        called on the server's thread as each frame arrives.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as _ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from worker.hl7.mllp import MLLPServer
from worker.hl7.parse import peek_msh

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------ ordering system
@dataclass(frozen=True, slots=True)
class Advisory:
    control_id: str  # MSH-10 of the advisory
    placer: str  # first component of ORC-2 (the order's placer number)
    body: bytes
    at: float  # time.monotonic() when received


def _placer(message: bytes) -> str:
    for seg in message.split(b"\r"):
        if seg.startswith(b"ORC|"):
            fields = seg.split(b"|")
            return fields[2].split(b"^")[0].decode("latin-1") if len(fields) > 2 else ""
    return ""


async def _settle() -> None:
    """After the server closed: let the connections it had no task for yet (accepted, or in a
    TLS handshake, as it closed) end and release their sockets before the loop is closed."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        await asyncio.wait(others, timeout=2)
    for _ in range(3):  # a transport closed just now lets its socket go on a later iteration
        await asyncio.sleep(0.01)


class FakeOrderingSystem:
    """An MLLP server (in a thread) that ACKs advisories, MSA-2 = their MSH-10, and keeps them.

    stop() then start() makes a refusal window: connections are refused in between.
    keep=False: a counter-only mode for long runs; frames are counted (count()), not kept.
    on_frame: called with each frame as it arrives, on the server's thread (for timing).
    delay: seconds to wait before answering (the frame is kept first); answer: MSA-1.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        ssl: _ssl.SSLContext | None = None,
        keep: bool = True,
        on_frame: Callable[[bytes], None] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.ssl = ssl
        self.keep = keep
        self.on_frame = on_frame
        self.delay = 0.0
        self.answer = "AA"
        self._received: list[Advisory] = []
        self._count = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: MLLPServer | None = None

    async def _handle(self, message: bytes) -> bytes:
        control = peek_msh(message).control_id
        with self._lock:
            self._count += 1
            if self.keep:
                self._received.append(
                    Advisory(control, _placer(message), message, time.monotonic())
                )
        if self.on_frame is not None:
            self.on_frame(message)
        if self.delay:
            await asyncio.sleep(self.delay)
        return (
            f"MSH|^~\\&|RIS|HOSP|ORDERCHECK|ORDERCHECK|20261125000000||ACK^R01^ACK|"
            f"R{control}|P|2.5.1\rMSA|{self.answer}|{control}\r"
        ).encode()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> FakeOrderingSystem:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            server = MLLPServer(
                self._handle,
                host=HOST,
                port=self.port,
                idle_timeout=60,
                max_connections=1000,
                ssl=self.ssl,
            )
            try:
                loop.run_until_complete(server.start())
            except BaseException as exc:
                failed.append(exc)
                ready.set()
                loop.close()
                return
            self._loop = loop
            self._server = server
            ready.set()
            loop.run_forever()
            loop.run_until_complete(server.close(1.0))
            loop.run_until_complete(_settle())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-ordering-system", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failed:
            self._thread = None
            raise RuntimeError(f"fake ordering system did not start: {failed}")
        return self

    @property
    def connection_count(self) -> int:
        """Connections open to it right now."""
        return self._server.connection_count if self._server is not None else 0

    def stop(self) -> None:
        """Close the listener and every connection; new connections are refused."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = None
        self._thread = None
        self._server = None

    def advisories(self) -> list[Advisory]:
        with self._lock:
            return list(self._received)

    def count(self) -> int:
        """Frames received so far (kept or not)."""
        with self._lock:
            return self._count

    def by_placer(self) -> dict[str, list[Advisory]]:
        out: dict[str, list[Advisory]] = {}
        for a in self.advisories():
            out.setdefault(a.placer, []).append(a)
        return out

    def for_placer(self, placer: str) -> list[Advisory]:
        return [a for a in self.advisories() if a.placer == placer]
