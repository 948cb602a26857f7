"""The advisory record kept for review, and the queries over it (one query layer for CLI and web).

A record holds patient data (the raw HL7 in and out): it is shown only behind the review login
and never logged.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from worker.models import CheckResult

Delivery = Literal["pending", "delivered", "undelivered", "not-sent"]
DispositionState = Literal["open", "accepted", "overridden", "false-positive", "missed"]
# accepted, overridden, false-positive judge the flags an advisory raised; missed says that an
# order should have been flagged under a rule and was not (Disposition.rule names it).
# What an audit entry records: a review decision (it sets the record's disposition), or that a
# radiologist protocolled the order (it leaves the disposition as it is; `state` repeats it).
EntryKind = Literal["decision", "protocolled"]

# Override reasons, after the CDS Hooks override-reason idea: a short coded list plus free text.
OVERRIDE_REASONS: dict[str, str] = {
    "patient-specific": "Patient-specific clinical reason",
    "mri-unavailable": "MRI not available in time",
    "specialist-request": "Requested by the treating specialist or sarcoma team",
    "prior-imaging-elsewhere": "MRI done elsewhere, not on record",
    "contraindication-not-coded": "MRI contraindication not stated in the order",
    "other": "Other (see text)",
}


class Disposition(BaseModel):
    """One review decision; the audit trail keeps every one, in order, never overwritten."""

    state: DispositionState
    reason_code: str = ""
    text: str = ""
    rule: str = ""  # missed: the flag rule the order should have raised
    reviewer: str
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    kind: EntryKind = "decision"


class AdvisoryRecord(BaseModel):
    """One checked order: its result, the HL7 in and out, delivery and review state."""

    id: str
    received_at: datetime
    result: CheckResult
    order_index: int = 0  # position of the order in its message (ORC/OBR group, from 0)
    revision: int = 0  # 0 first advisory; n: the n-th corrected advisory (OBX-11 C)
    raw_in: str = ""  # the order message as received (patient data)
    raw_out: str = ""  # the advisory message as sent (patient data)
    delivery: Delivery = "pending"
    delivery_attempts: int = 0
    delivery_error: str = ""
    delivered_at: datetime | None = None
    destination: str = ""  # "host:port"
    disposition: DispositionState = "open"
    audit: list[Disposition] = Field(default_factory=list)

    @property
    def protocolled(self) -> Disposition | None:
        """The entry saying who protocolled the order and when (the first one), if any."""
        return next((d for d in self.audit if d.kind == "protocolled"), None)

    def flags_json(self) -> dict[str, object]:
        """The `ordercheck flags list --json` object: check --json fields plus ours."""
        data = self.result.model_dump(mode="json", exclude={"facts"})
        data.update(self._own_fields())
        return data

    def flags_json_text(self) -> str:
        """flags_json() as JSON text, serialised by pydantic's core (the stream entry the stores
        write per advisory: about half the cost of json.dumps(flags_json()))."""
        result = self.result.model_dump_json(exclude={"facts"})
        return result[:-1] + "," + json.dumps(self._own_fields())[1:]

    def _own_fields(self) -> dict[str, object]:
        return {
            "id": self.id,
            "received_at": self.received_at.isoformat(),
            "delivery": self.delivery,
            "disposition": self.disposition,
        }


def advisory_id(
    sending_application: str, sending_facility: str, control_id: str, order_index: int
) -> str:
    """A stable id per (MSH-3, MSH-4, MSH-10, order in message): a resend maps to the same id."""
    key = f"{sending_application}\x1f{sending_facility}\x1f{control_id}\x1f{order_index}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


class AdvisoryQuery(BaseModel):
    """Filters of the review list (web page and `ordercheck flags list`)."""

    since: datetime | None = None
    until: datetime | None = None
    verdict: str | None = None
    rule: str | None = None
    provider: str | None = None  # substring, case-insensitive
    facility: str | None = None  # MSH-4
    delivery: Delivery | None = None
    disposition: DispositionState | None = None
    flagged_only: bool = False

    def matches(self, rec: AdvisoryRecord) -> bool:
        r = rec.result
        if self.since and rec.received_at < self.since:
            return False
        if self.until and rec.received_at >= self.until:
            return False
        if self.verdict and r.verdict != self.verdict:
            return False
        if self.flagged_only and not r.flags:
            return False
        if self.rule and self.rule not in {f.code for f in r.flags} | {a.code for a in r.advice}:
            return False
        if self.provider and self.provider.lower() not in r.ordering_provider.lower():
            return False
        if self.facility and self.facility.lower() != r.sending_facility.lower():
            return False
        if self.delivery and rec.delivery != self.delivery:
            return False
        return not (self.disposition and rec.disposition != self.disposition)
