"""Chaos run: orders over MLLP while workers are killed, Redis restarts and the ordering system
refuses connections; then every accepted order must have exactly one delivered advisory.

    .venv/bin/python -m bench.chaos [--orders 10000] [--kill-every 1000] [--workers 2]
        [--connections 8] [--resend-rate 0.05] [--refuse-seconds 5] [--redis-downtime 2]
        [--drain-timeout 900] [--seed 1] [--keep]

What it starts (all on 127.0.0.1, free ports, a temporary directory):
- its own redis-server with --appendonly yes --appendfsync always (never the shared 6379);
- a fake ordering system (worker.testing) that ACKs each advisory AA with MSA-2 = its MSH-10;
- `ordercheck serve` in Redis mode with --workers Celery pool processes, delivery backoff 0.2 s
  (at most 2 s) and effectively unlimited delivery retries.

Faults, placed by the number of orders accepted so far (deterministic for a given --seed):
- SIGKILL of one Celery pool process every --kill-every orders;
- one Redis crash (SIGKILL) and restart after --redis-downtime seconds, at 35 % of the orders;
- one refusal window of --refuse-seconds (the ordering system closes its port), at 55 %;
- --resend-rate of the orders sent a second time with the same MSH-10, a little later.
The sender retries anything not accepted (AR while Redis is down, closed connections), as an
interface engine does. When the faults are over it waits (at most --drain-timeout seconds) for
the queue to drain and the advisories to stop arriving, then counts, per order:

    lost          accepted, but no advisory record exists and none was delivered
    duplicated    the ordering system got two different advisories (MSH-10 or content)
    undelivered   an advisory record exists but the ordering system never got it
    redelivered   the same advisory (same MSH-10, same bytes) received again; expected after
                  a kill between the ordering system's ACK and the delivery being recorded,
                  and harmless: the receiver deduplicates on MSH-10

Exit status 0 when lost, duplicated, undelivered, not accepted and unexpected are all 0.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import Order, RedisServer, Sender, make_order
from tests.support import FakeOrderingSystem, Serve, alive, rss_kb, wait_until
from worker.records import advisory_id
from worker.store import RedisStore

QUEUE = "ordercheck"  # the Celery queue (worker/celery_app.py)


@dataclass
class ChaosConfig:
    orders: int = 10_000
    kill_every: int = 1_000  # orders between two SIGKILLs of a pool process; 0: no kills
    workers: int = 2  # Celery pool processes
    connections: int = 8  # sender connections to the listener
    rate: float = 0.0  # orders per second (0: as fast as the listener ACKs)
    ack_timeout: float = 10.0  # seconds the sender waits for each ACK
    max_attempts: int = 600  # sends of one message before the sender gives up on it
    visibility_timeout: int | None = None  # ORDERCHECK_BROKER_VISIBILITY_TIMEOUT (None: 300)
    resend_rate: float = 0.05
    refuse_seconds: float = 5.0  # the ordering system's refusal window
    redis_downtime: float = 2.0  # seconds between the Redis crash and its restart
    redis_at: float = 0.35  # fraction of the orders accepted when Redis crashes
    refuse_at: float = 0.55  # ... when the ordering system starts refusing
    fault_gap: float = 0.0  # seconds at least between the end of one fault and the next
    drain_timeout: float = 900.0  # seconds to wait for the queue to drain after sending
    quiet_seconds: float = 3.0  # no new advisory for this long (and the queue empty): drained
    seed: int = 1
    workdir: Path | None = None  # default: a new temporary directory, removed afterwards
    keep: bool = False  # keep the working directory (logs, AOF)


@dataclass
class ChaosReport:
    orders: int = 0
    resends: int = 0
    accepted: int = 0  # orders ACKed AA
    not_accepted: int = 0  # orders never ACKed AA (the sender gave up)
    resend_acks_same: int = 0  # resends answered with the very ACK of the first send
    refused_answers: int = 0  # AR/AE answers and failed exchanges, all retried
    kills: int = 0
    redis_restarts: int = 0
    refusal_windows: int = 0
    advisories_received: int = 0
    lost: int = 0
    duplicated: int = 0
    undelivered: int = 0
    redelivered: int = 0  # extra receipts of the same advisory (same MSH-10 and bytes)
    redelivered_orders: int = 0
    unexpected: int = 0  # advisories for orders that were never sent
    store_not_delivered: int = 0  # received, but the store does not say delivered
    send_seconds: float = 0.0
    drain_seconds: float = 0.0
    drained: bool = False
    listener_rss_kb: tuple[int, int] = (0, 0)  # before, after
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.duplicated or self.undelivered or self.not_accepted or self.unexpected
        )

    def lines(self) -> list[str]:
        return [
            f"orders sent            {self.orders} (+{self.resends} resent with the same MSH-10)",
            f"accepted (AA)          {self.accepted}; not accepted {self.not_accepted}; "
            f"retried refusals {self.refused_answers}",
            f"resends, same ACK      {self.resend_acks_same}/{self.resends}",
            f"faults injected        {self.kills} worker SIGKILLs, {self.redis_restarts} Redis "
            f"crash+restart (AOF), {self.refusal_windows} refusal window(s)",
            f"advisories received    {self.advisories_received} in {self.send_seconds:.1f} s "
            f"sending + {self.drain_seconds:.1f} s draining"
            f"{'' if self.drained else ' (DRAIN TIMED OUT)'}",
            f"listener RSS           {self.listener_rss_kb[0] / 1024:.1f} MiB -> "
            f"{self.listener_rss_kb[1] / 1024:.1f} MiB",
            f"lost / duplicated / undelivered   {self.lost} / {self.duplicated} / "
            f"{self.undelivered}",
            f"redelivered (same MSH-10)         {self.redelivered} receipt(s) for "
            f"{self.redelivered_orders} order(s)",
            f"unexpected advisories  {self.unexpected}; received but not marked delivered "
            f"{self.store_not_delivered}",
            *(f"  {kind}: {', '.join(keys[:10])}" for kind, keys in self.examples.items() if keys),
            "RESULT: " + ("OK" if self.ok else "FAILED"),
        ]


def _plan(cfg: ChaosConfig) -> tuple[list[Order], list[tuple[str, bytes]]]:
    """The orders and the send sequence: each order once, resends a little after the first."""
    rng = random.Random(cfg.seed)
    orders = [make_order(n, run=f"R{cfg.seed % 100:02d}") for n in range(1, cfg.orders + 1)]
    chosen = sorted(rng.sample(range(cfg.orders), round(cfg.orders * cfg.resend_rate)))
    later: dict[int, list[Order]] = {}
    for i in chosen:
        later.setdefault(min(cfg.orders - 1, i + rng.randint(1, 40)), []).append(orders[i])
    items: list[tuple[str, bytes]] = []
    for i, order in enumerate(orders):
        items.append((order.key, order.message))
        items += [(f"{o.key}#resend", o.message) for o in later.get(i, [])]
    return orders, items


class Faults:
    """Injects the faults from a thread, each when enough orders have been accepted."""

    def __init__(
        self,
        cfg: ChaosConfig,
        serve: Serve,
        redis: RedisServer,
        ordering: FakeOrderingSystem,
        log: Callable[[str], None],
    ) -> None:
        self.cfg = cfg
        self.serve = serve
        self.redis = redis
        self.ordering = ordering
        self.log = log
        self.accepted = 0  # orders accepted (first sends only)
        self.done = threading.Event()  # sending finished
        self.kills = 0
        self.refusals = 0
        self.rng = random.Random(cfg.seed * 7919)
        events: list[tuple[int, str]] = []
        if cfg.kill_every > 0:
            events += [(n, "kill") for n in range(cfg.kill_every, cfg.orders, cfg.kill_every)]
        events.append((max(1, int(cfg.orders * cfg.redis_at)), "redis"))
        events.append((max(1, int(cfg.orders * cfg.refuse_at)), "refuse"))
        self.events = sorted(events)
        self._reopen: threading.Timer | None = None
        self._thread = threading.Thread(target=self._run, name="faults", daemon=True)

    def on_ack(self, key: str, code: str) -> None:
        if code in ("AA", "CA") and not key.endswith("#resend"):
            self.accepted += 1  # one += under the GIL per call; read by the fault thread

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        last = 0.0
        for at, kind in self.events:
            while (
                self.accepted < at or time.monotonic() < last + self.cfg.fault_gap
            ) and not self.done.is_set():
                time.sleep(0.01)
            getattr(self, f"_{kind}")(at)
            last = time.monotonic() + (self.cfg.refuse_seconds if kind == "refuse" else 0.0)

    def _kill(self, at: int) -> None:
        try:  # the pool may be restarting a process killed a moment ago
            wait_until(lambda: bool(self.serve.pool_pids()), 30.0, "a pool process")
        except AssertionError:
            self.log(f"[{at}] no pool process to kill")
            return
        pids = self.serve.pool_pids()
        pid = self.rng.choice(pids)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        try:
            wait_until(lambda: not alive(pid), 5.0, f"pool process {pid} to die")
        except AssertionError:
            self.log(f"[{at}] pool process {pid} survived SIGKILL?")
            return
        self.kills += 1
        self.log(f"[{at}] SIGKILL pool process {pid}")

    def _redis(self, at: int) -> None:
        self.log(f"[{at}] Redis crash (SIGKILL), down {self.cfg.redis_downtime:.1f} s")
        self.redis.restart(downtime=self.cfg.redis_downtime, hard=True)
        self.log(f"[{at}] Redis back")

    def _refuse(self, at: int) -> None:
        self.ordering.stop()
        self.refusals += 1
        self.log(f"[{at}] ordering system refusing connections for {self.cfg.refuse_seconds:.1f} s")

        def reopen() -> None:
            self.ordering.start()
            self.log("ordering system accepting again")

        self._reopen = threading.Timer(self.cfg.refuse_seconds, reopen)
        self._reopen.daemon = True
        self._reopen.start()

    def finish(self, timeout: float = 60.0) -> None:
        """Wait until every fault has been injected and the refusal window is over."""
        self.done.set()
        self._thread.join(timeout)
        if self._reopen is not None:
            self._reopen.join(timeout)
        if not self.ordering.running:
            self.ordering.start()


def _queue_depth(redis: RedisServer) -> int:
    try:
        return int(redis.client().llen(QUEUE))
    except Exception:
        return -1


def _unacked(redis: RedisServer) -> int:
    try:
        return int(redis.client().hlen("unacked"))
    except Exception:
        return -1


def run_chaos(cfg: ChaosConfig, log: Callable[[str], None] | None = None) -> ChaosReport:
    """One chaos run; returns the counts (see the module docstring)."""
    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    workdir = cfg.workdir or Path(tempfile.mkdtemp(prefix="ordercheck-chaos-"))
    report = ChaosReport()
    orders, items = _plan(cfg)
    report.orders, report.resends = len(orders), len(items) - len(orders)
    redis = RedisServer(workdir / "redis", aof=True)
    ordering = FakeOrderingSystem()
    serve: Serve | None = None
    try:
        redis.start()
        ordering.start()
        env = {
            "ORDERCHECK_REDIS_URL": redis.url(0),
            "ORDERCHECK_ADVISORY_HOST": "127.0.0.1",
            "ORDERCHECK_ADVISORY_PORT": str(ordering.port),
            "ORDERCHECK_WORKERS": str(cfg.workers),
            "ORDERCHECK_DELIVERY_BACKOFF": "0.2",
            "ORDERCHECK_DELIVERY_BACKOFF_MAX": "2",
            "ORDERCHECK_DELIVERY_RETRIES": "100000",
            "ORDERCHECK_ADVISORY_ACK_TIMEOUT": "5",
        }
        if cfg.visibility_timeout is not None:
            env["ORDERCHECK_BROKER_VISIBILITY_TIMEOUT"] = str(cfg.visibility_timeout)
        serve = Serve(env, workdir / "serve").start()
        say(
            f"chaos: {cfg.orders} orders, serve pid {serve.pid}, redis port {redis.port}, "
            f"ordering system port {ordering.port}, workdir {workdir}"
        )
        rss_before = rss_kb(serve.pid)
        faults = Faults(cfg, serve, redis, ordering, say)
        sender = Sender(
            serve.port,
            cfg.connections,
            timeout=cfg.ack_timeout,
            retry_delay=0.2,
            max_attempts=cfg.max_attempts,
            rate=cfg.rate,
            on_ack=faults.on_ack,
        )
        started = time.monotonic()
        faults.start()
        results = sender.run(items)
        faults.finish()
        report.send_seconds = time.monotonic() - started
        report.kills, report.refusal_windows = faults.kills, faults.refusals
        report.redis_restarts = redis.restarts
        report.refused_answers = sender.refused
        accepted = [o for o in orders if results[o.key].code in ("AA", "CA")]
        report.accepted = len(accepted)
        report.not_accepted = len(orders) - len(accepted)
        accepted_keys = {o.key for o in accepted}
        report.examples["not accepted"] = [o.key for o in orders if o.key not in accepted_keys]
        by_key = {o.key: o for o in orders}
        report.resend_acks_same = sum(
            1
            for k, r in results.items()
            if k.endswith("#resend")
            and r.ack
            and r.ack == results[by_key[k.removesuffix("#resend")].key].ack
        )
        say(f"chaos: sending done in {report.send_seconds:.1f} s; draining")

        # Drain: every accepted order has an advisory, the queue is empty, nothing new arrives.
        wanted = {o.placer for o in accepted}
        drain_start = time.monotonic()
        deadline = drain_start + cfg.drain_timeout
        last_count, last_change, next_note = -1, time.monotonic(), time.monotonic() + 10
        while time.monotonic() < deadline:
            count = ordering.count()
            now = time.monotonic()
            if count != last_count:
                last_count, last_change = count, now
            got = ordering.by_placer()
            missing = len(wanted - got.keys())
            depth = _queue_depth(redis)
            if not missing and depth == 0 and now - last_change >= cfg.quiet_seconds:
                report.drained = True
                break
            if now >= next_note:
                gone = sorted(wanted - got.keys())[:3]
                say(
                    f"chaos: draining: {missing} orders without an advisory {gone}, "
                    f"queue {depth}, unacked {_unacked(redis)}"
                )
                next_note = now + 10
            time.sleep(0.2)
        report.drain_seconds = time.monotonic() - drain_start
        report.listener_rss_kb = (rss_before, rss_kb(serve.pid))
        _tally(report, orders, accepted, ordering, RedisStore(redis.client()), _broker_held(redis))
    finally:
        if serve is not None:
            serve.stop()
        ordering.stop()
        redis.stop()
        if not cfg.keep and cfg.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def _broker_held(redis: RedisServer) -> bytes:
    """The task bodies still queued or unacknowledged (waiting for the visibility timeout)."""
    try:
        client = redis.client()
        blobs = [*client.lrange(QUEUE, 0, -1), *client.hvals("unacked")]
    except Exception:
        return b""
    bodies: list[bytes] = []
    for blob in blobs:
        try:
            item = json.loads(blob)
            payload = item[0] if isinstance(item, list) else item
            bodies.append(base64.b64decode(payload["body"]))
        except (ValueError, KeyError, TypeError, IndexError):
            continue
    return b"\n".join(bodies)


def _tally(
    report: ChaosReport,
    orders: list[Order],
    accepted: list[Order],
    ordering: FakeOrderingSystem,
    store: RedisStore,
    held: bytes,
) -> None:
    got = ordering.by_placer()
    report.advisories_received = sum(len(v) for v in got.values())
    sent = {o.placer for o in orders}
    report.unexpected = sum(len(v) for k, v in got.items() if k not in sent)
    report.examples["unexpected"] = sorted(k for k in got if k not in sent)
    for kind in ("lost", "duplicated", "undelivered", "redelivered", "store not delivered"):
        report.examples.setdefault(kind, [])
    for order in accepted:
        received = got.get(order.placer, [])
        distinct = {(a.control_id, a.body) for a in received}
        if len(distinct) > 1:
            report.duplicated += 1
            report.examples["duplicated"].append(order.key)
        if len(received) > len(distinct):
            report.redelivered += len(received) - len(distinct)
            report.redelivered_orders += 1
            report.examples["redelivered"].append(order.key)
        record = store.get(advisory_id("RIS", "HOSP", order.control_id, 0))
        if not received:
            kind = "undelivered" if record is not None else "lost"
            setattr(report, kind, getattr(report, kind) + 1)
            where: str = record.delivery if record else "no record"
            if order.control_id.encode() in held:
                where += ", still in the broker"
            report.examples[kind].append(f"{order.key}({where})")
        elif record is None or record.delivery != "delivered":
            report.store_not_delivered += 1
            report.examples["store not delivered"].append(order.key)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = ChaosConfig()
    p.add_argument("--orders", type=int, default=d.orders)
    p.add_argument("--kill-every", type=int, default=d.kill_every)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--connections", type=int, default=d.connections)
    p.add_argument(
        "--rate",
        type=float,
        default=d.rate,
        help="orders per second (default 0: as fast as the listener ACKs)",
    )
    p.add_argument("--resend-rate", type=float, default=d.resend_rate)
    p.add_argument("--refuse-seconds", type=float, default=d.refuse_seconds)
    p.add_argument("--redis-downtime", type=float, default=d.redis_downtime)
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout)
    p.add_argument(
        "--fault-gap",
        type=float,
        default=d.fault_gap,
        help="seconds at least between two faults (default: placed by order count "
        "only, so a kill may fall inside the Redis outage)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--visibility-timeout",
        type=int,
        default=None,
        help="ORDERCHECK_BROKER_VISIBILITY_TIMEOUT for the run (default: the "
        "product's 300 s): how long a message held by a worker that lost Redis "
        "waits before it runs again",
    )
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    a = p.parse_args(argv)
    cfg = ChaosConfig(
        orders=a.orders,
        kill_every=a.kill_every,
        workers=a.workers,
        connections=a.connections,
        rate=a.rate,
        resend_rate=a.resend_rate,
        refuse_seconds=a.refuse_seconds,
        redis_downtime=a.redis_downtime,
        drain_timeout=a.drain_timeout,
        fault_gap=a.fault_gap,
        seed=a.seed,
        visibility_timeout=a.visibility_timeout,
        keep=a.keep,
    )
    report = run_chaos(cfg)
    print("\n".join(report.lines()), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
