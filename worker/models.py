"""Pydantic models at ordercheck's boundaries: the order read from HL7, its facts, the advisory.

Patient identifiers live only in `PatientRef` and in raw HL7; nothing here is logged.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Verdict = Literal["appropriate", "not-appropriate", "no-criteria-apply", "rejected"]
ProcedureClass = Literal[
    "radiograph",
    "us",
    "ct",
    "cta",
    "mri",
    "mra",
    "pet",
    "biopsy",
    "excision",
    "guidance",
    "lab",
    "other",
    "unknown",
]
Contrast = Literal["without", "with", "without_and_with", "none", "unspecified"]
Region = Literal[
    "thigh",
    "lower_extremity",
    "knee",
    "hip",
    "ankle",
    "whole_body",
    "chest",
    "abdomen",
    "pelvis",
    "head",
    "spine",
    "upper_extremity",
    "other",
    "unknown",
]
Laterality = Literal["left", "right", "bilateral", "unknown"]


PAINFUL = "painful"  # a red flag for referral, not for adding contrast (MRI_ADD_CONTRAST)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=False, extra="forbid")


class Coded(_Model):
    """A coded element (CE/CWE): code^text^system^alt code^alt text^alt system."""

    code: str = ""
    text: str = ""
    system: str = ""

    def label(self) -> str:
        parts = [p for p in (self.code, self.text) if p]
        sys = f" ({self.system})" if self.system else ""
        return " ".join(parts) + (sys if parts else "")


class MessageHeader(_Model):
    """The MSH fields ordercheck uses (HL7 v2.5.1 chapter 2)."""

    field_separator: str = "|"
    encoding_characters: str = "^~\\&"
    sending_application: str = ""  # MSH-3, first component
    sending_facility: str = ""  # MSH-4, first component
    receiving_application: str = ""  # MSH-5
    receiving_facility: str = ""  # MSH-6
    timestamp: datetime | None = None  # MSH-7
    message_type: str = ""  # MSH-9.1, e.g. ORM
    trigger_event: str = ""  # MSH-9.2, e.g. O01
    message_structure: str = ""  # MSH-9.3
    control_id: str = ""  # MSH-10
    processing_id: str = ""  # MSH-11
    version: str = ""  # MSH-12
    accept_ack_type: str = ""  # MSH-15 (table 0155)
    application_ack_type: str = ""  # MSH-16 (table 0155)
    charset: str = ""  # MSH-18
    language: str = ""  # MSH-19 principal language: identifier, else text ("de", "German")

    @property
    def type_label(self) -> str:
        return "^".join(p for p in (self.message_type, self.trigger_event) if p)


class PatientId(_Model):
    """PID-3 repetition: id^^^assigning authority^identifier type. Patient data: never log."""

    id: str
    authority: str = ""
    type: str = ""

    def key(self) -> str:
        return f"{self.authority}|{self.id}"


class PatientRef(_Model):
    """The patient of a message. Patient data: never log."""

    identifiers: list[PatientId] = Field(default_factory=list)
    birth_date: date | None = None  # PID-7
    sex: str = ""  # PID-8

    def keys(self) -> list[str]:
        return [i.key() for i in self.identifiers if i.id]


class TextSource(_Model):
    """A piece of free or coded text of an order and the field it came from (e.g. "OBR-31")."""

    source: str
    text: str
    codes: list[Coded] = Field(default_factory=list)
    negated: bool = False  # an ask-at-order-entry question answered "no" (OBX-5 N, No, None)


class Order(_Model):
    """One ORC/OBR group of an order or result message."""

    order_control: str = ""  # ORC-1 (table 0119)
    order_status: str = ""  # ORC-5 (table 0038); CM when empty on a status update with OBR-25 F/C
    placer_number: str = ""  # ORC-2.1, else OBR-2.1
    filler_number: str = ""  # ORC-3.1, else OBR-3.1
    procedures: list[Coded] = Field(default_factory=list)  # OBR-4 (primary, alternate), OBR-44
    modality: str = ""  # OBR-24 diagnostic service section, else IPC-5
    result_status: str = ""  # OBR-25 (table 0123)
    observation_status: str = ""  # from the group's OBX-11s (table 0085): F, C, else the first
    ordered_at: datetime | None = None  # ORC-9, OBR-6, TQ1-7, OBR-7
    ordering_provider: str = ""  # ORC-12, else OBR-16: "id family given"
    accession: str = ""  # IPC-1, else OBR-18
    texts: list[TextSource] = Field(default_factory=list)  # in order of trust
    segment_index: int = 0  # index of the group's first segment in the message
    patient: PatientRef | None = None  # the group's own PID when a result has several patients


class ParsedMessage(_Model):
    """A message read into the fields the rules need."""

    header: MessageHeader
    patient: PatientRef = Field(default_factory=PatientRef)
    orders: list[Order] = Field(default_factory=list)
    context: list[TextSource] = Field(default_factory=list)  # patient-level NTE, AL1, DG1


class Evidence(_Model):
    """Why a fact was set: the matched words (or code) and the field they came from."""

    fact: str
    value: str
    source: str


StudyStatus = Literal["done", "planned", "unknown"]
COVERING_SITES: tuple[Region, ...] = ("thigh", "lower_extremity", "whole_body", "unknown")
"""Body sites of an MRI that covers a thigh mass (guideline.md section 4: "MRI of that thigh")."""


class PriorStudy(_Model):
    """One study of the patient before this order, from the order's text or the history."""

    modality: ProcedureClass
    site: Region = "unknown"
    side: Laterality = "unknown"
    contrast: Contrast = "unspecified"
    status: StudyStatus = "unknown"
    on: date | None = None
    source: str = ""  # "OBR-31", "NTE-3", "history (result)" ...
    words: str = ""  # the words it was read from (text only), at most 120 characters

    def covers(self, side: Laterality) -> bool:
        """Whether this study is an MRI of the thigh of an order whose mass is on *side*."""
        return (
            self.modality == "mri"
            and self.status != "planned"
            and self.site in COVERING_SITES
            and (
                self.side == side
                or "unknown" in (self.side, side)
                or "bilateral" in (self.side, side)
            )
        )


class OrderFacts(_Model):
    """Everything guideline.md section 3 asks to extract from one order."""

    procedure_class: ProcedureClass = "unknown"
    contrast: Contrast = "unspecified"
    region: Region = "unknown"
    joint_code: bool = False
    procedure_code: str = ""  # the code that classified the procedure, "CPT 73701" or ""
    procedure_text: str = ""
    laterality: Laterality = "unknown"
    age_years: int | None = None
    adult: bool = True
    mass: bool = False
    thigh_site: bool = False
    trauma: bool = False
    bone_lesion: bool = False
    size_cm: float | None = None
    size_stated_above: bool = False  # the size was written as a lower bound ("> 5 cm")
    deep: bool = False
    superficial: bool = False
    calcification: bool = False
    bony_involvement: bool = False
    growing: bool = False
    painful: bool = False
    recurrence: bool = False
    radiograph_documented: bool = False
    prior_mri_documented: bool = False
    prior_imaging: list[PriorStudy] = Field(default_factory=list)  # studies the text names
    mri_contraindications: list[Literal["device", "habitus", "metal", "other"]] = Field(
        default_factory=list
    )
    mineralisation_request: bool = False
    contrast_cautions: list[Literal["egfr", "dialysis", "pregnancy", "gadolinium_reaction"]] = (
        Field(default_factory=list)
    )
    haemorrhage: bool = False
    vascular: bool = False
    ordering_provider: str = ""
    text_left_out: int = 0  # characters of text beyond the per-order limit, not read
    evidence: list[Evidence] = Field(default_factory=list)

    def red_flags(self, size_threshold_cm: float) -> list[str]:
        """Red flags of a soft-tissue mass (guideline.md section 4, "any one")."""
        flags: list[str] = []
        if self.size_cm is not None and (
            self.size_cm > size_threshold_cm
            or (self.size_stated_above and self.size_cm >= size_threshold_cm)
        ):
            above = "over " if self.size_stated_above else ""
            flags.append(f"larger than {size_threshold_cm:g} cm ({above}{self.size_cm:g} cm)")
        if self.deep:
            flags.append("deep to fascia")
        if self.calcification:
            flags.append("calcification")
        if self.bony_involvement:
            flags.append("bony involvement")
        if self.growing:
            flags.append("growing")
        if self.painful:
            flags.append(PAINFUL)
        if self.recurrence:
            flags.append("recurrence after excision")
        return flags


class HistoryEntry(_Model):
    """A study in the patient's imaging history (a final result or a completed order)."""

    procedure_class: ProcedureClass
    region: Region = "unknown"
    laterality: Laterality = "unknown"
    at: datetime | None = None
    control_id: str = ""
    source: Literal["result", "completed-order", "documented"] = "result"


class SiteSettings(_Model):
    """What a site can change about the rules."""

    sarcoma_team_on_site: bool = False  # True turns REFER_SARCOMA_CENTRE off
    max_text_chars: int = Field(default=32_000, ge=1_000)  # text read per order, characters


class Flag(_Model):
    """A rule that made the order not-appropriate."""

    code: str
    severity: str
    reason: str
    citations: list[str]


class Advice(_Model):
    """Advice that does not change the verdict, or the action a flag asks for."""

    code: str
    text: str
    citations: list[str] = Field(default_factory=list)


class Procedure(_Model):
    code: str
    system: str
    text: str


class CheckResult(_Model):
    """The outcome for one order (the `ordercheck check --json` contract, design.md)."""

    message_control_id: str = ""
    message_type: str = ""
    placer_order_number: str = ""
    filler_order_number: str = ""
    verdict: Verdict
    flags: list[Flag] = Field(default_factory=list)
    advice: list[Advice] = Field(default_factory=list)
    preferred_procedure: Procedure | None = None
    protocol: list[str] = Field(default_factory=list)
    reason: str = ""
    rule_ids: list[str] = Field(default_factory=list)
    guideline_version: str = ""
    in_scope: bool = False
    sending_application: str = ""
    sending_facility: str = ""
    ordering_provider: str = ""
    facts: OrderFacts | None = None
    error: str | None = None
    source: str = ""  # "file:line" for the CLI
