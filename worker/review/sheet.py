"""The protocol worklist and its printed sheets: filters, and what one sheet shows.

A sheet names the patient (name, MRN, birth date) and the accession number, read from the order
as received (raw_in): patient data, shown only behind the review login, never logged. The
recommended protocol comes with the site's RIS code (protocols.toml) and, for a CT order the
advisory asks to convert to MRI, a line saying the MRI protocol applies once it is converted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from worker.errors import HL7ParseError
from worker.guideline import Knowledge
from worker.hl7.parse import RawMessage, parse_message
from worker.hl7.read import read_message
from worker.models import Advice
from worker.protocols import ProtocolChoice
from worker.records import AdvisoryRecord, Disposition
from worker.review.summary import protocol_worklist
from worker.store import AdvisoryStore

MODALITIES = {"mri": "MRI", "ct": "CT"}
# Advice a protocoling radiologist acts on: it changes the protocol or the contrast.
PROTOCOL_ADVICE = (
    "MRI_CONTRAINDICATED",
    "CT_FOR_MINERALISATION",
    "CONTRAST_CAUTION",
    "MRI_ADD_CONTRAST",
    "MRI_NO_PRECONTRAST",
)


@dataclass(frozen=True, slots=True)
class WorklistFilters:
    """The worklist's filters as typed in the form (anything unknown is ignored)."""

    modality: str = ""  # "", "mri" or "ct"
    flagged: bool = False  # flagged orders only
    open_only: bool = False  # not yet protocolled

    @classmethod
    def from_args(cls, args: dict[str, str]) -> WorklistFilters:
        modality = args.get("modality", "").strip().lower()
        return cls(
            modality=modality if modality in MODALITIES else "",
            flagged=args.get("flagged", "") in ("1", "on", "yes", "true"),
            open_only=args.get("open", "") in ("1", "on", "yes", "true"),
        )

    def items(self) -> dict[str, str]:
        """The filters as query-string items (unset ones left out)."""
        out = {"modality": self.modality} if self.modality else {}
        if self.flagged:
            out["flagged"] = "1"
        if self.open_only:
            out["open"] = "1"
        return out

    def keep(self, rec: AdvisoryRecord) -> bool:
        facts = rec.result.facts
        if self.modality and (facts is None or facts.procedure_class != self.modality):
            return False
        if self.flagged and not rec.result.flags:
            return False
        return not (self.open_only and rec.protocolled is not None)


def worklist(store: AdvisoryStore, day: date, filters: WorklistFilters) -> list[AdvisoryRecord]:
    """Today's (*day*'s) in-scope MRI and CT orders matching *filters*, oldest first."""
    return [rec for rec in protocol_worklist(store, day) if filters.keep(rec)]


@dataclass(frozen=True, slots=True)
class Patient:
    """Who a sheet is for, as the order names them ("" when the order does not say)."""

    name: str = ""
    mrn: str = ""
    birth_date: str = ""
    sex: str = ""
    accession: str = ""


@dataclass(frozen=True, slots=True)
class Sheet:
    """One printed sheet: an order, its patient, protocol, code and protocolled status."""

    rec: AdvisoryRecord
    patient: Patient
    modality: str  # "MRI", "CT"
    site: str  # the ordering site (MSH-4)
    protocol: ProtocolChoice | None
    advice: list[Advice]  # advice that bears on the protocol (MRI contraindicated, contrast)
    protocolled: Disposition | None


def _name(msg: RawMessage, raw: str) -> str:
    """PID-5 (XPN) as "FAMILY, Given Middle" (first repetition)."""
    family, given, middle = (msg.component(raw, n) for n in (1, 2, 3))
    rest = " ".join(p for p in (given, middle) if p)
    return f"{family}, {rest}" if family and rest else family or rest


def patient_of(rec: AdvisoryRecord) -> Patient:
    """The patient and accession number of *rec*'s order, from the HL7 received."""
    try:
        msg = parse_message(rec.raw_in.encode("utf-8"))
        parsed = read_message(msg)
    except HL7ParseError:
        return Patient()
    order = parsed.orders[rec.order_index] if rec.order_index < len(parsed.orders) else None
    patient = order.patient if order is not None and order.patient is not None else parsed.patient
    ids = patient.identifiers
    mrn = next((i for i in ids if i.type.upper() == "MR"), ids[0] if ids else None)
    pid = msg.first("PID")
    return Patient(
        name=_name(msg, pid.get(5)) if pid is not None else "",
        mrn=(f"{mrn.id} ({mrn.authority})" if mrn.authority else mrn.id) if mrn else "",
        birth_date=patient.birth_date.isoformat() if patient.birth_date else "",
        sex=patient.sex,
        accession=order.accession if order is not None else "",
    )


def sheet_of(rec: AdvisoryRecord, knowledge: Knowledge) -> Sheet:
    facts = rec.result.facts
    cls = facts.procedure_class if facts is not None else ""
    return Sheet(
        rec=rec,
        patient=patient_of(rec),
        modality=MODALITIES.get(cls, cls.upper()),
        site=rec.result.sending_facility,
        protocol=knowledge.protocol_choice(rec.result),
        advice=[a for a in rec.result.advice if a.code in PROTOCOL_ADVICE],
        protocolled=rec.protocolled,
    )
