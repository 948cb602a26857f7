"""REFER_SARCOMA_CENTRE: red flags or a planned biopsy, at a site without a sarcoma team."""

from __future__ import annotations

from worker.validators.base import Finding, RuleContext, describe_red_flags

RULE_ID = "REFER_SARCOMA_CENTRE"


def evaluate(ctx: RuleContext) -> list[Finding]:
    if ctx.site.sarcoma_team_on_site:
        return []
    if ctx.facts.procedure_class == "biopsy":
        return [Finding(RULE_ID, "advice", "biopsy planned")]
    if ctx.red_flags:
        return [Finding(RULE_ID, "advice", f"red flags: {describe_red_flags(ctx)}")]
    return []
