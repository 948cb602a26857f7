"""The outbound advisory message (design.md, "The advisory message (outbound HL7)").

Plain string assembly with our delimiters (`|^~\\&`), like the ACKs: this runs once per order, so
no hl7apy here. Every text value is escaped (HL7 v2.5.1 chapter 2.7); fields copied from the order
(PID, PV1, ORC, OBR) are converted from the sender's delimiters to ours component by component.
Segments end with CR; the bytes are UTF-8 and MSH-18 says so.

Two shapes (a site setting):

- ``oru`` (default): an unsolicited ORU^R01 v2.5.1:
  MSH, PID, [PV1], ORC (RE, placer and filler numbers copied), OBR (the ordered procedure),
  OBX 1 (LOINC 76515-6, the coded rating, as in IHE RAD CDS-OAT) with NTEs (reason, disclaimer),
  then OBX for the preferred procedure, the site's protocol code (protocols.toml), each flag and
  advice (citations as NTE), each protocol step, and the rule ids with the guideline version.
- ``order-echo``: the order's own type and version (ORM^O01, OMI^O23 ...), its ORC, TQ1 and OBR
  copied unchanged (converted), the same OBX and NTE, then its IPC segments (OMI needs them),
  with IPC-6 (Protocol Code) set to the site's protocol code when the protocol is the ordered
  modality's (an MRI protocol is not put on a CT order the advisory asks to convert).

Original acknowledgement mode (MSH-15/16 empty): the receiver answers with one ACK, whose MSA-2
must echo our MSH-10 (`advisory_control_id`, stable across resends so the receiver can
deduplicate).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from worker.hl7.escape import CONTROL, Delimiters
from worker.hl7.parse import RawMessage, RawSegment
from worker.models import CheckResult, Order, Procedure
from worker.protocols import ProtocolChoice

OURS = Delimiters()
_ENCODING_CHARACTERS = "^~\\&"
_ORU_VERSION = "2.5.1"
_CHARSET = "UNICODE UTF-8"  # MSH-18 (table 0211)

# Coded elements of the advisory. OBX-3 of the rating is the LOINC code IHE CDS-OAT uses; the
# other observations are local codes (table 0396 "L"); the verdict codes are our own value set
# ("99zzz", a locally defined coding system).
RATING_ID = "76515-6^Imaging appropriateness rating^LN"
VERDICT_SYSTEM = "99OCK"
VERDICT_TEXT = {
    "appropriate": "Appropriate",
    "not-appropriate": "Not appropriate",
    "no-criteria-apply": "No criteria apply",
}
PREFERRED_ID = "PREFPROC^Preferred procedure^L"
PROTOCOL_CODE_ID = "PROTCODE^Protocol code for the RIS^L"
FLAG_ID = "FLAG^Guideline flag^L"
ADVICE_ID = "ADVICE^Guideline advice^L"
PROTOCOL_ID = "PROTOCOL^Recommended protocol step^L"
RULES_ID = "RULES^Rule ids and guideline version^L"
# Procedure code systems as HL7 table 0396 names them where ours differ.
_SYSTEMS = {"CPT": "CPT4", "LOINC": "LN", "RADLEX": "RADLEX"}
DEFAULT_DISCLAIMER = (
    "Decision support only: this advisory does not block, cancel or change the order."
)

_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")
_SPECIAL = re.compile(r"[|^~\\&\x00-\x1f\x7f]")  # what OURS.encode would change

Format = Literal["oru", "order-echo"]


def advisory_control_id(advisory_id: str, revision: int = 0) -> str:
    """MSH-10 for an advisory: "OC" + the first 18 letters and digits of its id (<= 20 chars);
    for its n-th corrected revision (OBX-11 C), the first 17 of those then "C" and n.

    Deterministic, so a resent advisory carries the same MSH-10 and the receiver can deduplicate
    on (MSH-3, MSH-4, MSH-10). Advisory ids are 20 hex digits (worker/records.py): 18 of them
    keep 72 bits.
    """
    tail = _NOT_ALNUM.sub("", advisory_id)[:18]
    if not tail:
        raise ValueError("advisory id has no letters or digits to build a control id from")
    if revision:
        return f"OC{tail}"[:17] + f"C{revision}"[:3]
    return f"OC{tail}"


def convert_field(raw: str, source: Delimiters, target: Delimiters = OURS) -> str:
    """A field as received with *source* delimiters, rewritten with *target* delimiters.

    Repetitions, components and subcomponents keep their structure; each leaf is unescaped with
    the sender's escape character and escaped again with ours, so a literal `^` or `|` in the
    sender's text (legal when the sender uses other delimiters) becomes `\\S\\` or `\\F\\`.
    Formatting escapes the reader drops (\\H\\, \\N\\, \\Zxx\\) are dropped here too.
    """
    if not raw:
        return raw
    if (
        _same_delimiters(source, target)
        and (not source.escape or source.escape not in raw)
        and not CONTROL.search(raw)
    ):
        return raw  # already valid in our encoding: nothing to rewrite (the usual case)
    return target.repetition.join(
        _convert_repetition(rep, source, target) for rep in _split(raw, source.repetition)
    )


def _same_delimiters(a: Delimiters, b: Delimiters) -> bool:
    return (a.field, a.component, a.repetition, a.escape, a.subcomponent, a.truncation) == (
        b.field,
        b.component,
        b.repetition,
        b.escape,
        b.subcomponent,
        b.truncation,
    )


def _split(raw: str, sep: str) -> list[str]:
    return raw.split(sep) if sep else [raw]


def _convert_repetition(rep: str, source: Delimiters, target: Delimiters) -> str:
    return target.component.join(
        target.subcomponent.join(
            target.encode(source.decode(leaf)) for leaf in _split(comp, source.subcomponent)
        )
        for comp in _split(rep, source.component)
    )


def convert_segment(seg: RawSegment, source: Delimiters) -> str:
    """A received segment (not MSH) rewritten with our delimiters."""
    return OURS.field.join([seg.id, *(convert_field(f, source) for f in seg.fields[1:])])


def build_advisory(
    raw: RawMessage,
    order: Order,
    result: CheckResult,
    *,
    control_id: str,
    application: str,
    facility: str,
    fmt: Format = "oru",
    now: datetime | None = None,
    guideline_id: str = "",
    disclaimer: str = "",
    status: str = "F",
    protocol: ProtocolChoice | None = None,
) -> bytes:
    """The advisory for one order of *raw*, as UTF-8 bytes with CR segment ends.

    control_id: MSH-10 (see `advisory_control_id`); application, facility: MSH-3/MSH-4 (ours);
    fmt: "oru" (ORU^R01 v2.5.1) or "order-echo" (the order's own type and version);
    now: MSH-7, OBR-7 and OBX-14 (default: the current UTC time);
    guideline_id: named with the version in the rule-ids OBX; disclaimer: the closing NTE
    (default `DEFAULT_DISCLAIMER`); status: OBR-25 and OBX-11 (table 0085), "F" final or "C"
    corrected (an advisory revised after a newer result); protocol: the recommended protocol
    variant and the site's code for it (Knowledge.protocol_choice), an OBX and IPC-6.
    Raises ValueError for a rejected result (there is no order to advise on) or an order that
    does not belong to *raw*.
    """
    if result.verdict == "rejected":
        raise ValueError("a rejected message gets no advisory: there is no order to advise on")
    if fmt not in ("oru", "order-echo"):
        raise ValueError(f"unknown advisory format {fmt!r}")
    orc, obr, group = _order_segments(raw, order)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    src = raw.delimiters
    e = _encode

    segments = [
        _msh(
            raw,
            control_id=control_id,
            application=application,
            facility=facility,
            fmt=fmt,
            stamp=stamp,
        )
    ]
    segments += [convert_segment(s, src) for s in (raw.first("PID"), raw.first("PV1")) if s]
    if fmt == "oru":
        placer = _number_field(raw, orc, obr, 2, order.placer_number)
        filler = _number_field(raw, orc, obr, 3, order.filler_number)
        orc_fields = {1: "RE", 2: placer, 3: filler, 9: stamp}
        if orc is not None:
            orc_fields[12] = convert_field(orc.get(12), src)
        obr_fields = {
            1: "1",
            2: placer,
            3: filler,
            4: _procedure_field(raw, obr, order),
            7: stamp,
            25: status,
        }
        if obr is not None:
            obr_fields.update(
                {16: convert_field(obr.get(16), src), 24: convert_field(obr.get(24), src)}
            )
        segments += [_segment("ORC", orc_fields), _segment("OBR", obr_fields)]
        trailer: list[str] = []
    else:
        head = [s for s in group if s.id in ("ORC", "TQ1", "OBR")]
        segments += [convert_segment(s, src) for s in head]
        trailer = [convert_segment(s, src) for s in group if s.id == "IPC"]
        if protocol is not None and protocol.code is not None and protocol.for_order:
            trailer = [_set_field(ipc, 6, _cwe(protocol.code)) for ipc in trailer]

    notes = [result.reason, disclaimer or DEFAULT_DISCLAIMER]
    observations: list[tuple[str, str, str, str, list[str]]] = [  # type, id, sub-id, value, NTEs
        (
            "CWE",
            RATING_ID,
            "",
            f"{result.verdict}^{e(VERDICT_TEXT[result.verdict])}^{VERDICT_SYSTEM}",
            [n for n in notes if n],
        ),
    ]
    if result.preferred_procedure is not None:
        p = result.preferred_procedure
        system = _SYSTEMS.get(p.system.upper(), p.system)
        observations.append(("CWE", PREFERRED_ID, "", f"{e(p.code)}^{e(p.text)}^{e(system)}", []))
    if protocol is not None and protocol.code is not None:
        notes_code = [protocol.note] if protocol.note else []
        observations.append(("CWE", PROTOCOL_CODE_ID, "", _cwe(protocol.code), notes_code))
    for n, flag in enumerate(result.flags, start=1):
        observations.append(
            (
                "TX",
                FLAG_ID,
                str(n),
                e(f"{flag.code}: {flag.reason}"),
                [f"Source: {c}" for c in flag.citations],
            )
        )
    for n, advice in enumerate(result.advice, start=1):
        observations.append(
            (
                "TX",
                ADVICE_ID,
                str(n),
                e(f"{advice.code}: {advice.text}"),
                [f"Source: {c}" for c in advice.citations],
            )
        )
    for n, step in enumerate(result.protocol, start=1):
        observations.append(("TX", PROTOCOL_ID, str(n), e(step), []))
    observations.append(("TX", RULES_ID, "", e(_rules_text(result, guideline_id)), []))

    for set_id, (kind, obs_id, sub_id, value, nte) in enumerate(observations, start=1):
        # OBX-11 F (final), OBX-14 the advisory time; NTE-2 O (table 0105: other system)
        segments.append(f"OBX|{set_id}|{kind}|{obs_id}|{sub_id}|{value}||||||{status}|||{stamp}")
        segments += [f"NTE|{i}|O|{e(text)}" for i, text in enumerate(nte, start=1)]
    segments += trailer
    return ("\r".join(segments) + "\r").encode("utf-8")


# -- pieces ------------------------------------------------------------------------------------
def _segment(seg_id: str, fields: dict[int, str]) -> str:
    """A segment from {SEG-n: value already encoded}, trailing empty fields left out."""
    parts = [""] * (max(fields) + 1)
    parts[0] = seg_id
    for n, value in fields.items():
        parts[n] = value
    while len(parts) > 1 and not parts[-1]:
        parts.pop()
    return OURS.field.join(parts)


def _set_field(segment: str, n: int, value: str) -> str:
    """*segment* (our delimiters) with field n replaced by *value* (already encoded)."""
    parts = segment.split(OURS.field)
    parts += [""] * (n + 1 - len(parts))
    parts[n] = value
    return OURS.field.join(parts)


def _cwe(code: Procedure) -> str:
    """A coded element code^text^system, encoded, trailing empty components left out."""
    e = _encode
    return f"{e(code.code)}^{e(code.text)}^{e(code.system)}".rstrip("^")


def _encode(text: str) -> str:
    """Delimiters.encode for our delimiters, skipped when there is nothing to escape."""
    return OURS.encode(text) if _SPECIAL.search(text) else text


def _msh(
    raw: RawMessage, *, control_id: str, application: str, facility: str, fmt: Format, stamp: str
) -> str:
    e = _encode
    msh = raw.msh
    if fmt == "oru":
        msg_type, version = "ORU^R01^ORU_R01", _ORU_VERSION
    else:
        msg_type = convert_field(msh.get(9), raw.delimiters)
        version = e(raw.component(msh.get(12), 1)) or _ORU_VERSION
    processing = e(raw.component(msh.get(11), 1)) or "P"
    fields = [
        "MSH",
        _ENCODING_CHARACTERS,
        e(application),
        e(facility),
        e(raw.component(msh.get(3), 1)),
        e(raw.component(msh.get(4), 1)),  # MSH-5/6: the sender
        stamp,
        "",
        msg_type,
        e(control_id),
        processing,
        version,
        "",
        "",
        "",
        "",  # MSH-13..16: no sequence numbers; original acknowledgement mode
        "",
        _CHARSET,  # MSH-17 country, MSH-18 character set
    ]
    return OURS.field.join(fields)


def _order_segments(
    raw: RawMessage, order: Order
) -> tuple[RawSegment | None, RawSegment | None, list[RawSegment]]:
    """(ORC, OBR, every segment of the group) of *order*, grouped as worker/hl7/read.py does."""
    i = order.segment_index
    if not 0 < i < len(raw.segments) or raw.segments[i].id not in ("ORC", "OBR"):
        raise ValueError(f"order segment_index {i} does not point at an ORC or OBR of the message")
    first = raw.segments[i]
    orc: RawSegment | None = None
    obr: RawSegment | None = None
    group: list[RawSegment] = [first]
    if first.id == "ORC":
        orc = first
    else:  # an OBR group shares the last ORC before it, if any
        obr = first
        orc = next((s for s in reversed(raw.segments[1:i]) if s.id == "ORC"), None)
        if orc is not None:
            group.insert(0, orc)
    for seg in raw.segments[i + 1 :]:
        if seg.id == "ORC" or (seg.id == "OBR" and obr is not None):
            break
        if seg.id == "OBR":
            obr = seg
        group.append(seg)
    return orc, obr, group


def _number_field(
    raw: RawMessage, orc: RawSegment | None, obr: RawSegment | None, n: int, number: str
) -> str:
    """ORC-n or OBR-n (n = 2 placer, 3 filler), converted: the field whose first component is
    *number*, the number the order was read with (Order.placer_number / filler_number; the OBR's
    own for a second OBR under one ORC), with that component as read (padding trimmed)."""
    if not number:
        return ""
    for seg in (orc, obr):
        if seg is not None and raw.component(seg.get(n), 1) == number:
            rest = convert_field(seg.get(n), raw.delimiters).partition(OURS.component)[2]
            return _encode(number) + (OURS.component + rest if rest else "")
    return _encode(number)


def _procedure_field(raw: RawMessage, obr: RawSegment | None, order: Order) -> str:
    """OBR-4 copied; for a group without one, the first procedure the order was read with."""
    if obr is not None and obr.get(4):
        return convert_field(obr.get(4), raw.delimiters)
    if order.procedures:
        p = order.procedures[0]
        e = _encode
        return f"{e(p.code)}^{e(p.text)}^{e(p.system)}".rstrip("^")
    return ""


def _rules_text(result: CheckResult, guideline_id: str) -> str:
    rules = ", ".join(result.rule_ids) or "none"
    name = " ".join(p for p in ("guideline", guideline_id, result.guideline_version) if p)
    return f"{rules}; {name}"
