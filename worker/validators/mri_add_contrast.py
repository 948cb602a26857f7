"""MRI_ADD_CONTRAST: MRI without contrast for a mass with red flags and no contrast caution."""

from __future__ import annotations

from worker.models import PAINFUL
from worker.validators.base import Finding, RuleContext, describe_red_flags

RULE_ID = "MRI_ADD_CONTRAST"


def evaluate(ctx: RuleContext) -> list[Finding]:
    facts = ctx.facts
    if facts.procedure_class != "mri" or facts.contrast not in ("without", "unspecified"):
        return []
    # Pain alone is a referral red flag, not a reason for contrast (section 4 lists > 5 cm,
    # deep, calcification and bony involvement for this rule).
    flags = [f for f in ctx.red_flags if f != PAINFUL]
    if not flags or facts.contrast_cautions:
        return []
    return [Finding(RULE_ID, "advice", f"red flags: {describe_red_flags(ctx, flags)}")]
