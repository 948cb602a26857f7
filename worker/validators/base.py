"""What every rule receives and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from worker.guideline import Knowledge
from worker.history import same_side
from worker.imaging import from_history
from worker.models import HistoryEntry, OrderFacts, PriorStudy, SiteSettings

_THIGH_REGIONS = ("thigh", "lower_extremity", "unknown")


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule's result for one order.

    rule_id: a rule id of guideline.toml; kind: "flag" (not-appropriate) or "advice";
    exception: the id of the rule exception that applied (then kind is "advice");
    detail: what in this order triggered the rule, in words.
    """

    rule_id: str
    kind: Literal["flag", "advice"]
    detail: str = ""
    exception: str | None = None


@dataclass(frozen=True, slots=True)
class RuleContext:
    """The order's facts, the patient's history and the site's settings. No I/O behind it."""

    facts: OrderFacts
    history: list[HistoryEntry]
    site: SiteSettings
    knowledge: Knowledge
    red_flags: list[str] = field(default_factory=list)

    @property
    def prior_studies(self) -> list[PriorStudy]:
        """The studies the order's text names, then the patient's history, as structured facts."""
        return [*self.facts.prior_imaging, *from_history(self.history)]

    @property
    def mri_on_record(self) -> bool:
        """An MRI that covers this thigh is in the history or documented in the order: done or
        of unknown status (not planned, not future-dated), of the thigh or lower limb, same side
        or none (PriorStudy.covers)."""
        if self.facts.prior_mri_documented:
            return True
        return any(s.covers(self.facts.laterality) for s in self.prior_studies)

    @property
    def unclear_mri(self) -> PriorStudy | None:
        """The MRI the order names without saying whether it was done (no date, result or
        plan), when no other study settles it: the rules that need "no MRI yet" are then not
        evaluated rather than guessed (guideline.md is silent on such a mention)."""
        side = self.facts.laterality
        studies = [s for s in self.prior_studies if s.covers(side)]
        if not studies or any(s.status == "done" for s in studies):
            return None
        return studies[0]

    @property
    def radiograph_on_record(self) -> bool:
        if self.facts.radiograph_documented:
            return True
        return any(
            e.procedure_class == "radiograph"
            and e.region in (*_THIGH_REGIONS, "knee", "hip")
            and same_side(e.laterality, self.facts.laterality)
            for e in self.history
        )


def evidence_for(ctx: RuleContext, fact: str) -> str | None:
    """The words a fact was read from, or None when the order does not state it."""
    return next((e.value for e in ctx.facts.evidence if e.fact == fact), None)


def describe_red_flags(ctx: RuleContext, flags: list[str] | None = None) -> str:
    flags = ctx.red_flags if flags is None else flags
    return ", ".join(flags) if flags else "none stated"
