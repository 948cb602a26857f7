"""The exception tree of ordercheck.

    OrdercheckError
     ├── HL7ParseError             a message could not be read; (segment, field) say where
     ├── GuidelineError            a guideline or code-map data file is invalid
     ├── StoreError                the advisory store, history or journal failed (Redis errors
     │                             are mapped to it where they enter: worker/store.py)
     ├── DeliveryError             an advisory could not be delivered (MLLP and socket errors
     │                             are mapped to it where they enter: worker/publish.py)
     ├── MLLPError                 a send through MLLP failed (worker/hl7/mllp.py)
     │    ├── MLLPTimeout          no complete reply within the timeout
     │    ├── MLLPConnectionClosed could not connect, or the peer closed the connection
     │    └── MLLPProtocolError    the reply was not a well-formed MLLP frame
     ├── SettingsError             a setting is invalid (worker/settings.py)
     └── FilterError               a review-page filter value is invalid (worker/review/filters.py)

Every class here means "could not evaluate or deliver": a rule that evaluates an order returns
findings, never raises them. Messages never carry patient identifiers, only control ids and
positions.
"""

from __future__ import annotations


class OrdercheckError(Exception):
    """Root of every error ordercheck raises on purpose."""


class HL7ParseError(OrdercheckError, ValueError):
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


class StoreError(OrdercheckError):
    """Raised when the advisory store, the patient history or the journal cannot be read or
    written (the Redis client's error, when there was one, is its __cause__)."""


class DeliveryError(OrdercheckError):
    """Raised when an advisory cannot be sent to the ordering system: no connection, no reply,
    a reply that is not MLLP (the MLLP or socket error is its __cause__).

    destination: "host:port". str() is "<cause class>: <cause>", the text kept as the
    advisory's delivery_error."""

    def __init__(self, message: str, destination: str = "") -> None:
        self.destination = destination
        super().__init__(message)


def cause_name(exc: BaseException) -> str:
    """The class name of *exc* as it entered ordercheck: a mapped error's cause (a StoreError
    from a ConnectionError gives "ConnectionError"), for log lines."""
    cause = exc.__cause__ if isinstance(exc, (StoreError, DeliveryError)) else None
    return type(cause or exc).__name__
