"""Counts shared by the review page and `ordercheck flags summary`: flags per ISO week by rule and
by ordering provider, the share of flagged orders overridden, and the protocol worklist.

A flagged order is one with at least one flag (verdict not-appropriate). Flags are counted per
rule (an order with two flags counts once for each rule); providers count flagged orders and how
many of them were overridden. Missed flags (a reviewer recorded that an order should have been
flagged under a rule) are counted per rule, in the week the order was received.
Weeks are ISO 8601 weeks ("2026-W47") of `received_at` in the server's local time zone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from worker.models import OrderFacts
from worker.records import AdvisoryQuery, AdvisoryRecord
from worker.review.filters import day_bounds, local_tz
from worker.store import AdvisoryStore

UNKNOWN_PROVIDER = "(no provider)"
PROTOCOL_CLASSES = ("mri", "ct")


def iso_week(when: datetime) -> str:
    """The ISO week of *when* in local time, as "YYYY-Www"."""
    local = when.astimezone(local_tz()) if when.tzinfo else when
    year, week, _ = local.isocalendar()
    return f"{year}-W{week:02d}"


def week_start(week: str) -> date:
    """The Monday of an ISO week label "YYYY-Www"."""
    year, num = week.split("-W")
    return date.fromisocalendar(int(year), int(num), 1)


@dataclass(slots=True)
class WeekCounts:
    """One ISO week: flags by rule, flagged orders by provider, how many were overridden."""

    week: str
    by_rule: Counter[str] = field(default_factory=Counter)
    by_provider: Counter[str] = field(default_factory=Counter)
    overridden_by_provider: Counter[str] = field(default_factory=Counter)
    missed_by_rule: Counter[str] = field(default_factory=Counter)  # missed flags recorded
    flagged: int = 0  # orders with at least one flag
    overridden: int = 0  # of those, disposition overridden
    reviewed: int = 0  # of those, any disposition but open

    @property
    def override_share(self) -> float | None:
        return self.overridden / self.flagged if self.flagged else None


@dataclass(slots=True)
class Summary:
    """Weekly flag counts, oldest week first, and the totals."""

    weeks: list[WeekCounts]
    rules: list[str]  # rules seen, most flags first
    providers: list[str]  # providers seen, most flagged orders first
    missed_rules: list[str]  # rules with a missed flag recorded, most first
    flagged: int
    overridden: int
    reviewed: int

    @property
    def override_share(self) -> float | None:
        """Share of flagged orders whose disposition is overridden (None: no flagged order)."""
        return self.overridden / self.flagged if self.flagged else None

    def rule_total(self, rule: str) -> int:
        return sum(w.by_rule[rule] for w in self.weeks)

    def provider_total(self, provider: str) -> int:
        return sum(w.by_provider[provider] for w in self.weeks)

    def provider_overridden(self, provider: str) -> int:
        return sum(w.overridden_by_provider[provider] for w in self.weeks)

    def provider_share(self, provider: str) -> float | None:
        """Share of this provider's flagged orders that were overridden."""
        total = self.provider_total(provider)
        return self.provider_overridden(provider) / total if total else None

    def missed_total(self, rule: str | None = None) -> int:
        """Missed flags recorded for *rule* (every rule when None)."""
        if rule is None:
            return sum(sum(w.missed_by_rule.values()) for w in self.weeks)
        return sum(w.missed_by_rule[rule] for w in self.weeks)

    def rule_series(self) -> dict[str, list[int]]:
        return {r: [w.by_rule[r] for w in self.weeks] for r in self.rules}

    def provider_series(self, top: int = 8) -> dict[str, list[int]]:
        """Flagged orders per week for the *top* providers, the rest summed as "other"."""
        shown = self.providers[:top]
        series = {p: [w.by_provider[p] for w in self.weeks] for p in shown}
        rest = self.providers[top:]
        if rest:
            series["other"] = [sum(w.by_provider[p] for p in rest) for w in self.weeks]
        return series

    def as_json(self) -> dict[str, object]:
        return {
            "flagged": self.flagged,
            "overridden": self.overridden,
            "reviewed": self.reviewed,
            "override_share": self.override_share,
            "missed": self.missed_total(),
            "missed_by_rule": {r: self.missed_total(r) for r in self.missed_rules},
            "providers": [
                {
                    "provider": p,
                    "flagged": self.provider_total(p),
                    "overridden": self.provider_overridden(p),
                    "override_share": self.provider_share(p),
                }
                for p in self.providers
            ],
            "weeks": [
                {
                    "week": w.week,
                    "flagged": w.flagged,
                    "overridden": w.overridden,
                    "reviewed": w.reviewed,
                    "override_share": w.override_share,
                    "by_rule": dict(w.by_rule),
                    "by_provider": dict(w.by_provider),
                    "missed_by_rule": dict(w.missed_by_rule),
                }
                for w in self.weeks
            ],
        }


MAX_FILL_WEEKS = 106  # about two years of weeks listed without a flag


def _span_weeks(labels: list[str]) -> int:
    return (week_start(max(labels)) - week_start(min(labels))).days // 7


def summarise(
    records: Iterable[AdvisoryRecord], first: datetime | None = None, last: datetime | None = None
) -> Summary:
    """Weekly counts of the flagged records among *records*, and of the missed flags recorded.

    Every week from the first to the last is listed, flags or not, so a chart shows gaps as
    gaps; *first* and *last* widen that range (the weeks of a query's since and until).
    """
    weeks: dict[str, WeekCounts] = {}
    rules: Counter[str] = Counter()
    providers: Counter[str] = Counter()
    missed: Counter[str] = Counter()
    for rec in records:
        flags = rec.result.flags
        missed_rules = missed_flags(rec)
        if not flags and not missed_rules:
            continue
        label = iso_week(rec.received_at)
        w = weeks.get(label) or weeks.setdefault(label, WeekCounts(label))
        w.missed_by_rule.update(missed_rules)
        missed.update(missed_rules)
        if not flags:
            continue
        provider = rec.result.ordering_provider.strip() or UNKNOWN_PROVIDER
        codes = {f.code for f in flags}
        w.by_rule.update(codes)
        rules.update(codes)
        w.by_provider[provider] += 1
        providers[provider] += 1
        w.flagged += 1
        if rec.disposition == "overridden":
            w.overridden += 1
            w.overridden_by_provider[provider] += 1
        if rec.disposition != "open":
            w.reviewed += 1
    bounds = sorted(weeks) + [iso_week(t) for t in (first, last) if t is not None]
    if len(bounds) > len(weeks) and _span_weeks(bounds) > MAX_FILL_WEEKS:
        bounds = sorted(weeks)  # a range of years: list the weeks with flags only
    labels = sorted(weeks)
    if bounds:
        day, end = week_start(min(bounds)), week_start(max(bounds))
        while day <= end:
            label = iso_week(datetime.combine(day, datetime.min.time(), tzinfo=local_tz()))
            weeks.setdefault(label, WeekCounts(label))
            day += timedelta(days=7)
        labels = sorted(weeks)
    ordered = [weeks[k] for k in labels]
    return Summary(
        weeks=ordered,
        rules=[r for r, _ in sorted(rules.items(), key=lambda kv: (-kv[1], kv[0]))],
        providers=[p for p, _ in sorted(providers.items(), key=lambda kv: (-kv[1], kv[0]))],
        missed_rules=[r for r, _ in sorted(missed.items(), key=lambda kv: (-kv[1], kv[0]))],
        flagged=sum(w.flagged for w in ordered),
        overridden=sum(w.overridden for w in ordered),
        reviewed=sum(w.reviewed for w in ordered),
    )


def missed_flags(rec: AdvisoryRecord) -> set[str]:
    """The rules reviewers recorded as missed on *rec* (each counted once per order)."""
    return {d.rule for d in rec.audit if d.state == "missed" and d.rule}


def summarise_store(store: AdvisoryStore, q: AdvisoryQuery) -> Summary:
    """The summary of the records matching *q* (the shared query layer): flagged ones and
    those with a missed flag recorded."""
    from worker.store import query

    last = (q.until - timedelta(microseconds=1)) if q.until else None
    if q.since and not q.until:
        last = datetime.now(local_tz())
    return summarise(query(store, q, 0, None), q.since, last)


def percent(share: float | None) -> str:
    return "–" if share is None else f"{share * 100:.0f}%"


# -- protocol worklist ---------------------------------------------------------------------------

DRIVING_FACTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # (OrderFacts field, label, evidence fact names that support it)
    ("size_cm", "Size", ("size_cm",)),
    ("deep", "Deep to fascia", ("deep", "superficial")),
    ("calcification", "Calcification", ("calcification",)),
    ("bony_involvement", "Bony involvement", ("bony_involvement",)),
    ("haemorrhage", "Suspected haemorrhage", ("haemorrhage",)),
    ("vascular", "Vascular concern", ("vascular",)),
    (
        "mri_contraindications",
        "MRI contraindications",
        ("mri_contraindication", "mri_contraindications"),
    ),
    ("contrast_cautions", "Contrast cautions", ("contrast_caution", "contrast_cautions")),
)


@dataclass(frozen=True, slots=True)
class FactRow:
    label: str
    value: str  # as shown: "6 cm", "yes", "no", "not stated", "device, metal"
    present: bool
    sources: tuple[str, ...]  # "OBR-31: deep"


def _shown(value: object) -> tuple[str, bool]:
    if value is None:
        return "not stated", False
    if isinstance(value, bool):
        return ("yes" if value else "no"), value
    if isinstance(value, float):
        return f"{value:g} cm", True
    if isinstance(value, list):
        return (", ".join(str(v) for v in value) or "none stated"), bool(value)
    return str(value), bool(value)


def driving_facts(facts: OrderFacts | None) -> list[FactRow]:
    """The facts that drive the protocol, each with the fields they were read from."""
    if facts is None:
        return []
    rows: list[FactRow] = []
    for name, label, evidence_names in DRIVING_FACTS:
        value, present = _shown(getattr(facts, name))
        sources = tuple(
            f"{e.source}: {e.value}"
            for e in facts.evidence
            if e.fact in evidence_names or e.fact.startswith(f"{name}.")
        )
        rows.append(FactRow(label, value, present, sources))
    return rows


def protocol_worklist(store: AdvisoryStore, day: date) -> list[AdvisoryRecord]:
    """The in-scope MRI and CT orders received on local *day*, oldest first (a working order)."""
    from worker.store import query

    since, until = day_bounds(day)
    out = [
        rec
        for rec in query(store, AdvisoryQuery(since=since, until=until), 0, None)
        if rec.result.in_scope
        and rec.result.facts is not None
        and rec.result.facts.procedure_class in PROTOCOL_CLASSES
    ]
    out.reverse()
    return out
