"""Orders in Spanish, German, French and Italian: accuracy per language and category, false flags,
and CPU time per order (the first order of a language builds its patterns: not counted).

    .venv/bin/python -m bench.language_accuracy [--rounds 3]

Then the cost of language detection for English orders: the seeds and --generated English
orders (tests/replaycorpus.py) checked with detection, and with it switched off (every order
read as English), interleaved (each goes first for half the messages), median CPU per order.

The cases are tests/languagecases.py (generated wordings, expected outcomes from guideline.md);
a case is right when its verdict and flags are the expected ones and the expected advice is given.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import worker.facts
from tests import replaycorpus
from tests.hl7build import order_message
from tests.languagecases import Case, cases
from worker.check import Checker
from worker.guideline import Knowledge, default_knowledge
from worker.history import InMemoryHistory
from worker.language import Language, reading
from worker.models import Order, ParsedMessage

ROOT = Path(__file__).resolve().parent.parent


def message(case: Case) -> bytes:
    return order_message(
        procedure=f"^{case.procedure}",
        reason=f"^{case.reason}",
        notes=case.notes,
        extra_msh={19: case.msh19} if case.msh19 else None,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--generated", type=int, default=2000)
    args = ap.parse_args()
    kn = default_knowledge()
    for code in ("es", "de", "fr", "it"):
        kn.in_language(code)  # built once per process, before timing
    right: dict[tuple[str, str], list[bool]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    false_flags: list[str] = []
    for case in cases():
        data = message(case)
        for _ in range(args.rounds):
            checker = Checker(kn, InMemoryHistory())
            t0 = time.process_time_ns()
            r = checker.check_message(data).results[0]
            cpu[case.language].append((time.process_time_ns() - t0) / 1000)
        ok = (
            r.verdict == case.verdict
            and {f.code for f in r.flags} == case.flags
            and case.advice <= {a.code for a in r.advice}
        )
        right[(case.language, case.category)].append(ok)
        if r.flags and not case.flags:
            false_flags.append(case.id)
    langs = sorted({lang for lang, _ in right})
    cats = sorted({cat for _, cat in right})
    print(f"{'category':24}" + "".join(f"{lang:>10}" for lang in langs))
    for cat in cats:
        cells = []
        for lang in langs:
            oks = right[(lang, cat)]
            cells.append(f"{sum(oks)}/{len(oks):<4}".rjust(10))
        print(f"{cat:24}" + "".join(cells))
    total = [ok for oks in right.values() for ok in oks]
    print(f"\nright: {sum(total)}/{len(total)} ({100 * sum(total) / len(total):.1f}%)")
    print(f"false flags: {len(false_flags)} {false_flags if false_flags else ''}")
    print("\nCPU per order (parse + check), microseconds")
    print(f"{'language':10}{'samples':>9}{'median':>10}{'p99':>10}")
    for lang in langs:
        values = sorted(cpu[lang])
        p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
        print(f"{lang:10}{len(values):>9}{statistics.median(values):>10.1f}{p99:>10.1f}")
    english_detection_cost(kn, args.generated, args.rounds)


def _english_only(
    order: Order, message: ParsedMessage, kn: Knowledge
) -> tuple[Knowledge, Language]:
    return kn, Language("en", "default")


def english_detection_cost(kn: Knowledge, generated: int, rounds: int) -> None:
    kinds = [k for k in replaycorpus.MIX if k in ("flagged", "appropriate", "out-of-scope")]
    data = [p.read_bytes() for p in sorted((ROOT / "seeds").glob("*.hl7"))]
    data += [replaycorpus.message(i, kinds[i % len(kinds)]) for i in range(generated)]
    times: dict[str, list[float]] = {"with detection": [], "English only": []}
    for _ in range(rounds):
        for i, msg in enumerate(data):
            pair = [("with detection", reading), ("English only", _english_only)]
            for name, read in pair if i % 2 else pair[::-1]:  # the first one warms the caches
                worker.facts.reading = read  # type: ignore[attr-defined]
                checker = Checker(kn, InMemoryHistory())
                t0 = time.process_time_ns()
                outcomes = checker.check_file_bytes(msg)
                n = max(1, sum(len(o.results) for o in outcomes))
                times[name].append((time.process_time_ns() - t0) / 1000 / n)
    worker.facts.reading = reading  # type: ignore[attr-defined]
    print(f"\nEnglish orders ({len(data)} messages x {rounds}): CPU per order, microseconds")
    for name, values in times.items():
        print(f"{name:16}{statistics.median(values):>10.1f} median")


if __name__ == "__main__":
    main()
