"""Turns the HL7 seed orders into equivalent CDS Hooks order-sign requests (test helper).

Each order message becomes a draftOrders Bundle: one ServiceRequest per ORC/OBR group, coded as
OBR-4 was (CPT, LOINC, RadLex or local codings), OBR-15 as bodySite, OBR-24 as a category, OBR-31 /
ORC-16 / DG1 as reasonCode, OBR-13 / NTE as notes, OBX answers as contained Observations in
supportingInfo, ORC-9 as authoredOn. The patient's birth date goes to the Patient prefetch, AL1 to
the allergies prefetch, and the studies the file recorded before the order (final results,
completed orders) to the diagnosticReports / procedures prefetch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.check import ORDER_TYPES, Checker
from worker.guideline import Knowledge
from worker.history import InMemoryHistory
from worker.hl7.parse import split_messages
from worker.models import CheckResult, Coded, Order, ParsedMessage, TextSource

URIS = {
    "C4": "http://www.ama-assn.org/go/cpt",
    "CPT": "http://www.ama-assn.org/go/cpt",
    "CPT4": "http://www.ama-assn.org/go/cpt",
    "LN": "http://loinc.org",
    "RADLEX": "http://www.radlex.org",
    "I10": "http://hl7.org/fhir/sid/icd-10-cm",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm",
    "SCT": "http://snomed.info/sct",
}
NEW = ("NW", "XO", "RO", "")
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"


@dataclass
class SeedCase:
    file: str
    control_id: str
    placers: list[str]
    hl7: list[CheckResult]
    request: dict[str, Any]
    order_controls: list[str] = field(default_factory=list)


def coding(c: Coded) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if c.system:
        out["system"] = URIS.get(c.system.upper(), c.system)
    if c.code:
        out["code"] = c.code
    if c.text:
        out["display"] = c.text
    return out


def concept(src: TextSource) -> dict[str, Any]:
    cc: dict[str, Any] = {"text": src.text} if src.text else {}
    codings = [coding(c) for c in src.codes if c.code]
    if codings:
        cc["coding"] = codings
    return cc


def _when(order: Order, message: ParsedMessage) -> str | None:
    at = order.ordered_at or message.header.timestamp
    return at.date().isoformat() if at else None


def service_request(
    order: Order, message: ParsedMessage, i: int, context: list[TextSource]
) -> dict[str, Any]:
    if order.order_status == "CM":
        status = "completed"
    elif order.order_control in NEW:
        status = "draft"
    else:
        status = "revoked"
    codings, texts, sites = [], [], []
    for p in order.procedures:
        if p.system == "OBR-15":
            sites.append(p.text)
        elif p.code and " " not in p.code.strip():
            codings.append(coding(p))
        elif p.code or p.text:
            texts.append(p.text or p.code)
    code: dict[str, Any] = {}
    if codings:
        code["coding"] = codings
    if texts:
        code["text"] = " ".join(texts)
    sr: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": f"order-{i + 1}",
        "status": status,
        "intent": "order",
        "subject": {"reference": "Patient/seed-patient"},
        "code": code,
    }
    if order.placer_number:
        sr["identifier"] = [{"value": order.placer_number}]
    if sites:
        sr["bodySite"] = [{"text": " ".join(sites)}]
    if order.modality:
        sr["category"] = [{"coding": [{"system": V2_0074, "code": order.modality}]}]
    when = _when(order, message)
    if when:
        sr["authoredOn"] = when
    if order.ordering_provider:
        sr["requester"] = {"display": order.ordering_provider}
    reasons: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    observations: list[dict[str, Any]] = []
    for src in [*order.texts, *context]:
        if src.source in ("OBR-31", "ORC-16", "DG1-3"):
            reasons.append(concept(src))
        elif src.source == "OBX-5" and ": " in src.text:
            question, answer = src.text.split(": ", 1)
            obs: dict[str, Any] = {
                "resourceType": "Observation",
                "id": f"q{len(observations) + 1}",
                "status": "final",
                "code": {"text": question},
            }
            if src.codes:
                obs["valueCodeableConcept"] = {
                    "text": answer,
                    "coding": [coding(c) for c in src.codes],
                }
            else:
                obs["valueString"] = answer
            observations.append(obs)
        elif src.source != "AL1-3":
            notes.append({"text": src.text})
    if reasons:
        sr["reasonCode"] = reasons
    if notes:
        sr["note"] = notes
    if observations:
        sr["contained"] = observations
        sr["supportingInfo"] = [{"reference": f"#{o['id']}"} for o in observations]
    return sr


def prior_study(order: Order, message: ParsedMessage, completed_order: bool) -> dict[str, Any]:
    """A final result (DiagnosticReport) or a completed order (Procedure) of the history."""
    sr = service_request(order, message, 0, [])
    words = [t.text for t in order.texts]
    if completed_order:
        res: dict[str, Any] = {
            "resourceType": "Procedure",
            "status": "completed",
            "subject": sr["subject"],
            "code": sr["code"],
        }
        if "bodySite" in sr:
            res["bodySite"] = sr["bodySite"]
        if words:
            res["reasonCode"] = [{"text": w} for w in words]
        return res
    code = dict(sr["code"])
    if "bodySite" in sr:
        code["text"] = " ".join([code.get("text", ""), sr["bodySite"][0]["text"]]).strip()
    res = {"resourceType": "DiagnosticReport", "status": "final", "code": code}
    if order.modality and not order.procedures:
        code["text"] = order.modality
    if words:
        res["conclusion"] = " ".join(words)
    return res


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
    }


def seed_cases(paths: list[Path], kn: Knowledge) -> dict[str, list[SeedCase]]:
    """One case per order message of each file, by file name: the HL7 results and the
    equivalent request. The files are read in order sharing one patient history, as
    `ordercheck check` reads them; the studies recorded go to the later requests' prefetch."""
    checker = Checker(kn, InMemoryHistory())
    prior: dict[str, list[dict[str, Any]]] = {}
    out: dict[str, list[SeedCase]] = {}
    for path in paths:
        out[path.name] = _file_cases(path, checker, prior)
    return out


def _file_cases(
    path: Path, checker: Checker, prior: dict[str, list[dict[str, Any]]]
) -> list[SeedCase]:
    cases: list[SeedCase] = []
    for line, raw in split_messages(path.read_bytes()):
        outcome = checker.check_message(raw, line)
        parsed = outcome.parsed
        if parsed is None:
            continue
        keys = parsed.patient.keys()
        kind = parsed.header.message_type
        if kind in ORDER_TYPES and parsed.orders:
            studies: list[dict[str, Any]] = []
            for key in keys:
                studies += [s for s in prior.get(key, []) if s not in studies]
            allergies = [
                {
                    "resourceType": "AllergyIntolerance",
                    "patient": {"reference": "Patient/seed-patient"},
                    "code": {"text": t.text.removeprefix("allergy to ").strip()},
                }
                for o in parsed.orders
                for t in [*o.texts, *parsed.context]
                if t.source == "AL1-3"
            ]
            patient: dict[str, Any] = {"resourceType": "Patient", "id": "seed-patient"}
            if parsed.patient.birth_date:
                patient["birthDate"] = parsed.patient.birth_date.isoformat()
            request = {
                "hook": "order-sign",
                "hookInstance": f"seed-{path.stem}-{line}",
                "context": {
                    "userId": "Practitioner/seed",
                    "patientId": "seed-patient",
                    "draftOrders": {
                        "resourceType": "Bundle",
                        "type": "collection",
                        "entry": [
                            {"resource": service_request(o, parsed, i, parsed.context)}
                            for i, o in enumerate(parsed.orders)
                        ],
                    },
                },
                "prefetch": {
                    "patient": patient,
                    "diagnosticReports": searchset(
                        [s for s in studies if s["resourceType"] == "DiagnosticReport"]
                    ),
                    "procedures": searchset(
                        [s for s in studies if s["resourceType"] == "Procedure"]
                    ),
                    "imagingStudies": searchset([]),
                    "allergies": searchset(allergies),
                },
            }
            cases.append(
                SeedCase(
                    file=path.name,
                    control_id=parsed.header.control_id,
                    placers=[o.placer_number for o in parsed.orders],
                    hl7=outcome.results,
                    request=request,
                    order_controls=[o.order_control for o in parsed.orders],
                )
            )
        # What this message adds to the history, for the next messages of the file.
        for order in parsed.orders:
            order_keys = order.patient.keys() if order.patient is not None else keys
            if kind == "ORU" and (order.result_status or order.observation_status) in (
                "F",
                "C",
                "",
            ):
                study = prior_study(order, parsed, completed_order=False)
            elif kind in ORDER_TYPES and order.order_status == "CM":
                study = prior_study(order, parsed, completed_order=True)
            else:
                continue
            for key in order_keys:
                prior.setdefault(key, []).append(study)
    return cases
