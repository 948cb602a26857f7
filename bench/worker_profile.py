"""Where a worker's CPU goes, per message: the e2e message mix through one Processor.

    .venv/bin/python bench/worker_profile.py                       # 4,000 messages, batches of 8
    .venv/bin/python bench/worker_profile.py --messages 8000 --top 40

The same work as one Celery pool process of `bench/e2e.py` (what `validate_batch` does, without
Celery): the messages the listener accepts (AA/CA) from the seeds' mix, each with its own MSH-10
and placer numbers and a patient from a pool, in batches of --batch, through
`worker.pipeline.Processor.process_batch` on a real Redis (database --redis-db, flushed) with
advisories delivered over MLLP to a fake ordering system in this process.

It runs the batches twice: once timed (process CPU time per message) and once under cProfile, and
prints the per-message CPU of each stage, read from the profile's inclusive times:

    HL7 read        worker.hl7.parse.parse_message + worker.hl7.read.read_message
    facts/text      worker.facts.extract (terms, negation, sizes, sites, priors)
    rules           the validators (worker.check: rule evaluation after the facts)
    advisory build  worker.hl7.build.build_advisory + the AdvisoryRecord model
    Redis           every redis-py command and pipeline (locks, history, records, states)
    delivery        worker.publish (MLLP send and ACK wait, the fake ordering system's ACK
                    arrives on another thread)
    logging         the one log line per message

Celery's own share is not here: it is the difference between a pool process's CPU per message
in bench/e2e.py and the total below (about 240 us per task for the echo task).
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import multiprocessing
import socket
import pstats
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.e2e import load_templates, rewrite  # noqa: E402
from worker.guideline import load_knowledge  # noqa: E402
from worker.logs import configure  # noqa: E402
from worker.pipeline import Processor  # noqa: E402
from worker.publish import Publisher  # noqa: E402
from worker.runtime import Stores, redis_client  # noqa: E402
from worker.settings import Settings  # noqa: E402
from worker.testing import FakeOrderingSystem, free_port, wait_until  # noqa: E402

# (label, function keys: (file suffix, function name)) whose inclusive time is the stage's.
STAGES: list[tuple[str, list[tuple[str, str]]]] = [
    ("HL7 read", [("worker/hl7/parse.py", "parse_message"), ("worker/hl7/read.py", "read_message")]),
    ("facts/text", [("worker/facts.py", "extract")]),
    ("check total (facts + rules)", [("worker/check.py", "check_parsed")]),
    ("advisory build", [("worker/hl7/build.py", "build_advisory")]),
    ("advisory record model", [("worker/models.py", "__init__")]),
    ("Redis (redis-py)", [("redis/client.py", "execute_command"), ("redis/client.py", "execute")]),
    ("delivery (publish)", [("worker/publish.py", "send_many"), ("worker/publish.py", "send")]),
    ("logging", [("logging/__init__.py", "info")]),
]


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


def run(processor: Processor, batches: list[list[bytes]]) -> int:
    done = 0
    for batch in batches:
        now = time.time()
        ids, failed = processor.process_batch([(m, now) for m in batch])
        if failed:
            raise SystemExit(f"a batch failed: {next(iter(failed.values()))!r}")
        done += len(ids)
    return done


def stage_times(stats: pstats.Stats) -> dict[str, float]:
    table = stats.stats  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    for label, keys in STAGES:
        total = 0.0
        for (path, _line, name), (_cc, _nc, _tt, ct, _callers) in table.items():
            if any(path.endswith(suffix) and name == fn for suffix, fn in keys):
                total += ct
        out[label] = total
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=8, help="messages per batch (e2e: ~8)")
    parser.add_argument("--patients", type=int, default=5000)
    parser.add_argument("--redis-db", type=int, default=9, help="Redis database (flushed)")
    parser.add_argument("--top", type=int, default=0, help="also print the top N functions")
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
    ris.start()  # its own process, as in bench/e2e.py: its CPU is not the worker's
    wait_until(lambda: _listening(ris_port), 30, "the fake ordering system")
    url = f"redis://127.0.0.1:6379/{args.redis_db}"
    settings = Settings(redis_url=url, advisory_host="127.0.0.1", advisory_port=ris_port)
    client = redis_client(url)  # the stores' client: flushed before each run
    knowledge = load_knowledge(settings.code_map, protocols=settings.protocols_file)

    def processor() -> Processor:
        client.flushdb()
        return Processor(
            settings,
            knowledge,
            Stores(settings),
            Publisher(settings),
            lambda *a: None,
        )

    for seed in (1, 2):
        data = messages(args.messages, args.patients, seed)
        batches = [data[i : i + args.batch] for i in range(0, len(data), args.batch)]
        run(processor(), batches[: max(1, len(batches) // 10)])  # warm up (imports, caches)
        proc = processor()
        if seed == 1:
            start = time.process_time()
            advisories = run(proc, batches)
            cpu = time.process_time() - start
            print(
                f"worker profile: {len(data):,} messages (AA/CA of the e2e mix) in batches of "
                f"{args.batch}, {advisories:,} advisories delivered"
            )
            print(f"  CPU per message, unprofiled: {cpu / len(data) * 1e6:,.0f} us")
        else:
            profile = cProfile.Profile()
            profile.enable()
            run(proc, batches)
            profile.disable()
            stats = pstats.Stats(profile)
            total = stats.total_tt  # type: ignore[attr-defined]
            print(f"  under cProfile: {total / len(data) * 1e6:,.0f} us per message; by stage")
            print("  (inclusive, profiled; stages may nest: check total holds facts/text):")
            for label, seconds in stage_times(stats).items():
                share = seconds / total * 100 if total else 0.0
                print(f"    {label:32s} {seconds / len(data) * 1e6:7,.0f} us  {share:5.1f}%")
            if args.top:
                stats.sort_stats("tottime").print_stats(args.top)
    ris.terminate()
    ris.join()
    client.flushdb()


if __name__ == "__main__":
    main()
