"""Review decisions: validated once here, for the web form and `ordercheck flags resolve`.

A decision is appended to the advisory's audit trail (store.dispose); earlier ones stay.

Two kinds of decision:
- on the flags an advisory raised (FLAG_STATES: accepted, overridden with a reason, false
  positive): only on an advisory that has a flag;
- a missed flag (MISSED): the reviewer thinks the order should have been flagged under a flag
  rule it did not raise (the rule is required); on any advisory.
"""

from __future__ import annotations

from functools import cache
from typing import get_args

from worker.guideline import default_knowledge
from worker.records import OVERRIDE_REASONS, AdvisoryRecord, Disposition, DispositionState
from worker.store import AdvisoryStore

STATES: tuple[str, ...] = tuple(s for s in get_args(DispositionState) if s != "open")
MISSED = "missed"
FLAG_STATES: tuple[str, ...] = tuple(s for s in STATES if s != MISSED)
MAX_TEXT = 2000  # characters of free text kept with a decision
MAX_REVIEWER = 100


class DecisionError(ValueError):
    """Raised when a review decision is incomplete or unknown; the message says what to fix.

    page_message: the same for the web page, with the labels a reviewer sees instead of codes.
    """

    def __init__(self, message: str, page_message: str = "") -> None:
        super().__init__(message)
        self.page_message = page_message or message


@cache
def flag_rules() -> dict[str, str]:
    """The rules that flag an order (kind "flag" in the guideline), id -> title."""
    rules = default_knowledge().guideline.rules
    return {rule_id: rule.title for rule_id, rule in rules.items() if rule.kind == "flag"}


def _reasons_for_page() -> str:
    return "; ".join(f"\u201c{label}\u201d" for label in OVERRIDE_REASONS.values())


def make_decision(
    state: str, reviewer: str, reason_code: str = "", text: str = "", rule: str = ""
) -> Disposition:
    """A checked Disposition: overridden needs a coded reason, "other" needs a text, missed
    needs a flag rule."""
    state, reviewer = state.strip(), reviewer.strip()
    reason_code, text, rule = reason_code.strip(), text.strip(), rule.strip().upper()
    if state not in STATES:
        raise DecisionError(f"decision must be one of {', '.join(STATES)}, not {state!r}")
    if not reviewer:
        raise DecisionError("a reviewer name is needed")
    if len(reviewer) > MAX_REVIEWER:
        raise DecisionError(f"reviewer name longer than {MAX_REVIEWER} characters")
    if len(text) > MAX_TEXT:
        raise DecisionError(f"text longer than {MAX_TEXT} characters")
    if state == "overridden":
        if not reason_code:
            raise DecisionError(
                "overridden needs a reason code: " + ", ".join(OVERRIDE_REASONS),
                "Overridden needs a reason: choose one of " + _reasons_for_page() + ".",
            )
        if reason_code not in OVERRIDE_REASONS:
            raise DecisionError(
                f"unknown reason code {reason_code!r}; use one of " + ", ".join(OVERRIDE_REASONS),
                "Unknown override reason; choose one of " + _reasons_for_page() + ".",
            )
        if reason_code == "other" and not text:
            raise DecisionError(
                "reason 'other' needs a text saying why",
                f"The reason \u201c{OVERRIDE_REASONS['other']}\u201d needs a note saying why.",
            )
    elif reason_code:
        raise DecisionError(
            "a reason code goes only with overridden",
            "An override reason goes only with \u201cOverridden\u201d.",
        )
    if state == MISSED:
        rules = flag_rules()
        if rule not in rules:
            raise DecisionError(
                f"missed needs the rule the order should have raised: one of {', '.join(rules)}",
                "A missed flag needs the rule the order should have been flagged under: "
                + "; ".join(f"\u201c{t}\u201d" for t in rules.values())
                + ".",
            )
    elif rule:
        raise DecisionError(
            "a rule goes only with missed", "A rule goes only with \u201cMissed flag\u201d."
        )
    return Disposition(
        state=state, reason_code=reason_code, text=text, rule=rule, reviewer=reviewer
    )


def allowed_states(rec: AdvisoryRecord) -> tuple[str, ...]:
    """The decisions that make sense on *rec*: the flag ones only when it has a flag."""
    return STATES if rec.result.flags else (MISSED,)


def missed_choices(rec: AdvisoryRecord) -> dict[str, str]:
    """The flag rules *rec* could have missed (those it did not raise), id -> title."""
    raised = {f.code for f in rec.result.flags}
    return {k: v for k, v in flag_rules().items() if k not in raised}


def decide(store: AdvisoryStore, advisory_id: str, decision: Disposition) -> AdvisoryRecord:
    """Append *decision* to the audit trail of *advisory_id*; DecisionError when unknown or
    when the decision does not fit the advisory (a judgement of a flag it never raised)."""
    rec = store.get(advisory_id)
    if rec is None:
        raise DecisionError(f"no advisory with id {advisory_id!r}")
    if decision.state in FLAG_STATES and not rec.result.flags:
        raise DecisionError(
            f"advisory {advisory_id} raised no flag, so it cannot be {decision.state}; "
            f"record a missed flag instead (--as missed --rule RULE)",
            "This advisory raised no flag to judge. If the order should have been flagged, "
            "record a missed flag with its rule.",
        )
    if decision.state == MISSED and decision.rule in {f.code for f in rec.result.flags}:
        raise DecisionError(
            f"advisory {advisory_id} did raise {decision.rule}: it was not missed",
            f"This advisory did raise {decision.rule}: it was not missed.",
        )
    return store.dispose(advisory_id, decision)
