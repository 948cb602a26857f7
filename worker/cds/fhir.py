"""Loads FHIR R4 resources with `fhir.resources` (its R4B models: ServiceRequest, Patient,
ImagingStudy, Procedure, DiagnosticReport, Observation, Condition and AllergyIntolerance have the
R4 shape), forgiving what an EHR commonly gets wrong.

Real order-entry payloads break the strict models in harmless ways: a draft without `subject`, a
vendor member that is not FHIR, an empty note. A CDS service that refuses the whole call for that
shows the clinician nothing, so `load` drops the offending element (or fills a missing required
one) and says what it dropped; a resource that still cannot be read is skipped with a note.
"""

from __future__ import annotations

import copy
import tomllib
from datetime import UTC, date, datetime
from functools import cache
from importlib import resources
from typing import Any, Literal

from fhir.resources.R4B.allergyintolerance import AllergyIntolerance
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.resource import Resource
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import BaseModel, ConfigDict, ValidationError

from worker.models import Coded

MODELS: dict[str, type[Resource]] = {
    "ServiceRequest": ServiceRequest,
    "Patient": Patient,
    "ImagingStudy": ImagingStudy,
    "Procedure": Procedure,
    "DiagnosticReport": DiagnosticReport,
    "Observation": Observation,
    "Condition": Condition,
    "AllergyIntolerance": AllergyIntolerance,
}

# Coding system URIs (and OIDs) read as the HL7 table 0396 names the knowledge files use, the
# way the HL7 reader reads OIDs and URIs in CWE-3/CWE-14.
SYSTEMS = {
    "http://www.ama-assn.org/go/cpt": "C4",
    "urn:oid:2.16.840.1.113883.6.12": "C4",
    "http://loinc.org": "LN",
    "urn:oid:2.16.840.1.113883.6.1": "LN",
    "http://www.radlex.org": "RADLEX",
    "http://radlex.org": "RADLEX",
    "urn:oid:2.16.840.1.113883.6.256": "RADLEX",
    "http://hl7.org/fhir/sid/icd-10-cm": "I10",
    "urn:oid:2.16.840.1.113883.6.90": "I10",
    "http://hl7.org/fhir/sid/icd-10": "I10",
    "urn:oid:2.16.840.1.113883.6.3": "I10",
    "http://snomed.info/sct": "SCT",
    "urn:oid:2.16.840.1.113883.6.96": "SCT",
}
CPT = "http://www.ama-assn.org/go/cpt"
# Systems known by a part of their URI ("https://www.ama-assn.org/go/cpt", "http://radlex.org/...").
_SYSTEM_PARTS = (("ama-assn.org", "C4"), ("loinc.org", "LN"), ("radlex", "RADLEX"))
MAX_REPAIRS = 12


class FhirCodes(BaseModel):
    """worker/data/fhir.toml: words for body-site codes, sides for laterality codes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: str
    body_site: dict[str, str]
    laterality: dict[str, Literal["left", "right", "bilateral"]]


@cache
def fhir_codes() -> FhirCodes:
    data = tomllib.loads((resources.files("worker") / "data" / "fhir.toml").read_text("utf-8"))
    return FhirCodes.model_validate(data)


def system_name(uri: str | None) -> str:
    """A coding system as the knowledge files name it; unknown systems are kept as sent."""
    if not uri:
        return ""
    key = uri.strip().rstrip("/").lower()
    if key in SYSTEMS:
        return SYSTEMS[key]
    return next((name for part, name in _SYSTEM_PARTS if part in key), uri.strip())


def load(data: Any, defaults: dict[str, Any] | None = None) -> tuple[Resource | None, list[str]]:
    """The resource *data* holds, or None; and the paths of elements dropped to read it."""
    if not isinstance(data, dict):
        return None, ["not a JSON object"]
    model = MODELS.get(str(data.get("resourceType", "")))
    if model is None:
        return None, [f"resourceType {data.get('resourceType')!r} is not read here"]
    work = copy.deepcopy(data)
    dropped: list[str] = []
    for _ in range(MAX_REPAIRS):
        try:
            return model.model_validate(work), dropped
        except ValidationError as exc:
            error = exc.errors()[0]
            loc = tuple(error["loc"])
            missing = str(error["type"]).endswith("missing")
            if missing and len(loc) == 1 and defaults and loc[0] in defaults:
                work[str(loc[0])] = copy.deepcopy(defaults[str(loc[0])])
                continue
            path = loc[:-1] if missing else loc
            if not path or not _drop(work, path):
                return None, [*dropped, ".".join(map(str, loc)) or "resource"]
            dropped.append(".".join(map(str, path)))
        except (KeyError, TypeError, ValueError) as exc:  # e.g. an unknown contained type
            if "contained" in work:
                work.pop("contained")
                dropped.append("contained")
                continue
            return None, [*dropped, f"unreadable ({type(exc).__name__})"]
    return None, dropped


def _drop(data: Any, path: tuple[Any, ...]) -> bool:
    """Remove the element at *path* (the deepest part that exists); False when nothing is."""
    parent = data
    for i, key in enumerate(path[:-1]):
        child = _get(parent, key)
        if child is None:
            return _remove(parent, key) if i else False
        parent = child
    return _remove(parent, path[-1])


def _get(node: Any, key: Any) -> Any:
    if isinstance(node, dict) and isinstance(key, str):
        return node.get(key)
    if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
        return node[key]
    return None


def _remove(node: Any, key: Any) -> bool:
    if isinstance(node, dict) and key in node:
        del node[key]
        return True
    if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
        del node[key]
        return True
    return False


def coded(cc: CodeableConcept | None) -> list[Coded]:
    """Every coding of a CodeableConcept as a Coded (system read as its table 0396 name)."""
    if cc is None:
        return []
    return [
        Coded(code=c.code or "", text=c.display or "", system=system_name(c.system))
        for c in cc.coding or []
        if c.code or c.display
    ]


def concept_text(cc: CodeableConcept | None) -> str:
    """The words of a CodeableConcept: its text, else the displays (else codes) of its codings."""
    if cc is None:
        return ""
    if cc.text:
        return str(cc.text)
    return " ".join(str(c.display or c.code) for c in cc.coding or [] if c.display or c.code)


def side_of(cc: CodeableConcept | None) -> str:
    """The side a laterality concept names ("left", "right", "bilateral") or ""."""
    for c in (cc.coding or []) if cc is not None else []:
        side = side_of_code(c.code)
        if side:
            return side
    return ""


def side_of_code(code: Any) -> str:
    return fhir_codes().laterality.get(str(code or "").strip().upper(), "")


def site_words(code: Any) -> str:
    """The words of a body-site code without a display ("68367000" -> "thigh"), or ""."""
    return fhir_codes().body_site.get(str(code or "").strip(), "")


def as_date(value: Any) -> date | None:
    """A FHIR date or dateTime ("1970", "1970-02", a date, a datetime) as a date."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str) and value[:4].isdigit():
        parts = [*value.split("-"), "1", "1"]
        try:
            return date(int(parts[0]), int(parts[1][:2] or 1), int(parts[2][:2] or 1))
        except ValueError:
            return None
    return None


def as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    day = as_date(value)
    return datetime(day.year, day.month, day.day, tzinfo=UTC) if day else None
