"""End-to-end load: `ordercheck serve` (Redis mode) against the Celery ceiling of this machine.

    .venv/bin/python -m bench.e2e --orders 20000 --connections 8 --workers 2 --rate 0
    .venv/bin/python -m bench.e2e --orders 12000 --connections 8 --workers 2 --rate 200
    .venv/bin/python -m bench.e2e --memory            # 300,000 messages, RSS every 50,000

What it does, in one run:

1. The ceiling: a Celery echo task (bench/echo_app.py: same broker, same Celery settings, same
   payload, a body that only INCRs a Redis counter) with --workers pool processes; N tasks
   enqueued from K threads; tasks/s from the first enqueue to the counter reaching N.
2. End to end: `ordercheck serve` (tests.support.Serve) with ORDERCHECK_REDIS_URL on --redis-db
   (flushed first), ORDERCHECK_WORKERS=W and the advisories going to a FakeOrderingSystem in this
   process. K MLLP connections send N messages drawn at random from the seeds' mix
   (seeds/*.hl7; messages the listener would not answer, i.e. ACKs, are left out), each with a
   unique MSH-10 and placer numbers and a patient from a pool of --patients, paced at --rate
   messages/s (0: as fast as the ACKs come back). Which orders must give an advisory is known up
   front: every template is run once through worker.check.Checker (verdict appropriate or
   not-appropriate). Throughput: in-scope orders / (first send -> last first advisory received).

Prints a table: throughput and its ratio to the echo ceiling, ACK latency p50/p95/p99 (send to
ACK received, per connection), advisory latency p50/p99 (send to advisory received), peak RSS
(VmHWM) of the listener, of the Celery main process and of each pool process, and the counts
(advisories expected/received, corrected advisories, duplicates, ACK codes).

--memory: 300,000 messages (unless --orders says otherwise), no echo run, the sender held back
to --max-backlog in-scope orders ahead of the advisories, and the RSS of the listener and of the
workers printed every --every messages and at the end, with the growth from the first report.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.support import (
    FakeOrderingSystem,
    Serve,
    children,
    free_port,
    rss_kb,
    wait_until,
)
from worker.check import Checker
from worker.guideline import default_knowledge
from worker.history import InMemoryHistory
from worker.hl7.ack import ack_fields
from worker.hl7.mllp import FrameDecoder, frame
from worker.hl7.parse import split_messages
from worker.ingest import Ingestor
from worker.pipeline import IN_SCOPE
from worker.settings import Settings
from worker.store import MemoryDedup

ROOT = Path(__file__).resolve().parent.parent

SEEDS = ROOT / "seeds"
_LINE_ENDS = re.compile(r"(\r\n|\r|\n)")


# -- the message mix ---------------------------------------------------------------------------
@dataclass
class Template:
    name: str
    text: str  # the message as Latin-1 text (lossless for any bytes)
    ack: str  # what the listener answers (AA, CA, AE, AR)
    in_scope: list[int]  # placer slots (see rewrite) of the orders that give an advisory


def rewrite(text: str, control: str, placer: str, patient: str) -> tuple[str, dict[str, int]]:
    """*text* with MSH-10 = control, every placer number (ORC-2/OBR-2 first component) replaced
    by f"{placer}x{slot}" (one slot per distinct original number) and every PID-3 identifier by
    *patient* (plus -n for the n-th repetition). Returns the text and the slots used."""
    parts = _LINE_ENDS.split(text)
    msh = parts[0]
    if not msh.startswith("MSH") or len(msh) < 8:
        return text, {}
    fs = msh[3]
    encoding = msh[4:].split(fs, 1)[0]
    comp = encoding[0] if encoding else "^"
    rep = encoding[1] if len(encoding) > 1 else None
    slots: dict[str, int] = {}
    for i in range(0, len(parts), 2):
        seg = parts[i]
        kind = seg[:3]
        if kind not in ("MSH", "PID", "ORC", "OBR"):
            continue
        fields = seg.split(fs)
        if kind == "MSH" and len(fields) > 9:
            fields[9] = control
        elif kind == "PID" and len(fields) > 3 and fields[3]:
            reps = fields[3].split(rep) if rep else [fields[3]]
            for j, value in enumerate(reps):
                comps = value.split(comp)
                comps[0] = patient if j == 0 else f"{patient}-{j}"
                reps[j] = comp.join(comps)
            fields[3] = rep.join(reps) if rep else reps[0]
        elif kind in ("ORC", "OBR") and len(fields) > 2 and fields[2]:
            comps = fields[2].split(comp)
            if comps[0]:
                slot = slots.setdefault(comps[0], len(slots))
                comps[0] = f"{placer}x{slot}"
                fields[2] = comp.join(comps)
        parts[i] = fs.join(fields)
    return "".join(parts), slots


def load_templates() -> list[Template]:
    """The seeds the listener answers, with the slots of their in-scope orders."""
    logging.getLogger("ordercheck").setLevel(logging.ERROR)  # the garbage seeds are refused
    settings = Settings(redis_url=None)
    ingest = Ingestor(settings, MemoryDedup(), lambda data, at: None, lambda rejected: None)
    knowledge = default_knowledge()
    out: list[Template] = []
    for path in sorted(SEEDS.glob("*.hl7")):
        for n, (_, data) in enumerate(split_messages(path.read_bytes())):
            text = data.decode("latin-1")
            probe, _ = rewrite(text, f"PROBE{len(out)}", "PRB", "PROBEPAT")
            reply = ingest.handle(probe.encode("latin-1"))
            if reply is None:  # an ACK: nothing to time
                continue
            code = ack_fields(reply)[0]
            in_scope: list[int] = []
            if code in ("AA", "CA"):
                outcome = Checker(knowledge, InMemoryHistory()).check_message(
                    probe.encode("latin-1")
                )
                found = [
                    re.fullmatch(r"PRBx(\d+)", result.placer_order_number)
                    for result in outcome.results
                    if result.verdict in IN_SCOPE
                ]
                if not all(found):  # e.g. bytes before MSH: rewrite() cannot renumber it
                    print(
                        f"  (left out of the mix: {path.name}, whose placer numbers the "
                        f"bench cannot rewrite)",
                        file=sys.stderr,
                    )
                    continue
                in_scope = [int(f.group(1)) for f in found if f]
            out.append(Template(f"{path.name}#{n}", text, code, in_scope))
    return out


# -- process memory --------------------------------------------------------------------------
@dataclass
class Memory:
    listener: int  # KiB
    celery_main: int
    workers: list[int]

    @staticmethod
    def read(serve: Serve, peak: bool = False) -> Memory:
        """RSS now, or with *peak* the high-water marks (VmHWM)."""
        return Memory(
            rss_kb(serve.pid, peak),
            sum(rss_kb(p, peak) for p in children(serve.pid)),
            [rss_kb(p, peak) for p in serve.pool_pids()],
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of *pid* so far (its reaped children excluded)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_busy() -> float:
    """CPU seconds all processes of the machine spent busy so far (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(serve: Serve, redis_pid: int) -> dict[str, float]:
    return {
        "machine": machine_busy(),
        "listener": cpu_seconds(serve.pid),
        "celery main": sum(cpu_seconds(p) for p in children(serve.pid)),
        "workers": sum(cpu_seconds(p) for p in serve.pool_pids()),
        "redis-server": cpu_seconds(redis_pid),
        "bench (senders + fake RIS)": cpu_seconds(os.getpid()),
    }


def mean_batch(port: int) -> float:
    """Mean of the listener's ordercheck_ingest_batch_messages histogram (its /metrics)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return float("nan")
    values = dict(
        re.findall(r"^ordercheck_ingest_batch_messages_(sum|count) (\S+)$", text, re.MULTILINE)
    )
    count = float(values.get("count", 0))
    return float(values.get("sum", 0)) / count if count else float("nan")


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


# -- the echo ceiling ---------------------------------------------------------------------------
@dataclass
class Echo:
    rate: float  # tasks/s
    cpu: dict[str, float]  # CPU seconds by process group, during the timed part
    tasks: int


def echo_ceiling(url: str, n: int, threads: int, workers: int, payloads: list[str]) -> Echo:
    """Tasks/s of the echo task with *workers* pool processes, *n* tasks from *threads*."""
    os.environ["ORDERCHECK_REDIS_URL"] = url
    from bench.echo_app import COUNTER, QUEUE, echo

    r = redis.Redis.from_url(url)
    r.flushdb()
    env = dict(os.environ, ORDERCHECK_REDIS_URL=url)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.echo_app",
            "worker",
            "-c",
            str(workers),
            "--pool",
            "prefork",
            "-Q",
            QUEUE,
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"echo-{os.getpid()}@%h",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for i in range(workers * 4):  # warm up: every pool process has run a task
            echo.apply_async((payloads[i % len(payloads)], time.time()), retry=False)
        wait_until(lambda: int(r.get(COUNTER) or 0) >= workers * 4, 60, "the echo worker")
        r.set(COUNTER, 0)
        redis_pid = int(r.info("server")["process_id"])

        def snapshot() -> dict[str, float]:
            return {
                "machine": machine_busy(),
                "celery main": cpu_seconds(proc.pid),
                "workers": sum(cpu_seconds(p) for p in children(proc.pid)),
                "redis-server": cpu_seconds(redis_pid),
                "bench (enqueuers)": cpu_seconds(os.getpid()),
            }

        cpu0 = snapshot()
        counter = iter(range(n))
        lock = threading.Lock()
        started: list[float] = []

        def enqueue() -> None:
            while True:
                with lock:
                    i = next(counter, None)
                    if i is None:
                        return
                    if not started:
                        started.append(time.perf_counter())
                echo.apply_async((payloads[i % len(payloads)], time.time()), retry=False)

        pool = [threading.Thread(target=enqueue) for _ in range(threads)]
        for t in pool:
            t.start()
        while int(r.get(COUNTER) or 0) < n:
            time.sleep(0.002)
        elapsed = time.perf_counter() - started[0]
        cpu = {k: v - cpu0[k] for k, v in snapshot().items()}
        cpu["other processes"] = cpu.pop("machine") - sum(cpu.values())
        for t in pool:
            t.join()
        return Echo(n / elapsed, cpu, n)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        r.flushdb()


# -- end to end -------------------------------------------------------------------------------
@dataclass
class Plan:
    frames: list[bytes]  # MLLP-framed messages, in sending order
    expected: list[list[str]]  # per message: the placers that must get an advisory
    total_expected: int


def plan(templates: list[Template], n: int, patients: int, seed: int, tag: str) -> Plan:
    rng = random.Random(seed)
    frames: list[bytes] = []
    expected: list[list[str]] = []
    total = 0
    for i in range(n):
        t = rng.choice(templates)
        placer = f"{tag}{i:07d}"
        text, _ = rewrite(t.text, f"{tag}{i:07d}", placer, f"BP{rng.randrange(patients):06d}")
        frames.append(frame(text.encode("latin-1")))
        want = [f"{placer}x{slot}" for slot in t.in_scope]
        expected.append(want)
        total += len(want)
    return Plan(frames, expected, total)


@dataclass
class Advisories:
    """What the fake ordering system saw (fed from its thread)."""

    first: dict[str, float] = field(default_factory=dict)  # placer -> first advisory time
    corrected: int = 0
    duplicates: int = 0
    other: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_frame(self, data: bytes) -> None:
        now = time.perf_counter()
        placer = status = b""
        for seg in data.split(b"\r"):
            if seg.startswith(b"ORC|"):
                placer = seg.split(b"|", 3)[2].split(b"^", 1)[0]
            elif seg.startswith(b"OBX|") and b"76515-6" in seg:
                fields = seg.split(b"|")
                status = fields[11] if len(fields) > 11 else b""
        key = placer.decode("latin-1")
        with self.lock:
            if not key:
                self.other += 1
            elif status == b"C":
                self.corrected += 1
            elif key in self.first:
                self.duplicates += 1
            else:
                self.first[key] = now


@dataclass
class Sent:
    ack_latency: list[float] = field(default_factory=list)
    send_time: dict[str, float] = field(default_factory=dict)  # placer -> send time
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    first_send: float = 0.0
    last_ack: float = 0.0
    expected_sent: int = 0


async def send_all(
    port: int,
    p: Plan,
    connections: int,
    rate: float,
    adv: Advisories,
    max_backlog: int,
    on_progress: Any = None,
) -> Sent:
    sent = Sent()
    next_index = iter(range(len(p.frames)))
    t0 = time.perf_counter()
    sent.first_send = t0

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        decoder = FrameDecoder()
        try:
            for i in next_index:
                if rate > 0:
                    delay = t0 + i / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                while max_backlog and sent.expected_sent - len(adv.first) > max_backlog:
                    await asyncio.sleep(0.005)
                started = time.perf_counter()
                writer.write(p.frames[i])
                for placer in p.expected[i]:
                    sent.send_time[placer] = started
                sent.expected_sent += len(p.expected[i])
                reply: bytes | None = None
                while reply is None:
                    data = await reader.read(65536)
                    if not data:
                        raise ConnectionError("the listener closed the connection")
                    events = decoder.feed(data)
                    if events and isinstance(events[0], bytes):
                        reply = events[0]
                done = time.perf_counter()
                sent.ack_latency.append(done - started)
                sent.last_ack = max(sent.last_ack, done)
                sent.codes[ack_fields(reply)[0] or "?"] += 1
                if on_progress is not None:
                    on_progress(i + 1)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return sent


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Run:
    sent: Sent
    adv: Advisories
    plan: Plan
    elapsed: float
    peak: Memory
    reports: list[tuple[int, Memory]]
    cpu: dict[str, float]
    load: tuple[float, float, float]
    batch: float  # mean frames per listener batch (warm-up included)


def end_to_end(args: argparse.Namespace, templates: list[Template], url: str) -> Run:
    r = redis.Redis.from_url(url)
    r.flushdb()
    load = os.getloadavg()
    adv = Advisories()
    ris = FakeOrderingSystem(keep=False, on_frame=adv.on_frame).start()
    metrics_port = free_port()
    serve = Serve(
        {
            "ORDERCHECK_REDIS_URL": url,
            "ORDERCHECK_WORKERS": str(args.workers),
            "ORDERCHECK_ADVISORY_HOST": "127.0.0.1",
            "ORDERCHECK_ADVISORY_PORT": str(ris.port),
            "ORDERCHECK_METRICS_PORT": str(metrics_port),
            "ORDERCHECK_LOG_LEVEL": args.log_level,
            "ORDERCHECK_MAX_CONNECTIONS": str(max(100, args.connections + 10)),
            "ORDERCHECK_MAX_CONNECTIONS_PER_PEER": str(max(100, args.connections + 10)),
        }
    )
    reports: list[tuple[int, Memory]] = []
    try:
        serve.start()
        warm = plan(templates, 40, args.patients, args.seed + 1, "W")
        asyncio.run(send_all(serve.port, warm, 2, 0, adv, 0))
        wait_until(
            lambda: all(pl in adv.first for want in warm.expected for pl in want),
            60,
            "the warm-up advisories",
        )
        adv.first.clear()
        adv.corrected = adv.duplicates = adv.other = 0

        p = plan(templates, args.orders, args.patients, args.seed, "B")
        every = args.every if args.memory else 0

        def progress(done: int) -> None:
            if every and done % every == 0:
                reports.append((done, Memory.read(serve)))
                m = reports[-1][1]
                print(
                    f"  {done:>9,} messages: RSS listener {mib(m.listener)} MiB, celery main "
                    f"{mib(m.celery_main)} MiB, workers "
                    f"{' / '.join(mib(w) for w in m.workers)} MiB",
                    flush=True,
                )

        redis_pid = int(r.info("server")["process_id"])
        cpu0 = cpu_snapshot(serve, redis_pid)
        backlog = args.max_backlog if args.max_backlog is not None else (5000 if args.memory else 0)
        sent = asyncio.run(
            send_all(serve.port, p, args.connections, args.rate, adv, backlog, progress)
        )
        deadline_idle = args.stall
        last, last_change = -1, time.monotonic()
        while len(adv.first) < p.total_expected:
            count = len(adv.first)
            if count != last:
                last, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > deadline_idle:
                print(
                    f"stalled: {count} of {p.total_expected} advisories after "
                    f"{deadline_idle} s without progress",
                    file=sys.stderr,
                )
                break
            time.sleep(0.01)
        time.sleep(0.5)  # late duplicates or corrections
        got = [adv.first[pl] for want in p.expected for pl in want if pl in adv.first]
        last_adv = max(got) if got else time.perf_counter()
        cpu1 = cpu_snapshot(serve, redis_pid)
        batch = mean_batch(metrics_port)
        peak = Memory.read(serve, peak=True)
        if every:
            reports.append((args.orders, Memory.read(serve)))
        cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
        cpu["other processes"] = cpu.pop("machine") - sum(cpu.values())
        return Run(sent, adv, p, last_adv - sent.first_send, peak, reports, cpu, load, batch)
    except BaseException:
        print("\n".join(serve.log_text().splitlines()[-40:]), file=sys.stderr)
        raise
    finally:
        serve.stop()
        ris.stop()
        if not args.keep:
            r.flushdb()


def cpu_table(title: str, wall: float, cpu: dict[str, float], count: int, unit: str) -> None:
    """CPU seconds by process group during *title*, and per *unit* (of which there were count)."""
    print()
    print(
        f"CPU during {title} ({wall:.1f} s wall, {sum(cpu.values()):.1f} CPU s busy of "
        f"{wall * (os.cpu_count() or 1):.1f}; per {unit}{' sent' if unit == 'message' else ''}):"
    )
    for k, v in cpu.items():
        print(f"  {k:<28} {v:7.1f} s  {v / count * 1e6:7.0f} us/{unit}")


def report(
    args: argparse.Namespace, run: Run, echoes: list[Echo], templates: list[Template]
) -> None:
    s, a, p = run.sent, run.adv, run.plan
    received = sum(1 for want in p.expected for pl in want if pl in a.first)
    adv_lat = [a.first[pl] - s.send_time[pl] for want in p.expected for pl in want if pl in a.first]
    throughput = received / run.elapsed if run.elapsed > 0 else 0.0
    msg_rate = len(p.frames) / run.elapsed if run.elapsed > 0 else 0.0
    ack_rate = len(p.frames) / (s.last_ack - s.first_send) if s.last_ack > s.first_send else 0
    codes = ", ".join(f"{k} {v:,}" for k, v in sorted(s.codes.items()))
    rows: list[tuple[str, str]] = [
        ("messages sent", f"{len(p.frames):,} ({codes})"),
        ("in-scope orders (advisories expected)", f"{p.total_expected:,}"),
        (
            "advisories received / corrected / duplicate",
            f"{received:,} / {a.corrected:,} / {a.duplicates:,}",
        ),
        ("end to end, in-scope orders/s", f"{throughput:,.0f}"),
        ("end to end, messages/s", f"{msg_rate:,.0f}"),
        ("listener, ACKs/s", f"{ack_rate:,.0f}"),
        ("listener, mean messages per batch", f"{run.batch:.1f}"),
    ]
    if echoes:
        echo = sum(e.rate for e in echoes) / len(echoes)
        rows += [
            (
                "echo ceiling, tasks/s (before / after the run)",
                " / ".join(f"{e.rate:,.0f}" for e in echoes),
            ),
            ("ratio in-scope orders/s / echo", f"{throughput / echo:.2f}"),
            ("ratio messages/s / echo", f"{msg_rate / echo:.2f}"),
        ]
    rows += [
        (
            "ACK latency p50 / p95 / p99, ms",
            " / ".join(f"{pct(s.ack_latency, q) * 1000:.1f}" for q in (0.5, 0.95, 0.99)),
        ),
        (
            "advisory latency p50 / p99, ms",
            " / ".join(f"{pct(adv_lat, q) * 1000:.1f}" for q in (0.5, 0.99)),
        ),
        ("peak RSS listener, MiB", mib(run.peak.listener)),
        ("peak RSS celery main, MiB", mib(run.peak.celery_main)),
        ("peak RSS workers, MiB", " / ".join(mib(w) for w in run.peak.workers)),
    ]
    print()
    print(f"load average before the run: {run.load[0]:.2f}")
    print(
        f"ordercheck e2e: {args.orders:,} messages from {len(templates)} seed templates, "
        f"{args.connections} connections, {args.workers} workers, rate "
        f"{args.rate or 'unpaced'}{'/s' if args.rate else ''}, {os.cpu_count()} CPUs"
    )
    width = max(len(k) for k, _ in rows)
    print(f"| {'metric':<{width}} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for k, v in rows:
        print(f"| {k:<{width}} | {v} |")
    for n, e in enumerate(echoes):
        cpu_table(f"echo run {n + 1}", e.tasks / e.rate, e.cpu, e.tasks, "task")
    cpu_table("the run", run.elapsed, run.cpu, len(p.frames), "message")
    if run.reports:
        first = run.reports[0][1]
        print()
        print("| messages | RSS listener MiB | RSS celery main MiB | RSS workers MiB |")
        print("|---------:|-----------------:|--------------------:|----------------|")
        for done, m in run.reports:
            print(
                f"| {done:,} | {mib(m.listener)} | {mib(m.celery_main)} | "
                f"{' / '.join(mib(w) for w in m.workers)} |"
            )
        last = run.reports[-1][1]

        def growth(a: float, b: float) -> str:
            return f"{(b - a) / a * 100:+.1f}%" if a else "n/a"

        workers = " / ".join(
            growth(x, y) for x, y in zip(first.workers, last.workers, strict=False)
        )
        print(
            f"growth from {run.reports[0][0]:,} to {run.reports[-1][0]:,} messages: "
            f"listener {growth(first.listener, last.listener)}, celery main "
            f"{growth(first.celery_main, last.celery_main)}, workers {workers}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--orders",
        type=int,
        default=None,
        help="messages to send (default 20,000; 300,000 with --memory)",
    )
    parser.add_argument("--connections", type=int, default=8, help="MLLP connections (K)")
    parser.add_argument("--workers", type=int, default=2, help="Celery pool processes (W)")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="messages/s offered in total, 0 for as fast as the ACKs come",
    )
    parser.add_argument("--patients", type=int, default=5000, help="patient pool size")
    parser.add_argument("--redis-db", type=int, default=9, help="Redis database (flushed)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-echo", action="store_true", help="skip the echo ceiling")
    parser.add_argument(
        "--echo-tasks",
        type=int,
        default=None,
        help="echo tasks (default: --orders, at most 50,000)",
    )
    parser.add_argument(
        "--memory", action="store_true", help="long run: RSS every --every messages and at the end"
    )
    parser.add_argument("--every", type=int, default=50_000)
    parser.add_argument(
        "--max-backlog",
        type=int,
        default=None,
        help="in-scope orders sent ahead of the advisories (default: no limit; "
        "5,000 with --memory)",
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=60.0,
        help="give up after this many seconds without a new advisory",
    )
    parser.add_argument("--keep", action="store_true", help="leave the Redis data in place")
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="ORDERCHECK_LOG_LEVEL of the service (INFO: the default)",
    )
    args = parser.parse_args()
    if args.orders is None:
        args.orders = 300_000 if args.memory else 20_000
    url = f"redis://127.0.0.1:6379/{args.redis_db}"

    templates = load_templates()
    echoes: list[Echo] = []
    payloads = [t.text for t in templates if t.ack in ("AA", "CA")]
    n = args.echo_tasks or min(args.orders, 50_000)

    def echo() -> None:
        if not (args.no_echo or args.memory):
            echoes.append(echo_ceiling(url, n, args.connections, args.workers, payloads))
            print(
                f"echo ceiling: {echoes[-1].rate:,.0f} tasks/s ({n:,} tasks, {args.workers} "
                f"workers, {args.connections} threads)",
                flush=True,
            )

    echo()
    run = end_to_end(args, templates, url)
    echo()  # again after: the ratio uses the mean, less exposed to drift on a shared machine
    report(args, run, echoes, templates)


if __name__ == "__main__":
    main()
