"""CONTRAST_CAUTION: MRI with gadolinium for a patient with a contrast caution."""

from __future__ import annotations

from worker.validators.base import Finding, RuleContext

RULE_ID = "CONTRAST_CAUTION"
_LABELS = {
    "egfr": "eGFR below 30",
    "dialysis": "dialysis",
    "pregnancy": "pregnancy",
    "gadolinium_reaction": "prior gadolinium reaction",
}


def evaluate(ctx: RuleContext) -> list[Finding]:
    facts = ctx.facts
    if facts.procedure_class not in ("mri", "mra") or not facts.contrast_cautions:
        return []
    if facts.contrast not in ("with", "without_and_with"):
        return []
    labels = ", ".join(_LABELS[c] for c in facts.contrast_cautions)
    return [Finding(RULE_ID, "advice", f"contrast caution: {labels}")]
