"""The generated wordings of tests/wordings.py: each order gets the outcome guideline.md expects,
and none is flagged when the guideline does not call for a flag."""

from __future__ import annotations

import pytest

from tests import wordings
from worker.check import Checker

CASES = wordings.cases()


def test_the_set_is_large_and_covers_every_class() -> None:
    assert len(CASES) >= 500
    assert {w.category for w in CASES} == set(wordings.CATEGORIES)
    assert len({(w.procedure, w.reason, w.notes, w.history) for w in CASES}) >= 480


@pytest.mark.parametrize("n", range(len(CASES)), ids=[w.label for w in CASES])
def test_wording(checker: Checker, n: int) -> None:
    w = CASES[n]
    outcome = None
    for data in wordings.messages(w, n):
        outcome = checker.check_message(data)
    assert outcome is not None
    r = outcome.results[0]
    found = wordings.problems(w, r.verdict, {f.code for f in r.flags}, {a.code for a in r.advice})
    assert not found, f"{w.procedure!r} {w.reason!r} {w.notes!r}: {found}; {r.reason}"
