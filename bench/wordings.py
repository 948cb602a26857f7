"""Accuracy on the generated wordings of tests/wordings.py, per category.

    .venv/bin/python -m bench.wordings [--show N]

An order is right when its verdict, its flag codes and the advice its wording expects are all as
guideline.md says. A false flag is a not-appropriate verdict where the guideline calls for none.
--show prints up to N wrong orders with what went wrong.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from tests import wordings
from worker.check import Checker
from worker.guideline import default_knowledge
from worker.history import InMemoryHistory

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--show", type=int, default=0, help="print up to N wrong orders")
    ap.add_argument("--category", default="", help="only this category")
    args = ap.parse_args()
    checker = Checker(default_knowledge(), InMemoryHistory())
    total: Counter[str] = Counter()
    right: Counter[str] = Counter()
    false: Counter[str] = Counter()
    shown = 0
    for n, w in enumerate(wordings.cases()):
        if args.category and w.category != args.category:
            continue
        r = None
        for data in wordings.messages(w, n):
            r = checker.check_message(data).results[0]
        assert r is not None
        found = wordings.problems(
            w, r.verdict, {f.code for f in r.flags}, {a.code for a in r.advice}
        )
        total[w.category] += 1
        right[w.category] += not found
        false[w.category] += wordings.false_flag(w, r.verdict)
        if found and shown < args.show:
            shown += 1
            print(f"- {w.label} {w.procedure!r} {w.reason!r} {w.notes} {w.history}")
            print(f"    {'; '.join(found)}\n    {r.reason}")
    print(f"{'category':<18} {'orders':>6} {'right':>6} {'accuracy':>9} {'false flags':>12}")
    for cat in wordings.CATEGORIES:
        if total[cat]:
            acc = 100 * right[cat] / total[cat]
            print(f"{cat:<18} {total[cat]:>6} {right[cat]:>6} {acc:>8.1f}% {false[cat]:>12}")
    t, ok, ff = sum(total.values()), sum(right.values()), sum(false.values())
    print(f"{'all':<18} {t:>6} {ok:>6} {100 * ok / max(t, 1):>8.1f}% {ff:>12}")


if __name__ == "__main__":
    main()
