"""facts.extract reads no clock of its own: the Checker passes the day in (issue 16)."""

from __future__ import annotations

from datetime import date

from tests.hl7build import order_message
from worker.check import Checker
from worker.guideline import Knowledge
from worker.history import InMemoryHistory


def _undated(birth: str) -> bytes:
    """An order with no date anywhere (MSH-7 and ORC-9 empty): its day is the checker's."""
    return order_message(reason="left thigh mass 6 cm", birth=birth).replace(b"20261120083000", b"")


def _facts(knowledge: Knowledge, today: date, birth: str) -> tuple[int | None, bool]:
    outcome = Checker(knowledge, InMemoryHistory(), today=lambda: today).check_message(
        _undated(birth)
    )
    facts = outcome.results[0].facts
    assert facts is not None
    return facts.age_years, facts.adult


def test_an_undated_order_is_read_on_the_checkers_day(knowledge: Knowledge) -> None:
    # Born 2008-12-01: 17 the day before the 18th birthday, 18 on it.
    assert _facts(knowledge, date(2026, 11, 30), "20081201") == (17, False)
    assert _facts(knowledge, date(2026, 12, 1), "20081201") == (18, True)


def test_a_dated_order_is_read_on_its_own_day(knowledge: Knowledge) -> None:
    dated = order_message(reason="left thigh mass 6 cm", birth="20081201")
    for today in (date(2026, 11, 30), date(2030, 1, 1)):
        checker = Checker(knowledge, InMemoryHistory(), today=lambda: today)  # noqa: B023
        outcome = checker.check_message(dated)
        facts = outcome.results[0].facts
        assert facts is not None and facts.age_years == 17  # ordered 2026-11-20
