"""RADIOGRAPH_FIRST: MRI, CT or US with no radiograph done or documented."""

from __future__ import annotations

from worker.validators.base import Finding, RuleContext

RULE_ID = "RADIOGRAPH_FIRST"


def evaluate(ctx: RuleContext) -> list[Finding]:
    if ctx.facts.procedure_class not in ("mri", "ct", "us") or ctx.radiograph_on_record:
        return []
    return [Finding(RULE_ID, "advice", "no radiograph on record or documented")]
