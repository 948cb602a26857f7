"""CPU time per order: our parse+check and build_advisory, against hl7apy and python-hl7 parsing.

    .venv/bin/python -m bench.check_speed [--generated 2000] [--rounds 5] [--no-hostile]

Inputs: every message of seeds/*.hl7 plus --generated orders (tests/replaycorpus.py: flagged CT,
appropriate MRI, out-of-scope chest CT). Each message is timed --rounds times with
time.process_time_ns (CPU time of this process); a message's time is divided by its number of
orders (at least 1). Prints median and p99 in microseconds per order, as a table.

Then the cost per KB of hostile order text: a CT order whose NTE repeats one phrase up to 64 KB,
256 KB and 1 MB, checked with the default text limit (ORDERCHECK_MAX_TEXT_CHARS) and with the
limit lifted (every character read: shows that reading stays linear in the text's length).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import hl7
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message as hl7apy_parse

from tests import replaycorpus
from worker.check import Checker
from worker.guideline import Knowledge, default_knowledge
from worker.history import InMemoryHistory
from worker.hl7.build import advisory_control_id, build_advisory
from worker.hl7.parse import split_messages
from worker.models import SiteSettings

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cr_text(data: bytes) -> str:
    """The message as the other parsers want it: no MLLP bytes, CR segment ends, decoded."""
    data = data.replace(b"\x0b", b"").replace(b"\x1c", b"").strip()
    data = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _hl7apy(text: str) -> object:
    return hl7apy_parse(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)


HOSTILE = (
    "soft tissue mass thigh no calcification ",
    "MRI thigh done ",
    "pacemaker? no ",
    "no mass, but calcification; ",
)


def hostile_table(knowledge: Knowledge) -> None:
    """CPU milliseconds per order and per KB of NTE text, limit on and lifted."""
    from tests.hl7build import order_message

    limits = {"default limit": SiteSettings(), "no limit": SiteSettings(max_text_chars=10**9)}
    print()
    print("hostile NTE text: CPU per order (ms) and per KB of text (us/KB)")
    print(f"{'phrase repeated':<42} {'KB':>6} " + " ".join(f"{k:>22}" for k in limits))
    for phrase in HOSTILE:
        for kb in (64, 256, 1024):
            note = phrase * (kb * 1024 // len(phrase))
            data = order_message(reason="Soft tissue mass left thigh", notes=(note,))
            cells = []
            for site in limits.values():
                checker = Checker(knowledge, InMemoryHistory(), site)
                t0 = time.process_time_ns()
                checker.check_message(data)
                ms = (time.process_time_ns() - t0) / 1e6
                cells.append(f"{ms:>9.1f} ms {ms * 1000 / kb:>6.0f} us/KB")
            print(f"{phrase!r:<42} {kb:>6} " + " ".join(f"{c:>22}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--generated", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-hostile", action="store_true", help="skip the per-KB table")
    args = parser.parse_args()

    messages = [
        m for p in sorted((ROOT / "seeds").glob("*.hl7")) for _, m in split_messages(p.read_bytes())
    ]
    seeds = len(messages)
    order_kinds = [k for k in replaycorpus.MIX if k in ("flagged", "appropriate", "out-of-scope")]
    messages += [
        replaycorpus.message(i, order_kinds[i % len(order_kinds)]) for i in range(args.generated)
    ]
    knowledge = default_knowledge()
    meta = knowledge.guideline.guideline

    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "parse + check (ours)",
            "build_advisory",
            "hl7apy parse_message",
            "python-hl7 parse",
        )
    }
    failures = {k: 0 for k in samples}
    for _ in range(args.rounds):
        checker = Checker(knowledge, InMemoryHistory())  # one history per round, as the CLI
        for data in messages:
            t0 = time.process_time_ns()
            outcome = checker.check_message(data)
            orders = max(1, len(outcome.orders))
            samples["parse + check (ours)"].append((time.process_time_ns() - t0) / 1000 / orders)
            for order, result in zip(outcome.orders, outcome.results, strict=False):
                if outcome.raw is None or result.verdict == "rejected":
                    continue
                t0 = time.process_time_ns()
                build_advisory(
                    outcome.raw,
                    order,
                    result,
                    control_id=advisory_control_id("0123456789abcdef0123"),
                    application="ORDERCHECK",
                    facility="RAD",
                    guideline_id=meta.id,
                    disclaimer=meta.disclaimer,
                )
                samples["build_advisory"].append((time.process_time_ns() - t0) / 1000)
            text = cr_text(data)
            for name, parse in (("hl7apy parse_message", _hl7apy), ("python-hl7 parse", hl7.parse)):
                t0 = time.process_time_ns()
                try:
                    parse(text)
                except Exception:
                    failures[name] += 1
                samples[name].append((time.process_time_ns() - t0) / 1000 / orders)

    print(
        f"{seeds} seed messages + {args.generated} generated orders, {args.rounds} rounds; "
        f"CPU time (time.process_time_ns) per order, microseconds"
    )
    print(f"{'operation':<24} {'samples':>8} {'median us':>10} {'p99 us':>9} {'raised':>7}")
    for name, values in samples.items():
        print(
            f"{name:<24} {len(values):>8} {statistics.median(values):>10.1f} "
            f"{percentile(values, 0.99):>9.1f} {failures[name]:>7}"
        )
    print(
        "hl7apy: tolerant validation, find_groups=False; 'raised' counts messages it could not "
        "parse (unreadable seeds included), python-hl7 likewise."
    )

    if not args.no_hostile:
        hostile_table(knowledge)


if __name__ == "__main__":
    main()
