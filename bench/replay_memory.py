"""Replay N generated messages in-process and show that memory stays flat.

    .venv/bin/python -m bench.replay_memory [-n 300000] [--patients 10000] [--every 50000]
                                            [--max-patients 500000]

Writes the messages (tests/replaycorpus.py: flagged CT, appropriate MRI, out-of-scope chest CT,
final MRI results feeding the history, garbage) to a temporary file, then replays it with
`worker.commands.replay.Replayer` (streamed reading, one Checker, the bounded InMemoryHistory),
printing messages/s and the peak RSS (resource.getrusage, ru_maxrss) every --every messages and
at the end, with the patient keys and studies the history holds.

The history is the only state that grows with the input: one entry per final result, at most
200 per patient key and 500,000 keys. With few patients (--patients 20) it fills within the
first 50,000 messages and the peak RSS stays flat after that; with many, RSS grows by about
1 KiB per result held, and nothing else grows.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from tests import replaycorpus
from worker.check import Checker
from worker.commands.replay import Replayer, ReplaySummary
from worker.guideline import default_knowledge
from worker.history import InMemoryHistory

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return pages * resource.getpagesize() / (1 << 20)


def history_entries(history: InMemoryHistory) -> int:
    """Studies held by the history (a bench-only peek at its private dict)."""
    return sum(len(bucket) for bucket in history._data.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-n", type=int, default=300_000, help="messages to generate")
    parser.add_argument(
        "--patients", type=int, default=10_000, help="size of each patient pool (orders, results)"
    )
    parser.add_argument(
        "--max-patients", type=int, default=500_000, help="InMemoryHistory bound on patient keys"
    )
    parser.add_argument("--every", type=int, default=50_000, help="report every N messages")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "replay.hl7"
        started = time.perf_counter()
        with path.open("wb") as out:
            replaycorpus.write_corpus(out, args.n, patients=args.patients)
        size = path.stat().st_size
        print(
            f"generated {args.n:,} messages, {size / (1 << 20):.1f} MiB, in "
            f"{time.perf_counter() - started:.1f} s"
        )
        knowledge = default_knowledge()
        print(f"before replay: peak RSS {peak_rss_mib():.1f} MiB")
        history = InMemoryHistory(max_patients=args.max_patients)
        t0 = time.perf_counter()
        c0 = time.process_time()
        print(
            f"{'messages':>10} {'msg/s':>8} {'CPU s':>7} {'peak RSS MiB':>13} "
            f"{'RSS MiB':>8} {'history keys':>13} {'entries':>8}"
        )

        def report(summary: ReplaySummary) -> None:
            if summary.messages % args.every == 0:
                wall = time.perf_counter() - t0
                print(
                    f"{summary.messages:>10,} {summary.messages / wall:>8,.0f} "
                    f"{time.process_time() - c0:>7.1f} {peak_rss_mib():>13.1f} "
                    f"{current_rss_mib():>8.1f} {len(history):>13,} "
                    f"{history_entries(history):>8,}",
                    flush=True,
                )

        replayer = Replayer(Checker(knowledge, history), report)
        with path.open("rb") as stream:
            replayer.run_stream(stream, str(path))
        s = replayer.summary
        wall = time.perf_counter() - t0
        print(
            f"{'end':>10} {s.messages / wall:>8,.0f} {time.process_time() - c0:>7.1f} "
            f"{peak_rss_mib():>13.1f} {current_rss_mib():>8.1f} {len(history):>13,} "
            f"{history_entries(history):>8,}"
        )
        print(
            f"messages {s.messages:,}, orders {s.orders:,}, in scope {s.in_scope:,}, "
            f"verdicts {dict(s.verdicts)}, rejected {s.rejected:,}"
        )


if __name__ == "__main__":
    main()
