"""PET_INITIAL: FDG-PET/CT for the initial assessment of the mass, before MRI."""

from __future__ import annotations

from worker.validators.base import Finding, RuleContext, evidence_for

RULE_ID = "PET_INITIAL"


def evaluate(ctx: RuleContext) -> list[Finding]:
    if ctx.facts.procedure_class != "pet" or ctx.mri_on_record:
        return []
    if evidence_for(ctx, "known_diagnosis") is not None:
        return []  # staging or a known diagnosis: PET/CT as an adjunct, not the first study
    return [Finding(RULE_ID, "flag", "PET/CT with no MRI of this thigh on record")]
