"""`ordercheck serve`: the MLLP listener plus workers, embedded or on Redis.

Embedded (no ORDERCHECK_REDIS_URL): one process, see worker/embedded.py.
Redis: the listener queues Celery tasks; `serve` also starts a Celery worker with one process
per CPU core (ORDERCHECK_WORKERS), starts it again should it exit, and stops it gracefully with
the listener. Both modes purge advisories older than ORDERCHECK_RETENTION_DAYS at start and daily.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import functools
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from worker.errors import StoreError, cause_name
from worker.guideline import Knowledge, load_knowledge
from worker.hl7.ack import AckError, AckTarget, build_ack
from worker.hl7.mllp import FrameError, FrameErrorKind, MLLPServer
from worker.ingest import EnqueueWithAcks, Ingestor, Rejected, nothing_to_remember
from worker.journal import Journal, journaled_direct, requeue_stale
from worker.runtime import Stores, redis_client
from worker.settings import Settings
from worker.store import (
    REJECTED_RAW_CHARS,
    RedisStore,
    RejectedEntry,
    purge_expired,
    redis_errors,
)

log = logging.getLogger("ordercheck.serve")
PURGE_INTERVAL = 24 * 3600.0  # seconds between two purges of expired advisories


def listener_ssl(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key) if settings.tls_key else None)
    if settings.tls_client_ca is not None:
        ctx.load_verify_locations(str(settings.tls_client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _keeper(stores: Stores) -> Callable[[Rejected], None]:
    from datetime import UTC, datetime

    def keep(r: Rejected) -> None:
        stores.store.keep_rejected(
            RejectedEntry(
                control_id=r.control_id,
                ack_code=r.code,
                reason=r.reason,
                received_at=datetime.fromtimestamp(r.received_at, UTC),
                raw=r.raw[:REJECTED_RAW_CHARS].decode("utf-8", errors="replace"),
                raw_bytes=len(r.raw),
            )
        )

    return keep


class Batcher:
    """Hands the frames that arrive together, on any connection, to the ingestor as one batch.

    A frame that arrives while no batch is being handled starts one at once, alone (no added
    latency when traffic is light); frames that arrive while a batch is in the thread pool wait
    for it and form the next batch (at most *max_batch*), so under a burst one resend lookup, one
    broker call and one resend-table write serve many messages. In a burst (the last batch had
    3 frames or more and 2 are waiting already) the next batch waits *linger* seconds more to
    fill. When *behind* says the workers are behind (the broker queue is growing), every batch
    waits *behind_linger* seconds to fill: fewer, larger tasks cost the workers less per message,
    so they catch up, at the price of that wait on each ACK. *peers* gives the number of open
    connections: a connection sends its next frame only after its ACK (the server reads one
    frame at a time), so once every connection has a frame waiting no other can come, and a
    wait ends then. Each frame's ACK is returned once its batch is queued; the batch's ACKs are
    written to the resend table after they are returned, before the next batch is looked up.
    """

    def __init__(
        self,
        handle_batch: Callable[[list[bytes]], tuple[list[bytes | None], Callable[[], None]]],
        pool: ThreadPoolExecutor,
        max_batch: int = 100,
        linger: float = 0.002,
        behind: Callable[[], bool] | None = None,
        behind_linger: float = 0.0,
        peers: Callable[[], int] | None = None,
    ) -> None:
        self.handle_batch = handle_batch
        self.linger = linger
        self.behind = behind
        self.behind_linger = behind_linger
        self.peers = peers
        self.pool = pool
        self.max_batch = max_batch
        self._pending: list[tuple[bytes, asyncio.Future[bytes | None]]] = []
        self._full: asyncio.Future[None] | None = None  # set once the batch cannot grow
        self._full_at = 0
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()  # held: the loop keeps weak references

    async def submit(self, frame: bytes) -> bytes | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        self._pending.append((frame, future))
        if self._full is not None and not self._full.done() and len(self._pending) >= self._full_at:
            self._full.set_result(None)
        if not self._inflight:
            self._inflight += 1
            task = loop.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _fill(self, seconds: float) -> None:
        """Wait *seconds* for more frames, or less: until every connection has one waiting."""
        if self.peers is None:
            await asyncio.sleep(seconds)
            return
        self._full_at = min(self.max_batch, max(1, self.peers()))
        if len(self._pending) >= self._full_at:
            return
        self._full = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait((self._full,), timeout=seconds)
        finally:
            self._full = None

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        last = 0
        try:
            while self._pending:
                if last >= 3 and 2 <= len(self._pending) < self.max_batch and self.linger:
                    await self._fill(self.linger)  # a burst: let the batch fill a little
                elif (
                    self.behind_linger
                    and len(self._pending) < self.max_batch
                    and self.behind is not None
                    and self.behind()
                ):
                    await self._fill(self.behind_linger)  # workers behind: fewer tasks
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                last = len(batch)
                try:
                    replies, remember = await loop.run_in_executor(
                        self.pool, self.handle_batch, [frame for frame, _ in batch]
                    )
                except Exception as exc:  # a bug: each waiting connection sees it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), reply in zip(batch, replies, strict=True):
                    if not future.done():  # its connection may have gone meanwhile
                        future.set_result(reply)
                if remember is nothing_to_remember:
                    continue
                try:
                    await loop.run_in_executor(self.pool, remember)  # before the next lookup
                except Exception as exc:  # a bug: the ACKs are out, resends get queued again
                    log.error("recording ACKs for resends failed: %s", type(exc).__name__)
        finally:
            self._inflight -= 1


class Service:
    """The listener and its workers; start() then wait(); stop() is graceful."""

    def __init__(self, settings: Settings, knowledge: Knowledge | None = None) -> None:
        self.settings = settings
        self.knowledge = knowledge or load_knowledge(
            settings.code_map, protocols=settings.protocols_file
        )  # a bad rule file fails here
        self.embedded: Any = None
        self.queued = 0  # tasks waiting in the broker queue after our last push
        self.celery: CeleryWorker | None = None
        if settings.redis_url:
            from worker import tasks
            from worker.celery_app import QUEUE

            self.stores = Stores(settings)
            # Each message goes to the journal before the queue: see worker/journal.py.
            self.journal = Journal(redis_client(settings.redis_url))
            assert isinstance(self.stores.store, RedisStore)
            store: RedisStore = self.stores.store

            def record_acks(pipe: Any, acks: list[tuple[str, bytes]]) -> None:
                store.queue_dedup_set_many(pipe, acks, settings.dedup_ttl_seconds)

            # The message, its journal entry and its ACK for resends: one transaction.
            journaled_many = journaled_direct(
                self.journal,
                tasks.validate_batch.name,
                QUEUE,
                settings.task_time_limit,
                on_queued=self._on_queued,
                record_acks=record_acks,
                merge_when=lambda: self.queued > settings.batch_when_queued,
                max_task_messages=settings.max_task_messages,
            )
            enqueue_with_acks: EnqueueWithAcks | None = journaled_many

            def enqueue(data: bytes, received_at: float) -> None:
                journaled_many([(data, received_at)], [])
        else:
            from worker.embedded import EmbeddedRuntime

            self.embedded = EmbeddedRuntime(settings, self.knowledge)
            self.stores = self.embedded.stores
            enqueue = self.embedded.enqueue
            enqueue_with_acks = None
        self.ingestor = Ingestor(
            settings,
            self.stores.dedup,
            enqueue,
            _keeper(self.stores),
            enqueue_with_acks=enqueue_with_acks,
        )
        # One thread: the batcher hands it one batch at a time (and one thread keeps one malloc
        # arena: the listener's memory stays flat over a long run).
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ordercheck-ingest")
        self.batcher = Batcher(
            self.ingestor.handle_batch_early,
            self.pool,
            behind=lambda: self.queued > settings.batch_when_queued,
            behind_linger=settings.batch_linger_behind,
            peers=lambda: self.server.connection_count,
        )
        self.server = MLLPServer(
            self._on_frame,
            on_error=self._on_frame_error,
            host=settings.listen_host,
            port=settings.listen_port,
            max_frame_bytes=settings.max_frame_bytes,
            idle_timeout=settings.idle_timeout,
            max_connections=settings.max_connections,
            ssl=listener_ssl(settings),
            max_per_peer=settings.max_connections_per_peer,
        )
        self.http: ThreadingHTTPServer | None = None
        self.accepting = False  # the MLLP listener accepts connections (workers ready)
        self._background: list[asyncio.Task[None]] = []

    async def _on_frame(self, frame: bytes) -> bytes | None:
        return await self.batcher.submit(frame)

    async def _on_frame_error(self, error: FrameError) -> bytes | None:
        if error.kind is FrameErrorKind.OVERSIZE:
            return build_ack(
                AckTarget(),
                "AR",
                AckError("207", f"frame larger than {self.settings.max_frame_bytes} bytes"),
                self.settings.application,
                self.settings.facility,
            )
        return None  # junk between frames is ignored; the next frame is served

    def _on_queued(self, length: int) -> None:
        self.queued = length

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        """bind() then start_workers(): StartupError (one line) when either fails, with
        everything started so far stopped again."""
        await self.bind()
        await self.start_workers()

    def _mllp_in_use(self) -> str:
        return (
            f"cannot listen on {self.settings.listen_host}:{self.settings.listen_port} (MLLP, "
            f"ORDERCHECK_LISTEN_PORT)"
        )

    async def bind(self) -> None:
        """Check the MLLP port is free and bind /health and /metrics, before any worker
        starts: a port in use fails here, named, and leaves no Celery worker behind. The MLLP
        listener itself starts accepting in start_workers(), once the workers are ready, so no
        order is ACKed while nobody could check it."""
        host = self.settings.listen_host
        if self.settings.listen_port:
            try:
                port_free(host, self.settings.listen_port)
            except OSError as exc:
                raise StartupError(f"{self._mllp_in_use()}: {exc.strerror or exc}") from None
        if self.settings.metrics_port is not None:
            try:
                self.http = start_http(
                    host, self.settings.metrics_port, self.health, self.ops_collector()
                )
            except OSError as exc:
                raise StartupError(
                    f"cannot listen on {host}:{self.settings.metrics_port} (/health and "
                    f"/metrics, ORDERCHECK_METRICS_PORT): {exc.strerror or exc}"
                ) from None

    async def start_workers(self, timeout: float | None = None) -> None:
        """Start the workers; in Redis mode wait until the Celery worker says it is ready
        (StartupError naming the cause when it exits or stays silent for *timeout* seconds).
        Then accept MLLP connections (StartupError, the worker stopped, should the port have
        been taken meanwhile)."""
        if self.embedded is not None:
            self.embedded.start()
        else:
            self.celery = start_celery_worker(self.settings)
            loop = asyncio.get_running_loop()
            problem = await loop.run_in_executor(
                None, self.celery.wait_ready, timeout or WORKER_START_TIMEOUT
            )
            if problem is not None:
                await self.stop(grace=0)
                raise StartupError(problem)
            self._background.append(asyncio.create_task(self._supervise()))
            self._background.append(asyncio.create_task(self._requeue_lost()))
        try:
            await self.server.start()
        except OSError as exc:
            await self.stop(grace=0)
            raise StartupError(f"{self._mllp_in_use()}: {exc.strerror or exc}") from None
        self.accepting = True
        self._background.append(asyncio.create_task(self._purge_daily()))
        if self.settings.memory_release_interval and release_free_memory():
            self._background.append(asyncio.create_task(self._release_memory()))
        mode = "redis" if self.settings.redis_url else "embedded"
        log.warning(
            "ordercheck listening on %s:%d (%s mode)", self.settings.listen_host, self.port, mode
        )

    def health(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "listener": "ok" if self.accepting else "starting",
            "mode": "redis" if self.settings.redis_url else "embedded",
        }
        if self.settings.redis_url:
            from worker.runtime import redis_client

            try:
                with redis_errors:
                    redis_client(self.settings.redis_url).ping()
                state["redis"] = "ok"
            except StoreError as exc:
                state["redis"] = f"down: {cause_name(exc)}"
            state["workers"] = "ok" if self.celery and self.celery.poll() is None else "down"
        else:
            state["queue"] = self.embedded.queue.qsize()
        state["status"] = (
            "ok"
            if all(v == "ok" for k, v in state.items() if k in ("listener", "redis", "workers"))
            else "degraded"
        )
        # Delivery, like an integration engine's channel view: informational, it does not
        # turn the status (an ordering system that is down is not a reason to restart us).
        from worker.opsview import overview

        try:
            view = overview(self.stores.store, self.settings)
        except StoreError as exc:  # Redis down: said above
            state["delivery"] = f"unknown: {cause_name(exc)}"
            return state
        state["pending"] = view.pending
        state["undelivered"] = view.undelivered
        state["not_sent"] = view.not_sent
        state["destinations"] = {n: d.as_json() for n, d in sorted(view.destinations.items())}
        return state

    def queue_depth(self) -> int:
        if self.embedded is not None:
            return int(self.embedded.queue.qsize())
        from worker.celery_app import QUEUE

        return int(redis_client(self.settings.redis_url).llen(QUEUE))

    def workers_up(self) -> int:
        if self.embedded is not None:
            return 1
        return 1 if self.celery is not None and self.celery.poll() is None else 0

    def ops_collector(self) -> Any:
        from worker.opsview import OpsCollector

        return OpsCollector(self.stores.store, self.settings, self.queue_depth, self.workers_up)

    async def _supervise(self, interval: float = 1.0, longest: float = 60.0) -> None:
        """Start the Celery worker again when it exits (a crash must not stop processing),
        waiting twice as long after each exit that came before it was ready (up to *longest*
        seconds): a worker that cannot start is not restarted every second forever."""
        wait = interval
        while True:
            await asyncio.sleep(wait)
            if self.celery is None or self.celery.poll() is None:
                if self.celery is not None and self.celery.poll_ready():
                    wait = interval
                continue
            was_ready = self.celery.ready
            wait = interval if was_ready else min(longest, wait * 2)
            log.error(
                "celery worker exited with status %s (%s); starting it again in %.0f s",
                self.celery.returncode,
                self.celery.cause(),
                wait,
            )
            self.celery.stop(timeout=1)  # exited already: closes its pipe, ends its relay
            await asyncio.sleep(wait - interval)
            self.celery = start_celery_worker(self.settings)

    async def _requeue_lost(self) -> None:
        """Queue again accepted messages no worker processed (worker/journal.py): those still
        in the journal after twice the broker's visibility timeout, with the queue empty."""
        from worker import tasks
        from worker.celery_app import QUEUE

        grace = 2.0 * self.settings.broker_visibility_timeout
        client = redis_client(self.settings.redis_url)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(60.0, grace / 4))
            try:
                await loop.run_in_executor(
                    None,
                    requeue_stale,
                    self.journal,
                    tasks.enqueue_many,
                    grace,
                    lambda: int(client.llen(QUEUE)),
                )
            except Exception as exc:  # last resort: Redis or the broker down, the sweep goes on
                log.error("journal sweep failed: %s", cause_name(exc))

    async def _release_memory(self) -> None:
        """Hand the heap freed since the last round back to the operating system, every
        memory_release_interval seconds (see release_free_memory)."""
        while True:
            await asyncio.sleep(self.settings.memory_release_interval)
            release_free_memory()

    async def _purge_daily(self) -> None:
        """Purge what is older than retention_days now, then every PURGE_INTERVAL seconds."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                removed = await loop.run_in_executor(
                    None, purge_expired, self.stores.store, self.settings.retention_days
                )
                log.info(
                    "purged %d advisories older than %d days", removed, self.settings.retention_days
                )
            except Exception as exc:  # last resort: Redis down, the daily purge goes on
                log.error("purge failed: %s", cause_name(exc))
            await asyncio.sleep(PURGE_INTERVAL)

    async def stop(self, grace: float = 10.0) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.server.close(grace)
        self.pool.shutdown(wait=True)
        if self.embedded is not None:
            self.embedded.stop()
        if self.celery is not None:
            self.celery.stop()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
            self.http = None


@functools.cache
def _malloc_trim() -> Callable[[], int] | None:
    """glibc's malloc_trim(0), or None where the C library has none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # TypeError: no CDLL(None) on Windows
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: int(trim(0))


def release_free_memory() -> bool:
    """Return the C heap's free pages to the operating system; False where that is not
    possible. The listener's objects stay flat over a long run (tracemalloc), but glibc keeps
    the memory they free, fragmented between live blocks, so its RSS crept up about 1 MiB per
    50,000 messages; released every minute it stays flat."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim()
    return True


def port_free(host: str, port: int) -> None:
    """OSError when *port* cannot be bound on *host* now (in use, or not our address)."""
    import socket

    for family, kind, proto, _, address in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
            probe.bind(address)
        return


class StartupError(Exception):
    """`serve` cannot start; str() is the one line that says why."""


RELAY_LINE_MAX = 1 << 20  # bytes of a worker's output line kept waiting for its end, at most
WORKER_START_TIMEOUT = 60.0  # seconds for the Celery worker to report ready
READY_FD = "ORDERCHECK_WORKER_READY_FD"  # not a setting: serve -> its own Celery worker


class CeleryWorker:
    """`celery worker` in a subprocess. Its output (stdout and stderr: Celery prints some lines
    there itself) is relayed to our stderr as JSON lines (worker/logs.py), the lines that are
    not JSON wrapped, and the last lines kept to name the cause when it exits."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        read_end, write_end = os.pipe()
        env = {**env, READY_FD: str(write_end)}
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=(write_end,),
        )
        os.close(write_end)
        self._ready_fd = read_end
        self.ready = False
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        self._relay = threading.Thread(target=self._read, name="celery-output", daemon=True)
        self._relay.start()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def _read(self) -> None:
        """Relay what the worker writes, as it comes: all the lines one read brings (a busy
        worker writes a line per message) go out in one write, not one write and flush each."""
        from worker.logs import wrap_line

        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()

        def relay(raws: list[bytes]) -> None:
            out = []
            for raw in raws:
                line = raw.decode("utf-8", "replace").rstrip()
                if line.strip():
                    self._tail.append(line)
                    out.append(wrap_line(line, "celery.worker") + "\n")
            if out:
                with contextlib.suppress(OSError, ValueError):  # our stderr is gone: keep draining
                    sys.stderr.write("".join(out))
                    sys.stderr.flush()

        rest = b""
        while chunk := os.read(fd, 65536):
            *lines, rest = (rest + chunk).split(b"\n")
            if len(rest) > RELAY_LINE_MAX:  # no line end for this long: pass it on as it is
                lines.append(rest)
                rest = b""
            relay(lines)
        relay([rest])  # the last line, when it had no line end

    def cause(self) -> str:
        """The last error line it wrote (a traceback's last line), else its last line."""
        lines = [line.strip() for line in self._tail]
        for line in reversed(lines):
            if line.startswith("{"):
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                if data.get("level") in ("error", "critical"):
                    return str(data.get("msg", ""))
                continue
            head = line.split(":", 1)[0]
            if head.endswith(("Error", "Exception", "Exit")) or head == "KeyboardInterrupt":
                return line
        return lines[-1] if lines else "no output"

    def poll_ready(self) -> bool:
        """True once the worker has reported ready (Celery's worker_ready signal)."""
        import select

        if not self.ready and self._ready_fd >= 0 and select.select([self._ready_fd], [], [], 0)[0]:
            self.ready = bool(os.read(self._ready_fd, 64))
            os.close(self._ready_fd)
            self._ready_fd = -1
        return self.ready

    def wait_ready(self, timeout: float) -> str | None:
        """Wait until the worker reports ready (None), exits or *timeout* passes (the line
        that says so)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.poll_ready():
                return None
            if self.proc.poll() is not None:
                self._relay.join(2)
                return (
                    f"the Celery worker exited at start (status {self.proc.returncode}): "
                    f"{self.cause()}"
                )
            time.sleep(0.05)
        return f"the Celery worker did not report ready within {timeout:g} s"

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown (running tasks finish), killed after *timeout* seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._ready_fd >= 0:
            os.close(self._ready_fd)
            self._ready_fd = -1
        self._relay.join(5)
        if self.proc.stdout is not None and not self._relay.is_alive():
            self.proc.stdout.close()  # the relay has read it to the end


def start_celery_worker(settings: Settings) -> CeleryWorker:
    concurrency = settings.workers or os.cpu_count() or 1
    env = dict(os.environ)  # PROMETHEUS_MULTIPROC_DIR, when set, is shared with the listener
    env.pop("ORDERCHECK_WORKER_METRICS_PORT", None)  # the listener's /metrics has theirs
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "--quiet",  # no banner: the output is JSON lines
        "worker",
        "--concurrency",
        str(concurrency),
        "--pool",
        "prefork",
        "--loglevel",
        "WARNING",
        "-Q",
        "ordercheck",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        f"ordercheck-{os.getpid()}@%h",
    ]
    return CeleryWorker(cmd, env)


def start_http(
    host: str, port: int, health: Callable[[], dict[str, Any]], collector: Any = None
) -> ThreadingHTTPServer:
    """/health (JSON) and /metrics (Prometheus) on host:port, in a thread. *collector*: more
    metrics computed at each scrape (worker/opsview.py), in a registry of their own."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    extra = None
    if collector is not None:
        extra = CollectorRegistry(auto_describe=False)
        extra.register(collector)

    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # add up the Celery worker processes
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/health"):
                state = health()
                body = json.dumps(state).encode()
                self.send_response(200 if state.get("status") == "ok" else 503)
                self.send_header("Content-Type", "application/json")
            elif self.path.startswith("/metrics"):
                body = generate_latest(registry)
                if extra is not None:
                    body += generate_latest(extra)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            else:
                body = b"not found"
                self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="ordercheck-http", daemon=True).start()
    return server


def start_review(settings: Settings, stores: Stores) -> Any:
    """The review page in a thread of this process, on the same advisory store."""
    from worker.review import create_app
    from worker.review.server import ReviewServer

    server = ReviewServer(
        create_app(stores.store, settings), settings.review_host, settings.review_port
    ).start()
    print(f"ordercheck: review page on {server.url}", file=sys.stderr, flush=True)
    if not settings.review_users and settings.review_token is None:
        print(
            "ordercheck: no ORDERCHECK_REVIEW_USERS or ORDERCHECK_REVIEW_TOKEN set: nobody "
            "can log in to the review page",
            file=sys.stderr,
            flush=True,
        )
    return server


def destination_warning(settings: Settings) -> str | None:
    """The start-up warning when no advisory has anywhere to go."""
    if (settings.advisory_host and settings.advisory_port) or settings.advisory_routes:
        return None
    return (
        "ordercheck: warning: ORDERCHECK_ADVISORY_HOST/PORT (or ADVISORY_ROUTES) not set: "
        "orders are checked and kept, advisories are not sent (state not-sent; `ordercheck "
        "advisories --undelivered` lists them)"
    )


def start_cds(settings: Settings, service: Service) -> Any:
    """CDS Hooks in a thread of this process, on the same knowledge and advisory store."""
    from worker.cds.server import build_server

    server = build_server(settings, service.knowledge, service.stores.store).start()
    print(f"ordercheck: CDS Hooks on {server.url}/cds-services", file=sys.stderr, flush=True)
    return server


def run(settings: Settings, with_review: bool = False, with_cds: bool = False) -> int:
    """Check Redis and the worker's imports, bind every socket, start the workers, say
    "listening"; serve until SIGTERM or SIGINT, then stop gracefully. A start-up failure is
    one line on stderr and exit status 2 (3 when the Celery worker cannot start)."""
    from worker.logs import configure
    from worker.preflight import redis_problem, worker_problem

    configure(settings.log_level)
    if settings.redis_url:
        problem = redis_problem(settings.redis_url)
        if problem is not None:
            print(f"ordercheck: {problem}", file=sys.stderr, flush=True)
            return 2
        problem = worker_problem(settings.redis_url)
        if problem is not None:
            print(f"ordercheck: {problem}", file=sys.stderr, flush=True)
            return 3
    # A broken data file (code map, protocol map) stops start-up before anything else is said.
    knowledge = load_knowledge(settings.code_map, protocols=settings.protocols_file)
    warning = destination_warning(settings)
    if warning is not None:
        print(warning, file=sys.stderr, flush=True)
        log.warning("no advisory destination configured: advisories are not sent")

    async def main() -> int:
        service = Service(settings, knowledge)
        review = None
        cds = None
        try:
            await service.bind()
            if with_review:
                try:
                    review = start_review(settings, service.stores)
                except OSError as exc:
                    await service.stop(grace=0)
                    raise StartupError(
                        f"cannot listen on {settings.review_host}:{settings.review_port} "
                        f"(review page, ORDERCHECK_REVIEW_PORT): {exc.strerror or exc}"
                    ) from None
            if with_cds:
                try:
                    cds = start_cds(settings, service)
                except OSError as exc:
                    if review is not None:
                        review.stop()
                    await service.stop(grace=0)
                    raise StartupError(
                        f"cannot listen on {settings.cds_host}:{settings.cds_port} "
                        f"(CDS Hooks, ORDERCHECK_CDS_PORT): {exc.strerror or exc}"
                    ) from None
            await service.start_workers()
        except StartupError as exc:
            if review is not None:
                review.stop()
            if cds is not None:
                cds.stop()
            print(f"ordercheck: {exc}", file=sys.stderr, flush=True)
            return 3 if "Celery worker" in str(exc) else 2
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(
            f"ordercheck: listening on {settings.listen_host}:{service.port} "
            f"({'redis' if settings.redis_url else 'embedded'} mode); Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
        await service.stop()
        if review is not None:
            review.stop()
        if cds is not None:
            cds.stop()
        return 0

    return asyncio.run(main())
