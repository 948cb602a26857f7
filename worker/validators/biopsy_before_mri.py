"""BIOPSY_BEFORE_MRI: a biopsy of the thigh mass ordered before any MRI of that thigh."""

from __future__ import annotations

from worker.validators.base import Finding, RuleContext

RULE_ID = "BIOPSY_BEFORE_MRI"


def evaluate(ctx: RuleContext) -> list[Finding]:
    if ctx.facts.procedure_class != "biopsy" or ctx.mri_on_record:
        return []
    side = ctx.facts.laterality
    where = f"the {side} thigh" if side in ("left", "right") else "this thigh"
    return [Finding(RULE_ID, "flag", f"biopsy with no MRI of {where} on record or documented")]
