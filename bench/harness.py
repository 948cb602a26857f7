"""Bench-only pieces for end-to-end runs against a real `ordercheck serve` (bench/chaos.py,
bench/fuzz_listener.py, tests/test_chaos.py, tests/test_security.py). The fake ordering system,
`ordercheck serve` in a subprocess, free_port, wait_until and the /proc helpers are in
tests.support (shared with the tests; the fake ordering system is the package's worker.testing,
which `ordercheck demo` uses too).

Everything listens on and talks to 127.0.0.1 only; every wait is bounded. The API, small on
purpose::

    make_order(n, run="") -> Order         Order(key, control_id, placer, message)

    RedisServer(workdir, aof=True, password=None).start()
        .url(db) .client(db) .stop(hard=False) .restart(downtime, hard=True)
        A redis-server of the run's own on a free port (never the machine's 6379); with
        aof=True: --appendonly yes --appendfsync always, so a restart loses nothing acknowledged.

    Sender(port, connections=4, rate=0).run(items) -> {key: SendResult}
        Sends (key, message) items over K connections, each until it is ACKed AA/CA (AR, AE,
        timeouts and refused connections are retried after retry_delay), paced at rate
        messages/s (0: unpaced). .acked counts AA/CA so far; on_ack(key, code) is called from
        the sending threads.

Import as `bench.harness` with the checkout's root on the path (pytest's pythonpath, or a bench
script run as `python -m bench.NAME` from the root).
"""

from __future__ import annotations

import queue
import shutil
import signal
import ssl as _ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import HOST, free_port, wait_until
from worker.hl7.ack import ack_fields
from worker.hl7.mllp import MLLPClient, MLLPError

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------ orders
@dataclass(frozen=True, slots=True)
class Order:
    key: str  # the sender's name for this send ("CH000001", "CH000001#resend")
    control_id: str  # MSH-10
    placer: str  # ORC-2 / OBR-2: what the advisory carries back (ORC-2)
    message: bytes


def make_order(n: int, run: str = "") -> Order:
    """Order number *n*: an ORM^O01 CT of the thigh before any MRI (flagged CT_BEFORE_MRI, so
    it always gets an advisory), its own patient, MSH-10 and placer number."""
    tag = f"{run}{n:07d}"
    placer = f"P{tag}"
    control = f"C{tag}"
    segments = [
        f"MSH|^~\\&|RIS|HOSP|ORDERCHECK|RAD|20261120083000||ORM^O01|{control}|P|2.3",
        f"PID|1||M{tag}^^^HOSP^MR||CHAOS^PATIENT{n}||19700101|F",
        f"ORC|NW|{placer}|||||||20261120083000|||1234^ORDERING^DOC",
        "|".join(
            [
                "OBR",
                "1",
                placer,
                "",
                "73701^CT LOWER EXTREMITY W CONTRAST^CPT4",
                *[""] * 26,
                "^Left thigh mass 6 cm deep",
            ]
        ),  # OBR-31 reason for study
    ]
    return Order(f"CH{tag}", control, placer, ("\r".join(segments) + "\r").encode())


# ------------------------------------------------------------------------------------- Redis
class RedisServer:
    """A redis-server of our own on a free 127.0.0.1 port, files in *workdir*."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        aof: bool = True,
        password: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.aof = aof
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/{db}"

    def client(self, db: int = 0) -> Any:
        import redis

        return redis.Redis.from_url(self.url(db), socket_timeout=5, socket_connect_timeout=2)

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            binary,
            "--bind",
            HOST,
            "--port",
            str(self.port),
            "--save",
            "",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self.workdir / "redis.log"),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ]
        cmd += (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.aof
            else ["--appendonly", "no"]
        )
        if self.password:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_until(self._up, timeout, f"redis-server on port {self.port}")
        return self

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"redis-server exited with {self.proc.returncode}; see {self.workdir / 'redis.log'}"
            )
        try:
            return bool(self.client().ping())
        except Exception:
            return False

    def stop(self, hard: bool = False) -> None:
        """Stop the server: SIGTERM (a clean shutdown) or, with hard, SIGKILL (a crash)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self, downtime: float = 1.0, hard: bool = True) -> None:
        """Stop (SIGKILL by default), stay down *downtime* seconds, start on the same port."""
        self.stop(hard=hard)
        time.sleep(downtime)
        self.start()
        self.restarts += 1


# ---------------------------------------------------------------------------------- sender
@dataclass(slots=True)
class SendResult:
    key: str
    code: str = ""  # MSA-1 of the last answer ("" when none came)
    attempts: int = 0
    ack: bytes = b""  # the accepting ACK


class Sender:
    """Sends messages over *connections* MLLP connections until each is accepted (AA/CA).

    Anything else (AR, AE, no answer, a refused or closed connection) is retried after
    retry_delay seconds, up to max_attempts per message; timeout: seconds per ACK;
    rate: first sends per second over all connections (0: as fast as the ACKs come back).
    """

    def __init__(
        self,
        port: int,
        connections: int = 4,
        *,
        ssl: _ssl.SSLContext | None = None,
        timeout: float = 10.0,
        retry_delay: float = 0.2,
        max_attempts: int = 300,
        rate: float = 0.0,
        on_ack: Callable[[str, str], None] | None = None,
    ) -> None:
        self.port = port
        self.connections = connections
        self.ssl = ssl
        self.timeout = timeout
        self.retry_delay = retry_delay
        self.max_attempts = max_attempts
        self.on_ack = on_ack
        self.rate = rate
        self._next_slot = 0.0
        self._lock = threading.Lock()
        self.acked = 0
        self.refused = 0  # answers other than AA/CA, and failed exchanges
        self.results: dict[str, SendResult] = {}

    def run(self, items: Iterable[tuple[str, bytes]]) -> dict[str, SendResult]:
        """Send every item; returns when each is accepted or has used its attempts."""
        work: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        for item in items:
            work.put(item)
        threads = [
            threading.Thread(target=self._worker, args=(work,), daemon=True, name=f"sender-{i}")
            for i in range(self.connections)
        ]
        for _ in threads:
            work.put(None)
        self._next_slot = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return self.results

    def _worker(self, work: queue.Queue[tuple[str, bytes] | None]) -> None:
        client = MLLPClient(HOST, self.port, connect_timeout=self.timeout, ssl=self.ssl)
        try:
            while (item := work.get()) is not None:
                self._send(client, *item)
        finally:
            client.close()

    def _pace(self) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            slot = self._next_slot
            self._next_slot = max(slot, time.monotonic()) + 1.0 / self.rate
        time.sleep(max(0.0, slot - time.monotonic()))

    def _send(self, client: MLLPClient, key: str, message: bytes) -> None:
        result = SendResult(key)
        self._pace()
        while result.attempts < self.max_attempts:
            result.attempts += 1
            try:
                reply = client.send(message, timeout=self.timeout)
            except (MLLPError, OSError):
                client.close()
                result.code = ""
            else:
                result.code = ack_fields(reply)[0]
                if result.code in ("AA", "CA"):
                    result.ack = reply
                    break
            with self._lock:
                self.refused += 1
            time.sleep(self.retry_delay)
        with self._lock:
            self.results[key] = result
            if result.code in ("AA", "CA"):
                self.acked += 1
        if self.on_ack is not None:
            self.on_ack(key, result.code)
