"""The exception tree of ordercheck.

    OrdercheckError
     ├── HL7Error                  a message could not be read
     │    └── HL7ParseError        (segment, field) say where
     ├── GuidelineError            a guideline or code-map data file is invalid
     ├── RuleError                 a rule could not evaluate an order
     ├── StoreError                the advisory store or history failed
     └── DeliveryError             an advisory could not be delivered

Every class here means "could not evaluate or deliver": a rule that evaluates an order returns
findings, never raises them. Messages never carry patient identifiers, only control ids and
positions.
"""

from __future__ import annotations


class OrdercheckError(Exception):
    """Root of every error ordercheck raises on purpose."""


class HL7Error(OrdercheckError):
    """Raised when bytes cannot be read as an HL7 v2 message."""


class HL7ParseError(HL7Error, ValueError):
    """Raised when a message is not HL7 v2 at a known position.

    segment: the segment id (e.g. "MSH"), field: the 1-based field number, both optional.
    """

    def __init__(
        self, reason: str, segment: str | None = None, field: int | None = None, code: str = "100"
    ) -> None:
        self.reason = reason
        self.segment = segment
        self.field = field
        self.code = code  # HL7 table 0357 error code for the ERR segment
        where = ""
        if segment:
            where = f"{segment}-{field}" if field is not None else segment
            where = f" at {where}"
        super().__init__(f"{reason}{where}")


class GuidelineError(OrdercheckError, ValueError):
    """Raised when a guideline or code-map file fails validation; names the file and entry."""


class RuleError(OrdercheckError):
    """Raised when a rule cannot evaluate an order (a bug or a missing fact, never a finding)."""

    def __init__(self, rule_id: str, reason: str) -> None:
        self.rule_id = rule_id
        super().__init__(f"rule {rule_id}: {reason}")


class StoreError(OrdercheckError):
    """Raised when the advisory store or the patient history cannot be read or written."""


class DeliveryError(OrdercheckError):
    """Raised when an advisory cannot be delivered to the ordering system."""
