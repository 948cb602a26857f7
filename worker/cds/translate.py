"""From a CDS Hooks order request to the order model the HL7 reader fills (worker/models.py).

The same facts, from the other door: ServiceRequest.code (CPT, LOINC, RadLex or local codings, and
its text) plays OBR-4; bodySite with its laterality plays OBR-15 and the CPT side modifiers;
reasonCode plays OBR-31 and DG1; reasonReference (a Condition or Observation) and
supportingInfo (ask-at-order-entry answers as Observations) play DG1 and OBX; note plays NTE;
authoredOn plays ORC-9; the Patient's birthDate plays PID-7; allergies play AL1. Prior studies
(ImagingStudy, Procedure, DiagnosticReport) become the final results of a result message, which
the Checker records in the patient's history exactly as it records an ORU^R01.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.allergyintolerance import AllergyIntolerance
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.resource import Resource
from fhir.resources.R4B.servicerequest import ServiceRequest

from worker.cds.fhir import (
    as_date,
    as_datetime,
    coded,
    concept_text,
    load,
    side_of,
    side_of_code,
    site_words,
)
from worker.models import (
    Coded,
    MessageHeader,
    Order,
    ParsedMessage,
    PatientId,
    PatientRef,
    TextSource,
)

# ServiceRequest.status -> (ORC-1, ORC-5): a draft or active request is a new order; a revoked
# one a cancel; a completed one enters the history and is not judged.
_STATUS = {
    "draft": ("NW", ""),
    "active": ("NW", ""),
    "on-hold": ("NW", ""),
    "unknown": ("NW", ""),
    "revoked": ("CA", "CA"),
    "entered-in-error": ("CA", "CA"),
    "completed": ("SC", "CM"),
}
# Answers that deny an ask-at-order-entry question (HL7 table 0136 and common words).
_NO = frozenset(
    {"n", "no", "none", "false", "negative", "neg", "denied", "denies", "nil", "0", "unknown"}
    | {"not known", "n no", "no no"}
)
_FINAL_REPORT = ("final", "amended", "corrected", "appended")
_MODALITY_SYSTEMS = (
    "http://dicom.nema.org/resources/ontology/DCM",
    "http://terminology.hl7.org/CodeSystem/v2-0074",
)
_CONTEXT_TYPES = ("Patient", "ImagingStudy", "Procedure", "DiagnosticReport", "AllergyIntolerance")


class RequestError(ValueError):
    """The request is not a CDS Hooks order request this service can read (HTTP 400)."""


@dataclass
class Draft:
    """One draft ServiceRequest of the request, read into an Order."""

    reference: str  # "ServiceRequest/{id}"
    raw: dict[str, Any]
    order: Order
    selected: bool = True
    notes: list[str] = field(default_factory=list)


@dataclass
class Translated:
    message: ParsedMessage
    drafts: list[Draft]
    history: ParsedMessage | None  # prior studies as a result message, or None
    notes: list[str] = field(default_factory=list)


class Index:
    """Resources a reference may point to: the draft bundle's entries and the prefetch."""

    def __init__(self) -> None:
        self._by_ref: dict[str, dict[str, Any]] = {}

    def add(self, data: Any, full_url: str = "") -> None:
        if not isinstance(data, dict):
            return
        kind, rid = data.get("resourceType"), data.get("id")
        if isinstance(kind, str) and isinstance(rid, str):
            self._by_ref[f"{kind}/{rid}"] = data
        if full_url:
            self._by_ref[full_url] = data

    def get(self, reference: str) -> dict[str, Any] | None:
        hit = self._by_ref.get(reference)
        if hit is None and "/" in reference:  # an absolute URL: its last two segments
            hit = self._by_ref.get("/".join(reference.rstrip("/").split("/")[-2:]))
        return hit


def bundle_entries(bundle: Any, where: str) -> list[Any]:
    """The resources of a Bundle (400 when *bundle* is not one)."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise RequestError(f"{where} must be a FHIR Bundle")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise RequestError(f"{where}.entry must be an array of objects")
    return [e.get("resource") for e in entries]


def resources_of(value: Any) -> list[dict[str, Any]]:
    """A prefetch value (a resource or a searchset Bundle) as a list of resource objects."""
    if not isinstance(value, dict):
        return []
    if value.get("resourceType") == "Bundle":
        entries = value.get("entry")
        if not isinstance(entries, list):
            return []
        return [
            e["resource"]
            for e in entries
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]
    return [value]


def translate(
    *,
    hook_instance: str,
    service_id: str,
    draft_bundle: Any,
    patient_id: str,
    user_id: str,
    selections: list[str] | None,
    resources: list[dict[str, Any]],
    now: datetime | None = None,
) -> Translated:
    """The order message (and the history result message) of one CDS Hooks call."""
    entries = bundle_entries(draft_bundle, "context.draftOrders")
    index = Index()
    for entry in entries:
        index.add(entry)
    for res in resources:
        index.add(res)
    notes: list[str] = []
    patient = PatientRef(identifiers=[PatientId(id=patient_id or "draft", authority="cds")])
    allergies: list[TextSource] = []
    studies: list[Order] = []
    # The prefetch, and a Patient or prior study some clients put beside the drafts.
    extra = [
        e for e in entries if isinstance(e, dict) and e.get("resourceType") != "ServiceRequest"
    ]
    for res in [*resources, *extra]:
        kind = res.get("resourceType")
        if kind not in _CONTEXT_TYPES:
            continue
        model, dropped = load(res)
        if model is None:
            notes.append(f"a prefetched {kind} could not be read ({'; '.join(dropped)})")
            continue
        if isinstance(model, Patient):
            birth = as_date(model.birthDate)
            patient = PatientRef(
                identifiers=patient.identifiers, birth_date=birth, sex=str(model.gender or "")
            )
        elif isinstance(model, AllergyIntolerance):
            text = _allergy_text(model)
            if text:
                allergies.append(TextSource(source="AllergyIntolerance", text=text))
        else:
            study = _study(model)
            if study is not None:
                studies.append(study)

    drafts: list[Draft] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or entry.get("resourceType") != "ServiceRequest":
            continue  # medication and other orders: not ours
        sent_id = entry.get("id")
        rid = sent_id if isinstance(sent_id, str) and sent_id else f"draft-{i + 1}"
        reference = f"ServiceRequest/{rid}"
        defaults = {
            "subject": {"reference": f"Patient/{patient_id or 'unknown'}"},
            "status": "draft",
            "intent": "order",
        }
        sr, dropped = load(entry, defaults)
        if not isinstance(sr, ServiceRequest):
            notes.append(f"{reference} could not be read ({'; '.join(dropped)})")
            continue
        order = _order(sr, index, rid, user_id)
        draft = Draft(reference=reference, raw=entry, order=order)
        if dropped:
            draft.notes.append("elements not read: " + ", ".join(dropped[:5]))
        if selections is not None:
            draft.selected = reference in selections or rid in selections
        drafts.append(draft)

    stamp = now or datetime.now(UTC)
    header = MessageHeader(
        sending_application="CDS-HOOKS",
        sending_facility=service_id,
        message_type="OMI",
        trigger_event="O23",
        control_id=hook_instance[:199],
        timestamp=stamp,
    )
    message = ParsedMessage(
        header=header, patient=patient, orders=[d.order for d in drafts], context=allergies
    )
    history = None
    if studies:
        history = ParsedMessage(
            header=header.model_copy(update={"message_type": "ORU", "trigger_event": "R01"}),
            patient=patient,
            orders=studies,
        )
    return Translated(message=message, drafts=drafts, history=history, notes=notes)


# -- the draft order ----------------------------------------------------------------------------
def _order(sr: ServiceRequest, index: Index, rid: str, user_id: str) -> Order:
    control, status = _STATUS.get(str(sr.status or "draft"), ("NW", ""))
    procedures = _procedure_codes(sr.code)
    for detail in sr.orderDetail or []:  # e.g. "without and with contrast"
        text = concept_text(detail)
        if text:
            procedures.append(Coded(text=text))
    procedures += _body_site(sr.bodySite or [])
    texts: list[TextSource] = []
    for reason in sr.reasonCode or []:
        src = _concept_source("ServiceRequest.reasonCode", reason)
        if src is not None:
            texts.append(src)
    contained = {f"#{c.id}": c for c in sr.contained or [] if getattr(c, "id", None)}
    for ref in sr.reasonReference or []:
        texts.extend(_referenced("ServiceRequest.reasonReference", ref, contained, index))
    for note in sr.note or []:
        if note.text:
            texts.append(TextSource(source="ServiceRequest.note", text=str(note.text)))
    for ref in sr.supportingInfo or []:
        texts.extend(_referenced("ServiceRequest.supportingInfo", ref, contained, index))
    placer = rid
    if sr.identifier:
        placer = next((str(i.value) for i in sr.identifier if i.value), rid)
    requester = sr.requester.display if sr.requester and sr.requester.display else ""
    return Order(
        order_control=control,
        order_status=status,
        placer_number=placer[:199],
        procedures=procedures,
        modality=_modality(sr.category or []),
        ordered_at=as_datetime(sr.authoredOn),
        ordering_provider=str(requester or user_id)[:200],
        texts=texts,
    )


def _modality(categories: list[Any]) -> str:
    """A modality in ServiceRequest.category (DICOM modality or HL7 v2 table 0074), as OBR-24."""
    for cc in categories:
        for c in cc.coding or []:
            if c.code and str(c.system or "").rstrip("/") in _MODALITY_SYSTEMS:
                return str(c.code).upper()
    return ""


def _procedure_codes(cc: Any) -> list[Coded]:
    out = coded(cc)
    text = str(cc.text) if cc is not None and cc.text else ""
    if text and all(text != c.text for c in out):
        out.append(Coded(text=text))
    return out


def _body_site(sites: list[Any]) -> list[Coded]:
    """bodySite as one procedure text ("thigh left"), as the HL7 reader reads OBR-15."""
    words: list[str] = []
    for site in sites:
        side = side_of(site)
        text = site.text or " ".join(
            str(c.display or site_words(c.code))
            for c in site.coding or []
            if (c.display or site_words(c.code)) and not side_of_code(c.code)
        )
        for word in (str(text or ""), side):
            if word and word.lower() not in " ".join(words).lower():
                words.append(word)
    return [Coded(text=" ".join(words), system="bodySite")] if words else []


def _concept_source(label: str, cc: Any) -> TextSource | None:
    codes = coded(cc)
    text = concept_text(cc)
    if not text and not codes:
        return None
    return TextSource(source=label, text=text, codes=codes)


def _referenced(label: str, ref: Any, contained: dict[str, Any], index: Index) -> list[TextSource]:
    """The texts of a referenced Condition, Observation or DiagnosticReport (or its display)."""
    target = ref.reference or ""
    model: Resource | None = contained.get(target)
    if model is None and target:
        data = index.get(target)
        if data is not None:
            model, _ = load(data)
    if model is None:
        return [TextSource(source=label, text=str(ref.display))] if ref.display else []
    return _resource_texts(label, model)


def _resource_texts(label: str, model: Resource) -> list[TextSource]:
    out: list[TextSource] = []
    if isinstance(model, Condition):
        words = [concept_text(model.code), *(concept_text(s) for s in model.bodySite or [])]
        words += [str(n.text) for n in model.note or [] if n.text]
        text = " ".join(w for w in words if w)
        if text:
            out.append(TextSource(source=f"{label} Condition", text=text, codes=coded(model.code)))
    elif isinstance(model, Observation):
        src = _answer(label, model)
        if src is not None:
            out.append(src)
    elif isinstance(model, DiagnosticReport):
        words = [concept_text(model.code), str(model.conclusion or "")]
        text = ": ".join(w for w in words if w)
        if text:
            out.append(TextSource(source=f"{label} DiagnosticReport", text=text))
    return out


def _answer(label: str, obs: Observation) -> TextSource | None:
    """An Observation as an OBX: "question: answer", negated when the answer says no."""
    question = concept_text(obs.code)
    answer, codes = "", []
    if obs.valueBoolean is not None:
        answer = "yes" if obs.valueBoolean else "no"
    elif obs.valueString is not None:
        answer = str(obs.valueString)
    elif obs.valueCodeableConcept is not None:
        answer = concept_text(obs.valueCodeableConcept)
        codes = coded(obs.valueCodeableConcept)
        if not answer:
            answer = " ".join(c.code for c in codes)
    elif obs.valueQuantity is not None and obs.valueQuantity.value is not None:
        unit = obs.valueQuantity.unit or obs.valueQuantity.code or ""
        answer = f"{obs.valueQuantity.value} {unit}".strip()
    elif obs.valueInteger is not None:
        answer = str(obs.valueInteger)
    words = [str(n.text) for n in obs.note or [] if n.text]
    if not answer and not words:
        return None
    negated = bool(question) and (
        " ".join(answer.lower().split()) in _NO
        or any(c.code.upper() in ("N", "373067005") for c in codes)
    )
    text = f"{question}: {answer}".strip(": ") if answer else question
    if words:
        text = f"{text} {' '.join(words)}".strip()
    return TextSource(source=f"{label} Observation", text=text, codes=codes, negated=negated)


def _allergy_text(model: AllergyIntolerance) -> str:
    if str(model.verificationStatus and concept_text(model.verificationStatus)) in (
        "refuted",
        "entered-in-error",
    ):
        return ""
    substance = concept_text(model.code)
    if not substance:
        return ""
    reactions = [concept_text(m) for r in model.reaction or [] for m in r.manifestation or [] if m]
    return f"allergy to {substance} {' '.join(r for r in reactions if r)}".strip()


# -- prior studies ------------------------------------------------------------------------------
def _study(model: Resource) -> Order | None:
    """A completed prior study as a final result (OBR-25 F) for the patient's history."""
    procedures: list[Coded] = []
    texts: list[TextSource] = []
    modality = ""
    at = None
    if isinstance(model, ImagingStudy):
        if model.status != "available":
            return None
        for cc in model.procedureCode or []:
            procedures += _procedure_codes(cc)
        if model.description:
            procedures.append(Coded(text=str(model.description)))
        sites = []
        for series in model.series or []:
            if series.modality and not modality:
                modality = str(series.modality.code or "").upper()
            site = " ".join(
                w
                for w in (
                    str(
                        series.bodySite.display
                        or site_words(series.bodySite.code)
                        or series.bodySite.code
                        or ""
                    )
                    if series.bodySite
                    else "",
                    _coding_side(series.laterality),
                )
                if w
            )
            if site and site not in sites:
                sites.append(site)
        if sites:
            procedures.append(Coded(text=" ".join(sites), system="bodySite"))
        if not modality:
            modality = next((str(m.code or "").upper() for m in model.modality or []), "")
        at = as_datetime(model.started)
    elif isinstance(model, Procedure):
        if model.status != "completed":
            return None
        procedures = _procedure_codes(model.code) + _body_site(model.bodySite or [])
        for reason in model.reasonCode or []:
            src = _concept_source("Procedure.reasonCode", reason)
            if src is not None:
                texts.append(src)
        at = as_datetime(model.performedDateTime) or (
            as_datetime(model.performedPeriod.start) if model.performedPeriod else None
        )
    elif isinstance(model, DiagnosticReport):
        if model.status not in _FINAL_REPORT:
            return None
        procedures = _procedure_codes(model.code)
        if model.conclusion:
            texts.append(TextSource(source="DiagnosticReport.conclusion", text=model.conclusion))
        at = as_datetime(model.effectiveDateTime) or as_datetime(model.issued)
    else:
        return None
    if not procedures and not modality:
        return None
    return Order(
        order_control="RE",
        result_status="F",
        placer_number=str(getattr(model, "id", "") or "")[:199],
        procedures=procedures,
        modality=modality,
        ordered_at=at,
        texts=texts,
    )


def _coding_side(coding: Any) -> str:
    if coding is None:
        return ""
    return side_of_code(coding.code) or str(coding.display or "")
