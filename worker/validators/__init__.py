"""The rules of the thigh soft-tissue mass guideline, one module each.

Each module has RULE_ID and evaluate(ctx) -> list[Finding]: a pure function of the order's
facts, the patient's history and the site's settings. The ids must equal the rules of
worker/data/guideline.toml (checked when the guideline loads and by the tests).
"""

from __future__ import annotations

from collections.abc import Callable

from worker.validators import (
    biopsy_before_mri,
    coding_joint_code,
    contrast_caution,
    ct_before_mri,
    mri_add_contrast,
    mri_no_precontrast,
    pet_initial,
    radiograph_first,
    refer_sarcoma_centre,
)
from worker.validators.base import Finding, RuleContext
from worker.validators.scope import in_scope

Rule = Callable[[RuleContext], list[Finding]]

RULES: dict[str, Rule] = {
    m.RULE_ID: m.evaluate
    for m in (
        ct_before_mri,
        biopsy_before_mri,
        pet_initial,
        mri_add_contrast,
        mri_no_precontrast,
        radiograph_first,
        refer_sarcoma_centre,
        contrast_caution,
        coding_joint_code,
    )
}


def run_rules(ctx: RuleContext) -> list[Finding]:
    """Every rule's findings for one in-scope order, in the order of RULES."""
    findings: list[Finding] = []
    for rule in RULES.values():
        findings.extend(rule(ctx))
    return findings


__all__ = ["RULES", "Finding", "RuleContext", "in_scope", "run_rules"]
