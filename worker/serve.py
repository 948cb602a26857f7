"""`ordercheck serve`: the MLLP listener plus workers, embedded or on Redis.

Embedded (no ORDERCHECK_REDIS_URL): one process, see worker/embedded.py.
Redis: the listener queues Celery tasks; `serve` also starts a Celery worker with one process
per CPU core (ORDERCHECK_WORKERS), starts it again should it exit, and stops it gracefully with
the listener. Both modes purge advisories older than ORDERCHECK_RETENTION_DAYS at start and daily.
"""

from __future__ import annotations

import asyncio
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from worker.guideline import load_knowledge
from worker.hl7.ack import AckError, AckTarget, build_ack
from worker.hl7.mllp import FrameError, FrameErrorKind, MLLPServer
from worker.ingest import EnqueueWithAcks, Ingestor, Rejected, nothing_to_remember
from worker.journal import Journal, journaled_direct, requeue_stale
from worker.runtime import Stores, redis_client
from worker.settings import Settings
from worker.store import RedisStore, RejectedEntry, purge_expired

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
                raw=r.raw.decode("utf-8", errors="replace"),
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

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.knowledge = load_knowledge(settings.code_map)  # a bad rule file fails here
        self.embedded: Any = None
        self.queued = 0  # tasks waiting in the broker queue after our last push
        self.celery: subprocess.Popen[bytes] | None = None
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
        )
        self.http: ThreadingHTTPServer | None = None
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
        if self.embedded is not None:
            self.embedded.start()
        else:
            self.celery = start_celery_worker(self.settings)
            self._background.append(asyncio.create_task(self._supervise()))
            self._background.append(asyncio.create_task(self._requeue_lost()))
        await self.server.start()
        self._background.append(asyncio.create_task(self._purge_daily()))
        if self.settings.memory_release_interval and release_free_memory():
            self._background.append(asyncio.create_task(self._release_memory()))
        if self.settings.metrics_port is not None:
            self.http = start_http(
                self.settings.listen_host, self.settings.metrics_port, self.health
            )
        mode = "redis" if self.settings.redis_url else "embedded"
        log.warning(
            "ordercheck listening on %s:%d (%s mode)", self.settings.listen_host, self.port, mode
        )

    def health(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "listener": "ok",
            "mode": "redis" if self.settings.redis_url else "embedded",
        }
        if self.settings.redis_url:
            from worker.runtime import redis_client

            try:
                redis_client(self.settings.redis_url).ping()
                state["redis"] = "ok"
            except Exception as exc:
                state["redis"] = f"down: {type(exc).__name__}"
            state["workers"] = "ok" if self.celery and self.celery.poll() is None else "down"
        else:
            state["queue"] = self.embedded.queue.qsize()
        state["status"] = (
            "ok"
            if all(v == "ok" for k, v in state.items() if k in ("redis", "workers"))
            else "degraded"
        )
        return state

    async def _supervise(self, interval: float = 1.0) -> None:
        """Start the Celery worker again when it exits (a crash must not stop processing)."""
        while True:
            await asyncio.sleep(interval)
            if self.celery is not None and self.celery.poll() is not None:
                log.error(
                    "celery worker exited with status %s; starting it again", self.celery.returncode
                )
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
            except Exception as exc:  # Redis down: the next round
                log.error("journal sweep failed: %s", type(exc).__name__)

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
            except Exception as exc:  # Redis down: try again at the next interval
                log.error("purge failed: %s", type(exc).__name__)
            await asyncio.sleep(PURGE_INTERVAL)

    async def stop(self, grace: float = 10.0) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.server.close(grace)
        self.pool.shutdown(wait=True)
        if self.embedded is not None:
            self.embedded.stop()
        if self.celery is not None and self.celery.poll() is None:
            self.celery.send_signal(signal.SIGTERM)  # warm shutdown: finish running tasks
            try:
                self.celery.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.celery.kill()
        if self.http is not None:
            self.http.shutdown()


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


def start_celery_worker(settings: Settings) -> subprocess.Popen[bytes]:
    concurrency = settings.workers or os.cpu_count() or 1
    env = dict(os.environ)  # PROMETHEUS_MULTIPROC_DIR, when set, is shared with the listener
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
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
    return subprocess.Popen(cmd, env=env)


def start_http(host: str, port: int, health: Callable[[], dict[str, Any]]) -> ThreadingHTTPServer:
    """/health (JSON) and /metrics (Prometheus) on host:port, in a thread."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

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


def start_cds(settings: Settings, service: Service) -> Any:
    """CDS Hooks in a thread of this process, on the same knowledge and advisory store."""
    from worker.cds.server import build_server

    server = build_server(settings, service.knowledge, service.stores.store).start()
    print(f"ordercheck: CDS Hooks on {server.url}/cds-services", file=sys.stderr, flush=True)
    return server


def run(settings: Settings, with_review: bool = False, with_cds: bool = False) -> int:
    """Serve until SIGTERM or SIGINT, then stop gracefully."""
    from worker.logs import configure

    configure(settings.log_level)

    async def main() -> None:
        service = Service(settings)
        await service.start()
        review = start_review(settings, service.stores) if with_review else None
        cds = start_cds(settings, service) if with_cds else None
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

    asyncio.run(main())
    return 0
