"""CT_BEFORE_MRI: CT of the thigh ordered before any MRI (guideline.md section 4)."""

from __future__ import annotations

from worker.validators.base import Finding, RuleContext

RULE_ID = "CT_BEFORE_MRI"


def evaluate(ctx: RuleContext) -> list[Finding]:
    facts = ctx.facts
    if facts.procedure_class != "ct" or ctx.mri_on_record:
        return []
    if facts.mri_contraindications:
        reasons = ", ".join(facts.mri_contraindications)
        return [
            Finding(
                RULE_ID,
                "advice",
                f"MRI contraindicated ({reasons})",
                exception="MRI_CONTRAINDICATED",
            )
        ]
    if facts.mineralisation_request:
        return [
            Finding(
                RULE_ID,
                "advice",
                "CT asked to characterise mineralisation",
                exception="CT_FOR_MINERALISATION",
            )
        ]
    contrast = {
        "with": "with contrast",
        "without": "without contrast",
        "without_and_with": "without and with contrast",
    }.get(facts.contrast, "")
    what = f"CT {contrast}".strip()
    return [Finding(RULE_ID, "flag", f"{what} with no MRI of this thigh on record")]
