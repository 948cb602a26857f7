"""From a RawMessage to the pydantic models the rules read (worker/models.py).

Segments are grouped into orders: an ORC starts a group, an OBR joins the open group (or starts
one that shares the last ORC when the group already has an OBR), and the segments after it
(NTE, DG1, OBX, TQ1, IPC, Z segments) belong to that group. Segments before the first ORC/OBR
(PID, PV1, NTE, AL1, DG1) are patient context shared by every order of the message.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

from worker.errors import HL7ParseError
from worker.hl7.parse import RawMessage, RawSegment, message_type
from worker.models import (
    Coded,
    MessageHeader,
    Order,
    ParsedMessage,
    PatientId,
    PatientRef,
    TextSource,
)

_ISO_DATE = re.compile(
    r"(\d{4})-(\d{1,2})(?:-(\d{1,2}))?(?:[T ](\d{1,2}):(\d{2})(?::(\d{2}))?"
    r"(?:\.\d+)?)?\s*(Z|[+-]\d{2}:?\d{2})?$"
)


def parse_ts(value: str) -> datetime | None:
    """HL7 TS/DTM (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]) to a datetime; None when unreadable.

    ISO 8601 dates (2008-11-05, 2008-11-05T10:30:00+01:00), which some feeds send in PID-7, are
    read too: a child's birth date must not fall back to "adult"."""
    value = value.strip()
    if not value:
        return None
    iso = _ISO_DATE.match(value)
    if iso is not None:  # 2008-11-05, 2008-11-05T10:30:00+01:00: not HL7, but sent
        y, mo, d, h, mi, sec, zone = iso.groups()
        value = f"{y}{int(mo):02d}{int(d or 1):02d}{int(h or 0):02d}{mi or '00'}{sec or '00'}"
        value += "" if not zone or zone == "Z" else zone.replace(":", "")
    tz = None
    for sign in ("+", "-"):
        if sign in value[4:]:
            pos = value.index(sign, 4)
            offset = value[pos + 1 :]
            value = value[:pos]
            if len(offset) == 4 and offset.isdigit():
                minutes = int(offset[:2]) * 60 + int(offset[2:])
                tz = timezone(timedelta(minutes=minutes if sign == "+" else -minutes))
            break
    value = value.split(".", 1)[0]
    if not value.isdigit() or len(value) < 4:
        return None
    parts = [
        value[0:4],
        value[4:6] or "1",
        value[6:8] or "1",
        value[8:10] or "0",
        value[10:12] or "0",
        value[12:14] or "0",
    ]
    try:
        y, mo, d, h, mi, s = (int(p) for p in parts)
        return datetime(y, mo, d, min(h, 23), min(mi, 59), min(s, 59), tzinfo=tz)
    except ValueError:
        return None


def parse_date(value: str) -> date | None:
    ts = parse_ts(value)
    return ts.date() if ts else None


def _coded(msg: RawMessage, raw: str) -> list[Coded]:
    """A CE/CWE field (all repetitions): primary and alternate triplets, empty ones dropped."""
    out: list[Coded] = []
    sub = msg.delimiters.subcomponent

    def part(comps: list[str], n: int, whole: bool = False) -> str:
        value = comps[n] if len(comps) > n else ""
        if sub and not whole:  # a code or system cut at a subcomponent (73720&IMP)
            value = value.split(sub, 1)[0]
        return msg.value(value)

    for rep in msg.repetitions(raw):
        comps = msg.components(rep)
        for start, oid in ((0, 13), (3, 16)):
            # The text keeps a bare "&" (MRI THIGH W&WO) and an escaped one (\T\).
            code, text, system = (
                part(comps, start),
                part(comps, start + 1, whole=True),
                part(comps, start + 2),
            )
            system = _system(system or part(comps, oid))  # CWE-14/17: the system's OID (2.7+)
            if start == 0 and not text:
                text = part(comps, 8, whole=True)  # CWE-9 original text (2.5+)
            if code or text:
                out.append(Coded(code=code, text=text, system=system))
    return out


# Coding systems sent as an OID or a URI (CWE-3 or CWE-14 in v2.7+, messages made from FHIR or
# CDA) read as their HL7 table 0396 names.
_SYSTEM_IDS = {
    "2.16.840.1.113883.6.12": "C4",
    "http://www.ama-assn.org/go/cpt": "C4",
    "2.16.840.1.113883.6.1": "LN",
    "http://loinc.org": "LN",
    "2.16.840.1.113883.6.90": "I10",
    "http://hl7.org/fhir/sid/icd-10-cm": "I10",
    "2.16.840.1.113883.6.3": "I10",
    "http://hl7.org/fhir/sid/icd-10": "I10",
    "2.16.840.1.113883.6.256": "RADLEX",
    "http://www.radlex.org": "RADLEX",
    "http://radlex.org": "RADLEX",
    "2.16.840.1.113883.6.96": "SCT",
    "http://snomed.info/sct": "SCT",
}


def _system(system: str) -> str:
    """A coding system name, with an OID or URI turned into its table 0396 name."""
    key = system.strip().removeprefix("urn:oid:").rstrip("/").lower()
    return _SYSTEM_IDS.get(key, system)


def _text(msg: RawMessage, raw: str) -> str:
    """A free-text field with every repetition and component joined by spaces."""
    pieces = []
    for rep in msg.repetitions(raw):
        for comp in msg.components(rep):
            value = msg.value(
                comp.replace(msg.delimiters.subcomponent, " ")
                if msg.delimiters.subcomponent
                else comp
            )
            if value:
                pieces.append(value)
    return " ".join(pieces)


def _source(msg: RawMessage, label: str, raw: str, coded: bool = False) -> TextSource | None:
    codes = _coded(msg, raw) if coded else []
    # A coded field often carries free text in its first component ("Left thigh mass"):
    # a code without text is read as text too (a real code in the text matches no word).
    text = " ".join(c.text or c.code for c in codes) if coded else _text(msg, raw)
    if not text and not codes:
        return None
    return TextSource(source=label, text=text, codes=codes)


def read_header(msg: RawMessage) -> MessageHeader:
    msh = msg.msh
    comp = msg.component
    kind, event, structure = message_type(
        comp(msh.get(9), 1), comp(msh.get(9), 2), comp(msh.get(9), 3)
    )
    return MessageHeader(
        field_separator=msg.delimiters.field,
        encoding_characters=msh.get(2),
        sending_application=comp(msh.get(3), 1),
        sending_facility=comp(msh.get(4), 1),
        receiving_application=comp(msh.get(5), 1),
        receiving_facility=comp(msh.get(6), 1),
        timestamp=parse_ts(comp(msh.get(7), 1)),
        message_type=kind,
        trigger_event=event,
        message_structure=structure,
        control_id=msg.value(msh.get(10)),
        processing_id=comp(msh.get(11), 1).upper(),
        version=comp(msh.get(12), 1),
        accept_ack_type=msg.value(msh.get(15)).upper(),
        application_ack_type=msg.value(msh.get(16)).upper(),
        charset=msg.value(msh.get(18).split(msg.delimiters.repetition or "\x00")[0]),
        language=comp(msh.get(19), 1) or comp(msh.get(19), 2),
    )


def read_patient(msg: RawMessage, pid: RawSegment | None = None) -> PatientRef:
    """The patient of *pid*, by default the message's first PID."""
    pid = pid or msg.first("PID")
    if pid is None:
        return PatientRef()
    ids: list[PatientId] = []
    for field_no in (3, 2, 4):  # PID-3; PID-2 and PID-4 in old feeds
        for rep in msg.repetitions(pid.get(field_no)):
            comps = msg.components(rep)
            value = msg.value(comps[0]) if comps else ""
            if not value:
                continue
            id_type = msg.value(comps[4]) if len(comps) > 4 else ""
            # CX-4 is an HD: namespace&universal id&type. A patient is found by either, so a
            # feed that sends only the OID meets one that sends both.
            raw_authority = comps[3] if len(comps) > 3 else ""
            sub = msg.delimiters.subcomponent
            parts = raw_authority.split(sub) if sub else [raw_authority]
            authorities = [msg.value(a) for a in parts[:2]]
            authorities = [a for i, a in enumerate(authorities) if a and a not in authorities[:i]]
            for authority in authorities or [""]:
                ids.append(PatientId(id=value, authority=authority, type=id_type))
        if ids:
            break
    return PatientRef(
        identifiers=ids,
        birth_date=parse_date(msg.component(pid.get(7), 1)),
        sex=msg.component(pid.get(8), 1),
    )


def _provider(msg: RawMessage, raw: str) -> str:
    if not raw:
        return ""
    comps = [
        msg.value(c)
        for c in msg.components(msg.repetitions(raw)[0] if msg.repetitions(raw) else raw)[:3]
    ]
    return " ".join(c for c in comps if c)


class _Group:
    def __init__(self, index: int, orc: RawSegment | None, shared_orc: bool = False) -> None:
        self.index = index
        self.orc = orc
        self.shared_orc = shared_orc  # a second OBR under one ORC: OBR-2 names this order
        self.obr: RawSegment | None = None
        self.others: list[RawSegment] = []
        self.pid: RawSegment | None = None  # the group's own PID when the message has several


def _group(msg: RawMessage) -> tuple[list[RawSegment], list[_Group]]:
    context: list[RawSegment] = []
    groups: list[_Group] = []
    current: _Group | None = None
    pid: RawSegment | None = None  # a later patient's PID (ORU^R01 may carry several)
    pending: list[RawSegment] = []  # that patient's segments before its first order

    def start(index: int, orc: RawSegment | None, shared: bool = False) -> _Group:
        nonlocal pending
        group = _Group(index, orc, shared)
        group.pid, group.others, pending = pid, pending, []
        groups.append(group)
        return group

    segments = msg.segments
    for i, seg in enumerate(segments[1:], start=1):
        if seg.id == "PID" and groups:
            pid, current = seg, None
        elif seg.id == "ORC":
            if (
                current is not None
                and current.obr is not None
                and current.orc is None
                and _next_order_segment(segments, i + 1) != "OBR"
            ):
                current.orc = seg  # ORC sent after its OBR: it belongs to that OBR
                continue
            current = start(i, seg)
        elif seg.id == "OBR":
            if current is None or current.obr is not None:
                current = start(i, current.orc if current else None, current is not None)
            current.obr = seg
        elif current is None:
            (pending if pid is not None else context).append(seg)
        else:
            current.others.append(seg)
    return context, groups


def _next_order_segment(segments: list[RawSegment], start: int) -> str:
    """The id of the next ORC or OBR from *start* on, or ""."""
    return next((s.id for s in segments[start:] if s.id in ("ORC", "OBR")), "")


def _first(*values: str) -> str:
    return next((v for v in values if v), "")


def _order(msg: RawMessage, group: _Group) -> Order:
    orc, obr = group.orc, group.obr
    c = msg.component
    get_orc = orc.get if orc else (lambda n: "")
    get_obr = obr.get if obr else (lambda n: "")
    tq1 = next((s for s in group.others if s.id == "TQ1"), None)
    ipc = next((s for s in group.others if s.id == "IPC"), None)
    procedures = _coded(msg, get_obr(4)) + _coded(msg, get_obr(44))
    if ipc is not None and not procedures:
        procedures = _coded(msg, ipc.get(6))  # IPC-6 protocol code as a last resort
    procedures += _modifiers(msg, get_obr(45)) + _body_site(msg, get_obr(15))
    texts: list[TextSource] = []
    for label, raw, coded in (
        ("OBR-13", get_obr(13), False),
        ("OBR-31", get_obr(31), True),
        ("ORC-16", get_orc(16), True),
    ):
        src = _source(msg, label, raw, coded)
        if src:
            texts.append(src)
    for seg in group.others:
        texts.extend(_segment_texts(msg, seg))
    ordered_at = (
        parse_ts(c(get_orc(9), 1))
        or parse_ts(c(get_obr(6), 1))
        or (parse_ts(c(tq1.get(7), 1)) if tq1 else None)
        or parse_ts(c(get_orc(7), 4))
        or parse_ts(c(get_obr(27), 4))
        or parse_ts(c(get_obr(7), 1))
    )
    modality = _modality(c(get_obr(24), 1), c(ipc.get(5), 1) if ipc else "")
    placer = (
        _first(c(get_obr(2), 1), c(get_orc(2), 1))
        if group.shared_orc
        else _first(c(get_orc(2), 1), c(get_obr(2), 1))
    )
    filler = (
        _first(c(get_obr(3), 1), c(get_orc(3), 1))
        if group.shared_orc
        else _first(c(get_orc(3), 1), c(get_obr(3), 1))
    )
    control, status = c(get_orc(1), 1).upper(), c(get_orc(5), 1).upper()
    result_status = c(get_obr(25), 1).upper()
    if not status and control in _STATUS_CONTROLS and result_status in ("F", "C"):
        status = "CM"  # a status update whose result is final: the exam is completed
    return Order(
        order_control=control,
        order_status=status,
        placer_number=placer,
        filler_number=filler,
        procedures=procedures,
        modality=modality,
        result_status=result_status,
        observation_status=_observation_status(msg, group.others),
        ordered_at=ordered_at,
        ordering_provider=_first(_provider(msg, get_orc(12)), _provider(msg, get_obr(16))),
        accession=_first(c(ipc.get(1), 1) if ipc else "", c(get_obr(18), 1)),
        texts=texts,
        segment_index=group.index,
        patient=read_patient(msg, group.pid) if group.pid is not None else None,
    )


# ORC-1 (table 0119) of a status update (SC) or an observation to follow (RE).
_STATUS_CONTROLS = ("SC", "RE")
# OBR-24 values (HL7 table 0074) that name the department, not the modality: IPC-5 says more.
_GENERIC_SECTIONS = frozenset({"RAD", "RADIOLOGY", "IMG", "IMAGING", "DI", "XRAY DEPT", "RX DEPT"})
# OBR-45 / CPT modifiers for the side (CPT appendix A; 50 = bilateral procedure).
_SIDE_MODIFIERS = {"LT": "left", "RT": "right", "50": "bilateral"}


def _modality(section: str, ipc: str) -> str:
    """The modality: OBR-24, unless it only names the department (RAD) and IPC-5 is valued."""
    section, ipc = section.upper(), ipc.upper()
    if section in _GENERIC_SECTIONS and ipc:
        return ipc
    return _first(section, ipc)


def _modifiers(msg: RawMessage, raw: str) -> list[Coded]:
    """OBR-45 procedure code modifiers; a side modifier without text gets its word (LT: left)."""
    out = []
    for mod in _coded(msg, raw):
        side = _SIDE_MODIFIERS.get(mod.code.upper())
        if side and not mod.text:
            mod = Coded(code=mod.code, text=side, system=mod.system)
        out.append(mod)
    return out


# OBR-15.5 site modifiers (HL7 table 0495) that give the side.
_SITE_MODIFIERS = {"L": "left", "R": "right", "B": "bilateral", "BIL": "bilateral"}


def _body_site(msg: RawMessage, raw: str) -> list[Coded]:
    """OBR-15 (specimen source, v2.3-2.4) body site and site modifier, which radiology feeds use
    for the part examined and its side ("^^^THIGH^L"): one procedure text, or nothing."""
    reps = msg.repetitions(raw)
    comps = msg.components(reps[0]) if reps else []
    sub = msg.delimiters.subcomponent
    words = []
    for n in (3, 4):  # OBR-15.4 body site, OBR-15.5 site modifier (CE in subcomponents)
        parts = (comps[n].split(sub) if sub else [comps[n]]) if len(comps) > n else []
        code = msg.value(parts[0]) if parts else ""
        text = msg.value(parts[1]) if len(parts) > 1 else ""
        word = text or (_SITE_MODIFIERS.get(code.upper(), code) if n == 4 else code)
        if word:
            words.append(word)
    return [Coded(text=" ".join(words), system="OBR-15")] if words else []


def _observation_status(msg: RawMessage, segments: list[RawSegment]) -> str:
    """The group's OBX-11 (table 0085) in one: F or C when any observation is final or
    corrected, else the first status given (P, R, I ...), else ""."""
    statuses = [msg.component(s.get(11), 1).upper() for s in segments if s.id == "OBX"]
    statuses = [st for st in statuses if st]
    for final in ("F", "C"):
        if final in statuses:
            return final
    return statuses[0] if statuses else ""


# OBX-5 answers that deny the question asked (Y/N, yes/no, table 0136 and common variants).
_NEGATIVE_ANSWERS = frozenset(
    {
        "N",
        "NO",
        "NONE",
        "NEGATIVE",
        "NEG",
        "FALSE",
        "0",
        "DENIED",
        "DENIES",
        "NO^NO",
        "N^NO",
        "NOT KNOWN",
        "UNKNOWN",
        "NIL",
    }
)


def _segment_texts(msg: RawMessage, seg: RawSegment) -> list[TextSource]:
    """Text a segment contributes to an order or to the patient context."""
    out: list[TextSource] = []
    if seg.id == "NTE":
        src = _source(msg, "NTE-3", seg.get(3))
        if src:
            out.append(src)
    elif seg.id == "DG1":
        codes = _coded(msg, seg.get(3))
        description = _text(msg, seg.get(4))
        text = " ".join([*(c.text for c in codes if c.text), description]).strip()
        if codes or text:
            out.append(TextSource(source="DG1-3", text=text, codes=codes))
    elif seg.id == "OBX":
        question = " ".join(c.text or c.code for c in _coded(msg, seg.get(3)))
        answer = _text(msg, seg.get(5))
        units = msg.component(seg.get(6), 1) or msg.component(seg.get(6), 2)
        if answer:
            codes = _coded(msg, seg.get(5)) if msg.value(seg.get(2)) in ("CE", "CWE") else []
            text = f"{question}: {answer}" + (f" {units}" if units else "")
            first = msg.component(seg.get(5), 1).strip().upper()
            negative = first in _NEGATIVE_ANSWERS or answer.strip().upper() in _NEGATIVE_ANSWERS
            out.append(
                TextSource(
                    source="OBX-5",
                    text=text.strip(": "),
                    codes=codes,
                    negated=bool(question) and negative,
                )
            )
    elif seg.id == "AL1":
        allergen = " ".join(c.text or c.code for c in _coded(msg, seg.get(3)))
        reaction = _text(msg, seg.get(5))
        if allergen:
            out.append(TextSource(source="AL1-3", text=f"allergy to {allergen} {reaction}".strip()))
    return out


def read_message(msg: RawMessage) -> ParsedMessage:
    """The header, patient and orders of a message. Raises HL7ParseError on bad required fields."""
    header = read_header(msg)
    if not header.message_type:
        raise HL7ParseError("MSH-9 message type is missing", "MSH", 9, code="101")
    context_segments, groups = _group(msg)
    context: list[TextSource] = []
    for seg in context_segments:
        context.extend(_segment_texts(msg, seg))
    return ParsedMessage(
        header=header,
        patient=read_patient(msg),
        orders=[_order(msg, g) for g in groups],
        context=context,
    )
