"""Pieces for end-to-end runs against a real `ordercheck serve` (bench/chaos.py, bench/e2e.py).

Everything listens on and talks to 127.0.0.1 only; every wait is bounded. The API, small on
purpose::

    free_port() -> int                     wait_until(predicate, timeout, what)
    make_order(n, run="") -> Order         Order(key, control_id, placer, message)
    children(pid) -> [pid]                 alive(pid) -> bool (not gone, not a zombie)
    rss_kb(pid) -> int                     (from /proc; Linux only)

    RedisServer(workdir, aof=True, password=None).start()
        .url(db) .client(db) .stop(hard=False) .restart(downtime, hard=True)
        A redis-server of the run's own on a free port (never the machine's 6379); with
        aof=True: --appendonly yes --appendfsync always, so a restart loses nothing acknowledged.

    FakeOrderingSystem(port=None, ssl=None).start()
        .stop() (connections are then refused)  .start() again on the same port
        .advisories() -> [Advisory(control_id, placer, body, at)]   .by_placer() -> {placer: [...]}
        An MLLP server in a thread that ACKs every advisory AA with MSA-2 = its MSH-10.

    Serve(env, workdir, port=None).start()
        .port .pid .pool_pids() .rss_kb(pid=None) .log_text() .alive() .stop()
        `ordercheck serve` in a subprocess (its own session), ORDERCHECK_* taken from env only;
        stderr goes to workdir/serve.log (a pipe would fill up and stall the server).

    Sender(port, connections=4, rate=0).run(items) -> {key: SendResult}
        Sends (key, message) items over K connections, each until it is ACKed AA/CA (AR, AE,
        timeouts and refused connections are retried after retry_delay), paced at rate
        messages/s (0: unpaced). .acked counts AA/CA so far; on_ack(key, code) is called from
        the sending threads.

Import with `sys.path.insert(0, "<checkout>/bench")` then `import harness`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import shutil
import signal
import socket
import ssl as _ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from worker.hl7.ack import ack_fields  # noqa: E402
from worker.hl7.mllp import MLLPClient, MLLPError, MLLPServer  # noqa: E402
from worker.hl7.parse import peek_msh  # noqa: E402

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.05) -> None:
    """Poll *predicate* until it is true; AssertionError after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


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
        "|".join(["OBR", "1", placer, "", "73701^CT LOWER EXTREMITY W CONTRAST^CPT4",
                  *[""] * 26, "^Left thigh mass 6 cm deep"]),  # OBR-31 reason for study
    ]
    return Order(f"CH{tag}", control, placer, ("\r".join(segments) + "\r").encode())


# ------------------------------------------------------------------------------------- Redis
class RedisServer:
    """A redis-server of our own on a free 127.0.0.1 port, files in *workdir*."""

    def __init__(self, workdir: Path, *, port: int | None = None, aof: bool = True,
                 password: str | None = None) -> None:
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
        cmd = [binary, "--bind", HOST, "--port", str(self.port), "--save", "",
               "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log"),
               "--daemonize", "no", "--protected-mode", "yes"]
        cmd += (["--appendonly", "yes", "--appendfsync", "always"] if self.aof
                else ["--appendonly", "no"])
        if self.password:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_until(self._up, timeout, f"redis-server on port {self.port}")
        return self

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see "
                               f"{self.workdir / 'redis.log'}")
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


class FakeOrderingSystem:
    """An MLLP server (in a thread) that ACKs advisories AA, MSA-2 = their MSH-10, and keeps
    them. stop() then start() makes a refusal window: connections are refused in between."""

    def __init__(self, port: int | None = None, ssl: _ssl.SSLContext | None = None) -> None:
        self.port = port or free_port()
        self.ssl = ssl
        self._received: list[Advisory] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def _handle(self, message: bytes) -> bytes:
        control = peek_msh(message).control_id
        with self._lock:
            self._received.append(Advisory(control, _placer(message), message,
                                           time.monotonic()))
        return (f"MSH|^~\\&|RIS|HOSP|ORDERCHECK|ORDERCHECK|20261125000000||ACK^R01^ACK|"
                f"R{control}|P|2.5.1\rMSA|AA|{control}\r").encode()

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
            server = MLLPServer(self._handle, host=HOST, port=self.port, idle_timeout=60,
                                max_connections=1000, ssl=self.ssl)
            try:
                loop.run_until_complete(server.start())
            except BaseException as exc:
                failed.append(exc)
                ready.set()
                loop.close()
                return
            self._loop = loop
            ready.set()
            loop.run_forever()
            loop.run_until_complete(server.close(1.0))
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-ordering-system", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failed:
            self._thread = None
            raise RuntimeError(f"fake ordering system did not start: {failed}")
        return self

    def stop(self) -> None:
        """Close the listener and every connection; new connections are refused."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = None
        self._thread = None

    def advisories(self) -> list[Advisory]:
        with self._lock:
            return list(self._received)

    def count(self) -> int:
        with self._lock:
            return len(self._received)

    def by_placer(self) -> dict[str, list[Advisory]]:
        out: dict[str, list[Advisory]] = {}
        for a in self.advisories():
            out.setdefault(a.placer, []).append(a)
        return out


# ------------------------------------------------------------------------------ the server
def children(pid: int) -> list[int]:
    """Child pids of *pid* (every thread's children)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            out += [int(p) for p in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
    return out


def alive(pid: int) -> bool:
    """True when *pid* runs (not gone, not a zombie waiting for its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def rss_kb(pid: int) -> int:
    """Resident set size of *pid* in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Serve:
    """`ordercheck serve` in a subprocess; ORDERCHECK_* variables come from *env* only."""

    def __init__(self, env: Mapping[str, str], workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = Path(workdir)
        self.log_path = self.workdir / "serve.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERCHECK_")}
        self.env.update(env)
        self.env["ORDERCHECK_LISTEN_HOST"] = HOST
        self.env["ORDERCHECK_LISTEN_PORT"] = str(self.port)
        metrics = self.workdir / "metrics"
        metrics.mkdir(parents=True, exist_ok=True)
        self.env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> Serve:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "serve"], env=self.env, cwd=ROOT,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        wait_until(self._listening, timeout, "ordercheck serve to listen")
        if self.env.get("ORDERCHECK_REDIS_URL"):
            want = int(self.env.get("ORDERCHECK_WORKERS") or os.cpu_count() or 1)
            wait_until(lambda: len(self.pool_pids()) >= want, timeout,
                       f"{want} Celery pool processes")
            time.sleep(1.0)  # the pool's start-up: a pool process killed now takes celery down
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"ordercheck serve exited: {self.log_text()[-2000:]}")
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def pool_pids(self) -> list[int]:
        """Pids of the running Celery pool processes (children of the celery worker child)."""
        return sorted(p for celery in children(self.pid) for p in children(celery)
                      if alive(p))

    def rss_kb(self, pid: int | None = None) -> int:
        return rss_kb(pid or self.pid)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM (graceful), SIGKILL of the whole session after *timeout* seconds."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the celery worker and pool, if left
        if self.proc.poll() is None:
            self.proc.wait(5)
        return self.proc.returncode


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

    def __init__(self, port: int, connections: int = 4, *, ssl: _ssl.SSLContext | None = None,
                 timeout: float = 10.0, retry_delay: float = 0.2, max_attempts: int = 300,
                 rate: float = 0.0, on_ack: Callable[[str, str], None] | None = None) -> None:
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
        threads = [threading.Thread(target=self._worker, args=(work,), daemon=True,
                                    name=f"sender-{i}") for i in range(self.connections)]
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
