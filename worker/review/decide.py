"""Review decisions: validated once here, for the web form and `ordercheck flags resolve`.

A decision is appended to the advisory's audit trail (store.dispose); earlier ones stay.
"""

from __future__ import annotations

from typing import get_args

from worker.records import OVERRIDE_REASONS, AdvisoryRecord, Disposition, DispositionState
from worker.store import AdvisoryStore

STATES: tuple[str, ...] = tuple(s for s in get_args(DispositionState) if s != "open")
MAX_TEXT = 2000  # characters of free text kept with a decision
MAX_REVIEWER = 100


class DecisionError(ValueError):
    """Raised when a review decision is incomplete or unknown; the message says what to fix."""


def make_decision(state: str, reviewer: str, reason_code: str = "", text: str = "") -> Disposition:
    """A checked Disposition: overridden needs a coded reason, "other" needs a text."""
    state, reviewer = state.strip(), reviewer.strip()
    reason_code, text = reason_code.strip(), text.strip()
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
            raise DecisionError("overridden needs a reason code: " + ", ".join(OVERRIDE_REASONS))
        if reason_code not in OVERRIDE_REASONS:
            raise DecisionError(
                f"unknown reason code {reason_code!r}; use one of " + ", ".join(OVERRIDE_REASONS)
            )
        if reason_code == "other" and not text:
            raise DecisionError("reason 'other' needs a text saying why")
    elif reason_code:
        raise DecisionError("a reason code goes only with overridden")
    return Disposition(state=state, reason_code=reason_code, text=text, reviewer=reviewer)


def decide(store: AdvisoryStore, advisory_id: str, decision: Disposition) -> AdvisoryRecord:
    """Append *decision* to the audit trail of *advisory_id*; DecisionError when unknown."""
    if store.get(advisory_id) is None:
        raise DecisionError(f"no advisory with id {advisory_id!r}")
    return store.dispose(advisory_id, decision)
