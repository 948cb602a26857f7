"""MRI_NO_PRECONTRAST: MRI with contrast only; pre-contrast images are needed."""

from __future__ import annotations

from worker.validators.base import Finding, RuleContext

RULE_ID = "MRI_NO_PRECONTRAST"


def evaluate(ctx: RuleContext) -> list[Finding]:
    if ctx.facts.procedure_class != "mri" or ctx.facts.contrast != "with":
        return []
    return [Finding(RULE_ID, "advice", "MRI ordered with contrast only")]
