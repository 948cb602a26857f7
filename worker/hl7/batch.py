"""HL7 batches in one MLLP frame (HL7 v2.5.1 chapter 2.10.3): [FHS] BHS {MSH ...} BTS [FTS].

The listener judges each message of a batch on its own (queued, refused or a resend, as if it
came alone) and answers the frame with one batch of ACKs, as the batch protocol says: the same
FHS/BHS envelope from us, BHS-12 (FHS-12) naming the sender's BHS-11 (FHS-11), then the ACK of
each message in order (none for an ACK, or where MSH-15 asks for none), then BTS (with the
number of ACKs) and FTS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from worker.hl7.ack import new_control_id
from worker.hl7.escape import Delimiters
from worker.hl7.parse import split_messages

_OURS = Delimiters()
_HEADS = (b"FHS", b"BHS")
_LEAD = b"\x0b \t\r\n\x00\x1a\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class Envelope:
    """One FHS or BHS as received: the fields our answer echoes."""

    kind: str  # "FHS" or "BHS"
    application: str = ""  # FHS-3 / BHS-3
    facility: str = ""  # FHS-4 / BHS-4
    control_id: str = ""  # FHS-11 / BHS-11, echoed in our FHS-12 / BHS-12


@dataclass(slots=True)
class Batch:
    """A frame that holds a batch: its envelope (FHS and/or BHS) and its messages."""

    envelopes: list[Envelope] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)


def is_batch(frame: bytes) -> bool:
    """Whether *frame* begins with FHS or BHS (after framing bytes, blanks and a BOM)."""
    return frame[:256].lstrip(_LEAD)[:3].upper() in _HEADS  # no copy of a large frame


def split_batch(frame: bytes) -> Batch | None:
    """The batch in *frame*, or None when the frame does not begin with FHS or BHS."""
    if not is_batch(frame):
        return None
    batch = Batch()
    head = frame.lstrip(_LEAD)
    for line in head.replace(b"\n", b"\r").split(b"\r"):
        line = line.strip(b" \t\x00\x1a\x0b\x1c")
        kind = line[:3].upper()
        if kind in _HEADS:
            batch.envelopes.append(_envelope(line))
        elif kind == b"MSH" or (line and kind not in (b"BTS", b"FTS")):
            break  # the first message (or something else) begins: the envelope is read
    batch.messages = [message for _, message in split_messages(frame)]
    return batch


def _envelope(line: bytes) -> Envelope:
    text = line.decode("latin-1")
    kind = text[:3].upper()
    if len(text) < 5:
        return Envelope(kind)
    sep = text[3]
    enc = text[4:].split(sep, 1)[0]
    theirs = Delimiters(
        sep,
        enc[0] if enc else "^",
        enc[1] if len(enc) > 1 else "",
        enc[2] if len(enc) > 2 else "",
        enc[3] if len(enc) > 3 else "",
    )
    fields = [kind, sep, *text.split(sep)[1:]]

    def get(n: int) -> str:
        value = fields[n] if n < len(fields) else ""
        return theirs.decode(value.split(theirs.component)[0] if theirs.component else value)

    return Envelope(kind, get(3), get(4), get(11))


def build_batch_ack(
    batch: Batch,
    acks: list[bytes | None],
    application: str = "ORDERCHECK",
    facility: str = "ORDERCHECK",
    now: datetime | None = None,
) -> bytes:
    """Our answer to *batch*: its envelope mirrored around the ACKs given (None: no ACK)."""
    e = _OURS.encode
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    sent = [ack.rstrip(b"\r") for ack in acks if ack is not None]
    kinds = {env.kind: env for env in batch.envelopes}
    head: list[bytes] = []
    for kind in ("FHS", "BHS"):
        env = kinds.get(kind)
        if env is None and not (kind == "BHS" and "FHS" not in kinds):
            continue
        env = env or Envelope(kind)
        fields = [
            kind,
            "^~\\&",
            e(application),
            e(facility),
            e(env.application),
            e(env.facility),
            stamp,
            "",
            "",
            "",
            new_control_id(),
            e(env.control_id),
        ]
        head.append("|".join(fields).encode("utf-8"))
    tail = [f"BTS|{len(sent)}".encode()]
    if "FHS" in kinds:
        tail.append(b"FTS|1")
    return b"\r".join(head + sent + tail) + b"\r"
