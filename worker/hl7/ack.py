"""ACK messages: original mode (AA/AE/AR) and enhanced mode (CA/CE/CR), with ERR (table 0357).

Built by string assembly with our delimiters; every value copied from the sender is escaped.
An ACK is never sent for an ACK.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from worker.hl7.escape import Delimiters

_D = Delimiters()
_counter = itertools.count(1)
_PID_TAG = f"{os.getpid() % 10000:04d}"

# HL7 table 0357 (message error condition codes) used by ordercheck.
ERROR_TEXT = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "205": "Duplicate key identifier",
    "207": "Application internal error",
}


@dataclass(frozen=True, slots=True)
class AckError:
    """What the ERR segment says: a table 0357 code, a text, and where (segment, field)."""

    code: str
    text: str
    segment: str = ""
    field: int | None = None
    severity: str = "E"  # ERR-4 (table 0516): E error, W warning, I information


@dataclass(frozen=True, slots=True)
class AckTarget:
    """The fields of the received MSH an ACK echoes (all optional for unreadable input)."""

    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    control_id: str = ""
    trigger_event: str = ""
    processing_id: str = "P"
    version: str = "2.5.1"
    enhanced: bool = False  # MSH-15 or MSH-16 valued: answer CA/CE/CR
    accept_ack_type: str = ""  # MSH-15 (table 0155): AL, NE, ER, SU

    def wants_accept_ack(self, accepted: bool) -> bool:
        """Whether MSH-15 asks for an accept ACK for this outcome (original mode: always)."""
        mode = self.accept_ack_type.upper()
        if not self.enhanced or mode not in ("NE", "ER", "SU"):
            return True  # AL, empty, or a value outside table 0155: always answer
        if mode == "NE":
            return False
        return accepted if mode == "SU" else not accepted  # ER: errors only


def ack_code(target: AckTarget, outcome: str) -> str:
    """MSA-1 for outcome "accept" | "error" | "reject" in the target's acknowledgement mode."""
    table = {"accept": ("AA", "CA"), "error": ("AE", "CE"), "reject": ("AR", "CR")}
    return table[outcome][1 if target.enhanced else 0]


def new_control_id() -> str:
    """A control id unique to this process and instant (MSH-10 of our ACKs), <= 20 chars."""
    return f"A{time.time_ns() // 1_000_000 % 10**12:012d}{_PID_TAG}{next(_counter) % 1000:03d}"


def build_ack(
    target: AckTarget,
    code: str,
    error: AckError | None = None,
    application: str = "ORDERCHECK",
    facility: str = "ORDERCHECK",
    now: datetime | None = None,
) -> bytes:
    """The ACK for *target* with MSA-1 *code* (AA, AE, AR, CA, CE, CR) and an optional ERR."""
    e = _D.encode
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    trigger = e(target.trigger_event)
    msg_type = f"ACK^{trigger}^ACK" if trigger else "ACK"
    segments = [
        "|".join(
            [
                "MSH",
                "^~\\&",
                e(application),
                e(facility),
                e(target.sending_application),
                e(target.sending_facility),
                stamp,
                "",
                msg_type,
                new_control_id(),
                e(target.processing_id or "P"),
                e(target.version or "2.5.1"),
            ]
        ),
        "|".join(["MSA", code, e(target.control_id), e(error.text) if error else ""]),
    ]
    if error is not None:
        where = ""
        if error.segment:
            where = f"{e(error.segment)}^1" + (f"^{error.field}" if error.field else "")
        label = ERROR_TEXT.get(error.code, "Error")
        err1 = (
            f"{where}^{error.code}&{e(label)}&HL70357"
            if where
            else f"^^^{error.code}&{e(label)}&HL70357"
        )
        segments.append(
            "|".join(
                [
                    "ERR",
                    err1,
                    where,
                    f"{error.code}^{e(label)}^HL70357",
                    error.severity,
                    "",
                    "",
                    "",
                    e(error.text),
                ]
            )
        )
    return ("\r".join(segments) + "\r").encode("utf-8")


def ack_fields(ack: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-2) of an ACK we received; ("", "") when there is no MSA."""
    text = ack.decode("utf-8", errors="replace").replace("\r\n", "\r").replace("\n", "\r")
    msh = text.split("\r", 1)[0]
    sep = msh[3] if len(msh) > 3 else "|"
    for seg in text.split("\r"):
        if seg.startswith("MSA"):
            parts = seg.split(sep)
            code = parts[1].strip() if len(parts) > 1 else ""
            control = parts[2].strip() if len(parts) > 2 else ""
            comp = msh[4] if len(msh) > 4 else "^"
            return code, control.split(comp)[0]
    return "", ""
