"""PET_INITIAL: FDG-PET/CT for the initial assessment of the mass, before MRI."""

from __future__ import annotations

from worker.validators.base import Finding, RuleContext

RULE_ID = "PET_INITIAL"


def evaluate(ctx: RuleContext) -> list[Finding]:
    if ctx.facts.procedure_class != "pet" or ctx.mri_on_record:
        return []
    return [Finding(RULE_ID, "flag", "PET/CT with no MRI of this thigh on record")]
