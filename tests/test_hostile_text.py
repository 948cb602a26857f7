"""Hostile order text: reading stays linear in the text's length, and a huge text is read only up
to the per-order limit, which the advisory's reason states (issue: no order stalls the workers)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

import worker.text as text_mod
from tests.hl7build import order_message
from worker.check import Checker
from worker.guideline import Knowledge
from worker.history import InMemoryHistory
from worker.models import SiteSettings

REPEATED = "soft tissue mass thigh no calcification "


class CountingPattern:
    """A compiled pattern that adds up how many characters its scans could read."""

    def __init__(self, pattern: re.Pattern[str], tally: list[int]) -> None:
        self.pattern = pattern
        self.tally = tally

    def _count(self, string: str, pos: int, endpos: int | None) -> None:
        self.tally[0] += (len(string) if endpos is None else min(endpos, len(string))) - pos

    def finditer(self, string: str, pos: int = 0, endpos: int | None = None) -> Iterator[Any]:
        self._count(string, pos, endpos)
        return self.pattern.finditer(string, pos, len(string) if endpos is None else endpos)

    def search(self, string: str, pos: int = 0, endpos: int | None = None) -> Any:
        self._count(string, pos, endpos)
        return self.pattern.search(string, pos, len(string) if endpos is None else endpos)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pattern, name)


@pytest.fixture
def scanned(monkeypatch: pytest.MonkeyPatch, knowledge: Knowledge) -> list[int]:
    """Characters scanned for clause ends and terminators while the test runs."""
    tally = [0]
    monkeypatch.setattr(text_mod, "_CLAUSE_END", CountingPattern(text_mod._CLAUSE_END, tally))
    monkeypatch.setattr(knowledge, "negation_stop", CountingPattern(knowledge.negation_stop, tally))
    text_mod._boundaries.cache_clear()  # each text's boundaries are scanned anew
    return tally


@pytest.mark.parametrize(
    "unit",
    [
        REPEATED,  # every clause term negated or not, no punctuation at all
        "MRI thigh done ",  # a study term on every word: clause side checks per hit
        "pacemaker? no ",  # an answered question per clause
        "no mass, but calcification; ",  # terminators and clause ends everywhere
    ],
)
def test_clause_scans_grow_linearly_with_the_text(
    scanned: list[int], knowledge: Knowledge, unit: str
) -> None:
    hits = 0
    for repeat in (200, 2_000):
        scanned[0] = 0
        text = text_mod.folded(unit * repeat)
        for key in ("mass_strong", "calcification", "device"):
            hits += len(text_mod.find_terms(knowledge.terms[key], text, knowledge))
        hits += len(
            list(text_mod.affirmed_hits(knowledge.terms["prior_mri"], text, knowledge, study=True))
        )
        # Each text is scanned once for its boundaries, whatever the number of terms in it.
        assert scanned[0] <= 3 * len(text), (unit, repeat, scanned[0], len(text))
    assert hits  # the texts did hold terms


def test_a_clause_reaches_a_bounded_distance(knowledge: Knowledge) -> None:
    text = text_mod.folded(REPEATED * 500)
    middle = len(text) // 2
    left, right = text_mod.clause_bounds(text, middle, middle + 4, knowledge)
    assert middle - left == text_mod.CLAUSE_REACH
    assert right - (middle + 4) == text_mod.CLAUSE_REACH
    # Punctuation still ends a clause inside the reach.
    text = "no calcification. large mass of the thigh"
    left, right = text_mod.clause_bounds(
        text, text.index("mass"), text.index("mass") + 4, knowledge
    )
    assert text[left:right] == " large mass of the thigh"


def test_the_same_negations_as_a_whole_text_scan(knowledge: Knowledge) -> None:
    """The boundaries computed once give the answers a scan per term gave."""
    texts = [
        "Thigh mass, no calcification but cortical erosion; pacemaker? no. MRI not done",
        "R thigh lump - no pain - growing, however not deep. Calcification: none",
        "left thigh mass which is not painful, XR negative, no MRI yet",
    ]
    for raw in texts:
        low = text_mod.folded(raw)
        for pattern in knowledge.terms.values():
            for m in pattern.finditer(low):
                left, right = text_mod.clause_bounds(low, m.start(), m.end(), knowledge)
                want_left = max(
                    [c.end() for c in text_mod._CLAUSE_END.finditer(low, 0, m.start())], default=0
                )
                stops = list(knowledge.negation_stop.finditer(low, want_left, m.start()))
                want_left = stops[-1].end() if stops else want_left
                after = text_mod._CLAUSE_END.search(low, m.end())
                want_right = after.start() if after else len(low)
                stop = knowledge.negation_stop.search(low, m.end(), want_right)
                want_right = stop.start() if stop else want_right
                assert (left, right) == (want_left, want_right), (raw, m.group(0))


def _ct_order(note: str) -> bytes:
    return order_message(
        procedure="73701^CT LOWER EXTREMITY W CONTRAST^CPT4",
        reason="Soft tissue mass left thigh",
        notes=(note,),
    )


def test_text_beyond_the_limit_is_not_read_and_the_reason_says_so(knowledge: Knowledge) -> None:
    checker = Checker(knowledge, InMemoryHistory(), SiteSettings(max_text_chars=5_000))
    # A pacemaker (MRI contraindicated: CT is then appropriate) written past the limit.
    late = checker.check_message(_ct_order("growing lump " * 1_000 + "non-conditional pacemaker"))
    result = late.results[0]
    assert result.verdict == "not-appropriate"  # judged on the part that was read
    assert result.facts is not None and result.facts.text_left_out > 0
    assert "Only the first part of the order's text was read" in result.reason
    # The same words within the limit are read.
    early = checker.check_message(_ct_order("non-conditional pacemaker. " + "growing lump " * 50))
    assert early.results[0].verdict == "appropriate"
    assert "Only the first part" not in early.results[0].reason


def test_a_megabyte_of_text_is_judged(knowledge: Knowledge) -> None:
    checker = Checker(knowledge, InMemoryHistory())
    result = checker.check_message(_ct_order(REPEATED * 26_000)).results[0]
    assert result.verdict == "not-appropriate"
    assert result.facts is not None and result.facts.text_left_out > 900_000


def test_the_limit_is_a_setting_with_a_floor() -> None:
    with pytest.raises(ValueError):
        SiteSettings(max_text_chars=10)


@pytest.mark.parametrize(
    ("procedure", "reason", "verdict"),
    [
        # A distance from the knee places the mass in the thigh (and is not its size).
        (
            "73718^MRI LOWER EXTREMITY WO^CPT4",
            "1.5 cm superficial mass, 10 cm above the knee",
            "appropriate",
        ),
        (
            "73700^CT LOWER EXTREMITY WO^CPT4",
            "firm mass 7 cm proximal to the patella",
            "not-appropriate",
        ),
        # Without a distance, "above the knee" is no thigh site (a suprapatellar effusion).
        ("73700^CT LOWER EXTREMITY WO^CPT4", "swelling just above the knee", "no-criteria-apply"),
    ],
)
def test_a_distance_above_the_knee_is_a_thigh_site(
    knowledge: Knowledge, procedure: str, reason: str, verdict: str
) -> None:
    checker = Checker(knowledge, InMemoryHistory())
    result = checker.check_message(order_message(procedure=procedure, reason=reason)).results[0]
    assert result.verdict == verdict, result.reason
    assert result.facts is not None and (result.facts.size_cm or 0) < 5
