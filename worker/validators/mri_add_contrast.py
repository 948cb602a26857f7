"""MRI_ADD_CONTRAST: MRI without contrast for a mass with red flags and no contrast caution."""

from __future__ import annotations

from worker.validators.base import Finding, RuleContext, describe_red_flags

RULE_ID = "MRI_ADD_CONTRAST"


def evaluate(ctx: RuleContext) -> list[Finding]:
    facts = ctx.facts
    if facts.procedure_class != "mri" or facts.contrast not in ("without", "unspecified"):
        return []
    if not ctx.red_flags or facts.contrast_cautions:
        return []
    return [Finding(RULE_ID, "advice", f"red flags: {describe_red_flags(ctx)}")]
