"""CODING_JOINT_CODE: a joint MRI or complete joint US code ordered for a thigh mass."""

from __future__ import annotations

from worker.validators.base import Finding, RuleContext

RULE_ID = "CODING_JOINT_CODE"


def evaluate(ctx: RuleContext) -> list[Finding]:
    facts = ctx.facts
    if not facts.joint_code or facts.procedure_class not in ("mri", "us"):
        return []
    what = facts.procedure_code or facts.procedure_text or "joint examination"
    return [Finding(RULE_ID, "advice", f"joint procedure {what} for a thigh mass")]
