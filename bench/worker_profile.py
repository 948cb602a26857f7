"""Where a worker's CPU goes, per message: the e2e message mix through one Processor.

    .venv/bin/python -m bench.worker_profile                   # 4,000 messages, batches of 8
    .venv/bin/python -m bench.worker_profile --messages 8000 --top 40

The same work as one Celery pool process of `bench.e2e` (what `validate_batch` does, without
Celery): the messages the listener accepts (AA/CA) from the seeds' mix, each with its own MSH-10
and placer numbers and a patient from a pool of --patients, in batches of --batch, through
`worker.pipeline.Processor.process_batch` on a real Redis (database --redis-db, flushed), the
worker's JSON log lines written to /dev/null, advisories delivered over MLLP to a fake ordering
system in a process of its own.

It prints the CPU time per message (best of --repeat runs, all threads of this process), then
the same run with each stage's functions wrapped in a CPU clock of the calling thread (a few
calls per message, so the figures are those of an unprofiled run; see clocked_stages):

    HL7 read                      parse_message + read_message, as the pipeline calls them
    facts / text                  facts.extract (terms, negation, sizes, sites, prior studies)
    rules + result                the rest of Checker.check_parsed (validators, advice, protocol)
    advisory build                hl7.build.build_advisory
    Redis: ...                    the ledger's three steps (records' JSON and redis-py included)
    delivery (wait for threads)   the calling thread's part of Processor._finish_all
    delivery threads, glue        the rest: MLLP sends and ACKs, the log line per message (in the
                                  delivery threads), the pipeline's own code

With --top N, one more run under cProfile (CPU clock) lists the N functions that cost most by
their own time; cProfile inflates code made of many small Python calls (the HL7 read, the text
reader), so read it for the ranking, not for the shares.

Celery's share is not here: it is a pool process's CPU per message in bench.e2e
minus this figure (an echo task costs a pool process about 270 us).
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import multiprocessing
import os
import pstats
import random
import socket
import time
from typing import Any

from bench.e2e import load_templates, rewrite
from tests.support import FakeOrderingSystem, free_port, wait_until
from worker.guideline import load_knowledge
from worker.logs import configure
from worker.pipeline import Processor
from worker.publish import Publisher
from worker.runtime import Stores, redis_client
from worker.settings import Settings


def messages(n: int, patients: int, seed: int) -> list[bytes]:
    templates = [t for t in load_templates() if t.ack in ("AA", "CA")]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = rng.choice(templates)
        tag = f"WP{seed}-{i:07d}"
        text, _ = rewrite(t.text, tag, tag, f"WP{rng.randrange(patients):06d}")
        out.append(text.encode("latin-1"))
    return out


def _ordering_system(port: int) -> None:
    FakeOrderingSystem(port, keep=False).start()
    while True:
        time.sleep(3600)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _no_retry(advisory_id: str, attempt: int, delay: float) -> None:
    """Retries are not timed here (the fake ordering system accepts every advisory)."""


def run(processor: Processor, batches: list[list[bytes]]) -> int:
    done = 0
    for batch in batches:
        now = time.time()
        ids, failed = processor.process_batch([(m, now) for m in batch])
        if failed:
            raise SystemExit(f"a batch failed: {next(iter(failed.values()))!r}")
        done += len(ids)
    return done


class StageClock:
    """Wraps functions so that the CPU time of the calling thread spent in them adds up per
    stage (an inner stage's time is taken out of the outer one's)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._inner = 0.0  # time of stages run inside the current one

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        function = getattr(owner, name)
        clock = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            outer_inner, clock._inner = clock._inner, 0.0
            start = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.thread_time() - start
                clock.seconds[stage] = clock.seconds.get(stage, 0.0) + spent - clock._inner
                clock._inner = outer_inner + spent

        setattr(owner, name, timed)


def clocked_stages() -> tuple[StageClock, list[tuple[Any, str, Any]]]:
    """The stages' functions wrapped (pipeline, check, ledger); returns the clock and what to
    put back."""
    from worker import check, ledger, pipeline

    clock = StageClock()
    targets = [
        (pipeline, "parse_message", "HL7 read"),
        (pipeline, "read_message", "HL7 read"),
        (check, "extract", "facts / text"),
        (check.Checker, "check_parsed", "rules + result"),
        (pipeline, "build_advisory", "advisory build"),
        (ledger.RedisLedger, "take", "Redis: locks + histories"),
        (ledger.RedisLedger, "record", "Redis: records + releases"),
        (ledger.RedisLedger, "write", "Redis: delivery states"),
        (pipeline.Processor, "_finish_all", "delivery (wait for threads)"),
    ]
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in targets]
    for owner, name, stage in targets:
        clock.wrap(owner, name, stage)
    return clock, saved


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=8, help="messages per batch (e2e: ~8)")
    parser.add_argument("--patients", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (the best is shown)")
    parser.add_argument("--redis-db", type=int, default=9, help="Redis database (flushed)")
    parser.add_argument(
        "--top", type=int, default=0, help="also profile a run and print its top N functions"
    )
    args = parser.parse_args()
    configure("INFO")  # the worker's JSON log lines, written to /dev/null
    devnull = open(os.devnull, "w")  # noqa: SIM115 - open for the whole run
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(devnull)

    ris_port = free_port()
    ris = multiprocessing.get_context("spawn").Process(
        target=_ordering_system, args=(ris_port,), daemon=True
    )
    ris.start()  # its own process, as in bench.e2e: its CPU is not the worker's
    wait_until(lambda: _listening(ris_port), 30, "the fake ordering system")
    url = f"redis://127.0.0.1:6379/{args.redis_db}"
    settings = Settings(redis_url=url, advisory_host="127.0.0.1", advisory_port=ris_port)
    client = redis_client(url)  # the stores' client: flushed before each run
    knowledge = load_knowledge(settings.code_map, protocols=settings.protocols_file)

    def processor() -> Processor:
        client.flushdb()
        return Processor(settings, knowledge, Stores(settings), Publisher(settings), _no_retry)

    data = messages(args.messages, args.patients, 1)
    batches = [data[i : i + args.batch] for i in range(0, len(data), args.batch)]
    run(processor(), batches[: max(1, len(batches) // 10)])  # warm up (imports, caches)
    best = float("inf")
    advisories = 0
    for _ in range(args.repeat):
        proc = processor()
        start = time.process_time()
        advisories = run(proc, batches)
        best = min(best, time.process_time() - start)
    print(
        f"worker profile: {len(data):,} messages (AA/CA of the e2e mix) in batches of "
        f"{args.batch}, {advisories:,} advisories delivered"
    )
    print(f"  CPU per message (best of {args.repeat}): {best / len(data) * 1e6:,.0f} us")
    clock, saved = clocked_stages()
    proc = processor()
    start = time.process_time()
    run(proc, batches)
    total = time.process_time() - start
    for owner, name, function in saved:
        setattr(owner, name, function)
    print(f"  by stage, unprofiled (this run: {total / len(data) * 1e6:,.0f} us per message):")
    for stage, seconds in clock.seconds.items():
        print(f"    {stage:30s} {seconds / len(data) * 1e6:6,.0f} us")
    rest = total - sum(clock.seconds.values())
    print(f"    {'delivery threads, glue':30s} {rest / len(data) * 1e6:6,.0f} us")
    if args.top:
        profile = cProfile.Profile(time.process_time)
        proc = processor()
        profile.enable()
        run(proc, batches)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
    ris.terminate()
    ris.join()
    client.flushdb()


if __name__ == "__main__":
    main()
