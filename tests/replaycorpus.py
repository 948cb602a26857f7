"""A generated day of HL7 traffic for the replay tests and bench/replay_memory.py.

Messages cycle through a fixed mix so the expected counts follow from the number of messages:
flagged CT orders (CT before MRI), appropriate MRI orders, out-of-scope chest CTs, final MRI
results (history input, not orders) and garbage (an MSH without a message type: rejected).
Orders and results use separate patient pools so the history never changes a verdict.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from tests.hl7build import order_message

MIX = (
    "flagged",
    "appropriate",
    "out-of-scope",
    "result",
    "flagged",
    "appropriate",
    "garbage",
    "out-of-scope",
    "flagged",
    "appropriate",
)
PROVIDERS = ("1234^ORDERING^DOC", "5678^OTHER^DOC", "9012^THIRD^DOC")


def message(i: int, kind: str, patients: int = 50_000) -> bytes:
    """Message number *i* of the given kind (control id C<i>, patient from a pool)."""
    cid = f"C{i}"
    pid = f"P{i % patients}^^^HOSP^MR"
    if kind == "flagged":
        data = order_message(
            control_id=cid, patient_id=pid, placer=f"PL{i}", reason="^Left thigh mass 6 cm deep"
        )
        return data.replace(b"1234^ORDERING^DOC", provider(i).encode())
    if kind == "appropriate":
        return order_message(
            control_id=cid,
            patient_id=pid,
            placer=f"PL{i}",
            procedure="73720^MRI LE WO W^CPT4",
            reason="^thigh mass, XR done",
        )
    if kind == "out-of-scope":
        return order_message(
            control_id=cid,
            patient_id=pid,
            placer=f"PL{i}",
            procedure="71260^CT CHEST W^CPT4",
            reason="^cough",
        )
    if kind == "result":
        return order_message(
            control_id=cid,
            patient_id=f"R{i % patients}^^^HOSP^MR",
            placer=f"PL{i}",
            procedure="73720^MRI LE WO W^CPT4",
            msg_type="ORU^R01",
            reason="^thigh mass",
        )
    if kind == "garbage":
        return f"MSH|^~\\&|GARBAGE|HOSP|||||||{cid}|P|2.3\rPID|1||X\r".encode()
    raise ValueError(kind)


def provider(i: int) -> str:
    """ORC-12 of flagged message *i*."""
    return PROVIDERS[i % len(PROVIDERS)]


def kinds(n: int) -> Iterator[str]:
    for i in range(n):
        yield MIX[i % len(MIX)]


def write_corpus(out: BinaryIO, n: int, patients: int = 50_000, newline: bytes = b"\r") -> None:
    """Write *n* messages to *out*, segments ended by *newline*."""
    for i, kind in enumerate(kinds(n)):
        data = message(i, kind, patients)
        out.write(data if newline == b"\r" else data.replace(b"\r", newline))


def expected(n: int) -> tuple[dict[str, int], dict[str, int]]:
    """(messages by kind, flagged orders by provider "id family given") of write_corpus(n)."""
    count = {k: 0 for k in set(MIX)}
    by_provider: dict[str, int] = {}
    for i, kind in enumerate(kinds(n)):
        count[kind] += 1
        if kind == "flagged":
            name = provider(i).replace("^", " ")
            by_provider[name] = by_provider.get(name, 0) + 1
    return count, by_provider
