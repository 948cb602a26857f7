"""Subprocess launchers and /proc readers for the tests and bench runs (bench/e2e.py,
bench/chaos.py, bench/fuzz_listener.py). Everything listens on and talks to 127.0.0.1 only;
every wait is bounded. Linux only where /proc is read.

    wait_until(predicate, timeout, what, interval=0.05)
    children(pid) -> [pid]                 alive(pid) -> bool (not gone, not a zombie)
    rss_kb(pid, peak=False) -> int         (VmRSS, or VmHWM with peak; 0 when gone)

    Serve(env, workdir=None, port=None).start()
        .port .pid .proc .pool_pids() .rss_kb(pid=None) .log_text() .alive() .client() .send()
        .stop()
        `ordercheck serve` in a subprocess (its own session); ORDERCHECK_* variables come from
        *env* only (quick-delivery defaults below unless env sets them). With a workdir: the
        log goes to workdir/serve.log and Prometheus multiprocess files to workdir/metrics;
        without one: stderr is read by a thread into a tail of its last lines (a pipe nobody
        reads would fill up and stall the server).

The in-process fake ordering system (FakeOrderingSystem) and free_port are the package's own
(worker.testing, which `ordercheck demo` uses); tests.support re-exports them.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from worker.hl7.ack import ack_fields
from worker.hl7.mllp import MLLPClient
from worker.testing import HOST, free_port

ROOT = Path(__file__).resolve().parents[2]  # the checkout, for `python -m worker.cli`

# Serve's environment unless the caller's sets them: deliveries retried quickly and often.
SERVE_DEFAULTS = {
    "ORDERCHECK_DELIVERY_BACKOFF": "0.2",
    "ORDERCHECK_DELIVERY_RETRIES": "30",
    "ORDERCHECK_ADVISORY_ACK_TIMEOUT": "5",
}


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll *predicate* every *interval* seconds until it is truthy; AssertionError after
    *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


# ----------------------------------------------------------------------------------- /proc
def children(pid: int) -> list[int]:
    """Child pids of *pid* (the children of every one of its threads)."""
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


def rss_kb(pid: int, peak: bool = False) -> int:
    """Resident set size of *pid* in KiB (VmRSS), or with *peak* its high-water mark (VmHWM);
    0 when it is gone."""
    key = "VmHWM:" if peak else "VmRSS:"
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


# ------------------------------------------------------------------------------ the server
class Serve:
    """`ordercheck serve` in a subprocess; ORDERCHECK_* variables come from *env* only."""

    TAIL_LINES = 400  # lines of stderr kept without a workdir

    def __init__(
        self, env: Mapping[str, str], workdir: Path | None = None, port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.workdir = Path(workdir) if workdir is not None else None
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERCHECK_")}
        self.env.update(SERVE_DEFAULTS)
        self.env.update(env)
        self.env["ORDERCHECK_LISTEN_HOST"] = HOST
        self.env["ORDERCHECK_LISTEN_PORT"] = str(self.port)
        if self.workdir is not None:
            self.env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(self.workdir / "metrics"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=self.TAIL_LINES)
        self._reader: threading.Thread | None = None

    @property
    def log_path(self) -> Path | None:
        return self.workdir / "serve.log" if self.workdir is not None else None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> Serve:
        """Start it; return once it listens and, in Redis mode, its Celery pool is up."""
        cmd = [sys.executable, "-m", "worker.cli", "serve"]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            Path(self.env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    cmd,
                    env=self.env,
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
        else:
            self.proc = subprocess.Popen(
                cmd,
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            assert self.proc.stderr is not None
            self._reader = threading.Thread(
                target=self._read, args=(self.proc.stderr,), name="serve-stderr", daemon=True
            )
            self._reader.start()
        wait_until(self._listening, timeout, "ordercheck serve to listen")
        if self.env.get("ORDERCHECK_REDIS_URL"):
            want = int(self.env.get("ORDERCHECK_WORKERS") or os.cpu_count() or 1)
            wait_until(
                lambda: len(self.pool_pids()) >= want, timeout, f"{want} Celery pool processes"
            )
            time.sleep(1.0)  # the pool's start-up: a pool process killed now takes celery down
        return self

    def _read(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            self._tail.append(line.decode("utf-8", "replace").rstrip("\n"))

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            if self._reader is not None:
                self._reader.join(5)
            raise RuntimeError(f"ordercheck serve exited: {self.log_text()[-2000:]}")
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def log_text(self) -> str:
        """The log (with a workdir) or the last TAIL_LINES lines of stderr (without)."""
        if self.log_path is None:
            return "\n".join(list(self._tail))
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def pool_pids(self) -> list[int]:
        """Pids of the running Celery pool processes (children of the celery worker child)."""
        return sorted(p for celery in children(self.pid) for p in children(celery) if alive(p))

    def rss_kb(self, pid: int | None = None, peak: bool = False) -> int:
        return rss_kb(pid or self.pid, peak)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self) -> MLLPClient:
        return MLLPClient(HOST, self.port, connect_timeout=5)

    def send(self, message: bytes, timeout: float = 10) -> tuple[str, str, bytes]:
        """One message on a new connection: (MSA-1, MSA-2, the ACK)."""
        with self.client() as c:
            reply = c.send(message, timeout=timeout)
        code, control = ack_fields(reply)
        return code, control, reply

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
        if self._reader is not None:
            self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode
