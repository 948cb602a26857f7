"""Turns the review filters as typed (CLI flags, web form fields) into one AdvisoryQuery.

The web page and `ordercheck flags` share this, so a filter means the same in both. Dates are
calendar days in the server's local time zone; `until` is inclusive of its day (the query's own
`until` is exclusive, so a day "until 2026-11-20" runs to 2026-11-21T00:00 local).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import get_args

from worker.errors import OrdercheckError
from worker.guideline import RULE_IDS
from worker.models import Verdict
from worker.records import AdvisoryQuery, Delivery, DispositionState

VERDICTS: tuple[str, ...] = get_args(Verdict)
DELIVERIES: tuple[str, ...] = get_args(Delivery)
DISPOSITIONS: tuple[str, ...] = get_args(DispositionState)
RULES: tuple[str, ...] = RULE_IDS
MAX_TEXT = 200  # characters of a free-text filter (provider, facility)


class FilterError(OrdercheckError, ValueError):
    """Raised when a filter value cannot be read; the message names the filter and the value."""


def local_tz() -> tzinfo:
    """The server's local time zone (dates typed by a reviewer are local days)."""
    tz = datetime.now().astimezone().tzinfo
    assert tz is not None
    return tz


def parse_when(text: str, name: str, end_of_day: bool = False) -> datetime:
    """A date (YYYY-MM-DD) or ISO date-time as an aware datetime.

    end_of_day: a bare date means the start of the next day (an inclusive `until`).
    """
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            start = datetime.combine(day, time(), tzinfo=local_tz())
            return start + timedelta(days=1) if end_of_day else start
        when = datetime.fromisoformat(value)
    except ValueError:
        raise FilterError(
            f"{name}: {value!r} is not a date (YYYY-MM-DD) or an ISO date-time"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=local_tz())


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a local calendar day, aware."""
    start = datetime.combine(day, time(), tzinfo=local_tz())
    return start, start + timedelta(days=1)


def _choice(value: str, name: str, allowed: tuple[str, ...]) -> str | None:
    value = value.strip()
    if not value:
        return None
    if value not in allowed:
        raise FilterError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _text(value: str, name: str) -> str | None:
    value = value.strip()
    if len(value) > MAX_TEXT:
        raise FilterError(f"{name}: longer than {MAX_TEXT} characters")
    return value or None


@dataclass(frozen=True, slots=True)
class Filters:
    """The filters as typed; empty strings mean "any"."""

    since: str = ""
    until: str = ""
    verdict: str = ""
    rule: str = ""
    provider: str = ""
    facility: str = ""
    delivery: str = ""
    disposition: str = ""

    def query(self) -> AdvisoryQuery:
        """The AdvisoryQuery these filters mean; FilterError names a bad value."""
        since = parse_when(self.since, "since") if self.since.strip() else None
        until = parse_when(self.until, "until", end_of_day=True) if self.until.strip() else None
        if since and until and until <= since:
            raise FilterError("until: the range ends before it starts")
        rule = _text(self.rule, "rule")
        return AdvisoryQuery.model_validate(
            {
                "since": since,
                "until": until,
                "verdict": _choice(self.verdict, "verdict", VERDICTS),
                "rule": rule.upper() if rule else None,
                "provider": _text(self.provider, "provider"),
                "facility": _text(self.facility, "facility"),
                "delivery": _choice(self.delivery, "delivery", DELIVERIES),
                "disposition": _choice(self.disposition, "disposition", DISPOSITIONS),
            }
        )

    def items(self) -> dict[str, str]:
        """The non-empty filters, for links that keep them (paging)."""
        return {
            k: v
            for k, v in (
                ("since", self.since),
                ("until", self.until),
                ("verdict", self.verdict),
                ("rule", self.rule),
                ("provider", self.provider),
                ("facility", self.facility),
                ("delivery", self.delivery),
                ("disposition", self.disposition),
            )
            if v
        }
