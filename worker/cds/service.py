"""The CDS Hooks services: discovery, the order-sign and order-select calls, and feedback.

No HTTP here (worker/cds/app.py is the web layer): each method takes the request body and answers
(status, JSON). A call reads the draft orders into the HL7 path's order model, runs the same
Checker over them with the patient's prior studies as history, and turns each result into cards.
Cards that were shown are kept as advisory records, so that feedback (accepted, overridden with a
reason) joins the audit trail the review page shows, beside the HL7 advisories.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from worker.cds.cards import OVERRIDE_SYSTEM, CardBuilder, record_of
from worker.cds.fetch import fetch_missing, fill
from worker.cds.models import (
    CardsResponse,
    Discovery,
    FeedbackItem,
    FeedbackRequest,
    HookRequest,
    OrderContext,
    ServiceDefinition,
)
from worker.cds.translate import RequestError, Translated, resources_of, translate
from worker.check import Checker
from worker.errors import StoreError, cause_name
from worker.guideline import Knowledge
from worker.history import InMemoryHistory
from worker.models import CheckResult, SiteSettings
from worker.records import OVERRIDE_REASONS, AdvisoryRecord, Disposition, advisory_id
from worker.store import AdvisoryStore

log = logging.getLogger("ordercheck.cds")

PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "imagingStudies": "ImagingStudy?patient={{context.patientId}}",
    "procedures": "Procedure?patient={{context.patientId}}",
    "diagnosticReports": "DiagnosticReport?patient={{context.patientId}}",
    "allergies": "AllergyIntolerance?patient={{context.patientId}}",
}
REVIEWER = "order entry (CDS Hooks)"
SENDER = "CDS-HOOKS"


@dataclass(frozen=True)
class Service:
    id: str
    hook: str
    title: str
    description: str


SERVICES = {
    s.id: s
    for s in (
        Service(
            "order-sign",
            "order-sign",
            "ordercheck: imaging for a thigh soft-tissue mass (order sign)",
            "Checks draft imaging and biopsy orders (FHIR ServiceRequest: CPT, LOINC or RadLex) "
            "for an adult soft-tissue mass of the thigh against the imaging guideline before "
            "they are signed: CT, biopsy or PET/CT before MRI gets a warning card suggesting MRI "
            "of the thigh without and with IV contrast (CPT 73720); advice comes as info cards.",
        ),
        Service(
            "order-select",
            "order-select",
            "ordercheck: imaging for a thigh soft-tissue mass (order select)",
            "The same guideline when an imaging order is selected: the selected draft orders "
            "are checked, the other draft orders count as context (a radiograph ordered beside "
            "an MRI).",
        ),
    )
}


class Answer:
    """An HTTP status and its JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body


@dataclass
class Evaluation:
    answer: Answer
    translated: Translated | None = None
    results: list[CheckResult] = field(default_factory=list)


def error(status: int, message: str) -> Answer:
    return Answer(status, {"error": message})


def _validation_message(exc: ValidationError, where: str = "") -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        loc = f"{where}.{loc}" if where and loc else (where or loc)
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)


class CdsService:
    def __init__(
        self,
        knowledge: Knowledge,
        store: AdvisoryStore,
        site: SiteSettings | None = None,
        fhir_timeout: float = 2.0,
    ) -> None:
        self.kn = knowledge
        self.store = store
        self.site = site or SiteSettings()
        self.fhir_timeout = fhir_timeout
        self.cards = CardBuilder(knowledge)

    # -- discovery ------------------------------------------------------------------------------
    def discovery(self) -> Answer:
        services = [
            ServiceDefinition(
                hook=s.hook,
                title=s.title,
                description=s.description,
                id=s.id,
                prefetch=dict(PREFETCH),
                usage_requirements="Sends draft ServiceRequests in context.draftOrders. Prior "
                "imaging is read from the prefetch, or from fhirServer when it is missing.",
            )
            for s in SERVICES.values()
        ]
        return Answer(200, Discovery(services=services).dump())

    # -- a hook call ----------------------------------------------------------------------------
    def call(self, service_id: str, body: bytes) -> Answer:
        return self.evaluate(service_id, body).answer

    def evaluate(self, service_id: str, body: bytes) -> Evaluation:
        """The answer to a call, with the drafts and the Checker's result for each."""
        service = SERVICES.get(service_id)
        if service is None:
            return Evaluation(error(404, f"no CDS service {service_id!r}; see GET /cds-services"))
        data, problem = _json_object(body)
        if data is None:
            return Evaluation(error(400, problem))
        try:
            req = HookRequest.model_validate(data)
        except ValidationError as exc:
            return Evaluation(error(400, "not a CDS Hooks request: " + _validation_message(exc)))
        if req.hook != service.hook:
            return Evaluation(
                error(400, f"service {service.id} answers hook {service.hook}, not {req.hook}")
            )
        try:
            ctx = OrderContext.model_validate(req.context)
        except ValidationError as exc:
            return Evaluation(error(400, "invalid context: " + _validation_message(exc, "context")))
        if req.fhir_authorization is not None and not req.fhir_server:
            return Evaluation(error(400, "fhirAuthorization is given without fhirServer"))
        prefetch, notes = self._prefetch(req)
        resources = [r for value in prefetch.values() for r in resources_of(value)]
        try:
            tr = translate(
                hook_instance=req.hook_instance,
                service_id=service.id,
                draft_bundle=ctx.draft_orders,
                patient_id=ctx.patient_id or "",
                user_id=ctx.user_id or "",
                selections=ctx.selections if service.hook == "order-select" else None,
                resources=resources,
            )
        except RequestError as exc:
            return Evaluation(error(400, str(exc)))
        results = self.check(tr)
        response = CardsResponse()
        for i, (draft, result) in enumerate(zip(tr.drafts, results, strict=True)):
            if not draft.selected:
                continue
            rid = advisory_id(SENDER, service.id, req.hook_instance, i)
            notes_i = [*notes, *tr.notes, *draft.notes]
            cards = self.cards.cards(result, draft.raw, draft.reference, rid, notes_i)
            if cards:
                self._keep(rid, i, result, draft.raw, [c.dump() for c in cards])
                response.cards.extend(cards)
        log.info(
            "cds %s: %d draft(s), %d card(s)",
            service.id,
            len(tr.drafts),
            len(response.cards),
            extra={"control_id": req.hook_instance[:64]},
        )
        return Evaluation(Answer(200, response.dump()), tr, results)

    def _prefetch(self, req: HookRequest) -> tuple[dict[str, Any], list[str]]:
        """The prefetch, completed from the FHIR server where it is missing; and notes."""
        prefetch = req.prefetch or {}
        missing = {k: q for k, q in PREFETCH.items() if prefetch.get(k) is None}
        if not missing or not req.fhir_server:
            return prefetch, []
        filled = {k: fill(q, req.context) for k, q in missing.items()}
        queries = {k: q for k, q in filled.items() if q is not None}
        token = req.fhir_authorization.access_token if req.fhir_authorization else None
        fetched, notes = fetch_missing(req.fhir_server, token, queries, self.fhir_timeout)
        if notes:
            notes.append("judged without the data that could not be read (no history)")
        return {**prefetch, **fetched}, notes

    def check(self, tr: Translated) -> list[CheckResult]:
        """The Checker's result for each draft of *tr*, with its prior studies as history."""
        checker = Checker(self.kn, InMemoryHistory(), self.site)
        if tr.history is not None:
            checker.check_parsed(tr.history)
        if not tr.drafts:
            return []
        return checker.check_parsed(tr.message).results

    def _keep(
        self,
        rid: str,
        index: int,
        result: CheckResult,
        draft: dict[str, Any],
        cards: list[dict[str, Any]],
    ) -> None:
        result = result.model_copy(update={"message_type": "CDS Hooks"})
        record = AdvisoryRecord(
            id=rid,
            received_at=datetime.now(UTC),
            result=result,
            order_index=index,
            raw_in=json.dumps(draft, indent=1, ensure_ascii=False)[:200_000],
            raw_out=json.dumps({"cards": cards}, indent=1, ensure_ascii=False)[:200_000],
            delivery="not-sent",
            destination="CDS Hooks response",
        )
        try:
            self.store.put(record)
        except StoreError as exc:  # the cards go out even when the store is down
            log.warning("cds: advisory record not kept (%s)", cause_name(exc))

    # -- feedback -------------------------------------------------------------------------------
    def feedback(self, service_id: str, body: bytes) -> Answer:
        if service_id not in SERVICES:
            return error(404, f"no CDS service {service_id!r}; see GET /cds-services")
        data, problem = _json_object(body)
        if data is None:
            return error(400, problem)
        try:
            req = FeedbackRequest.model_validate(data)
        except ValidationError as exc:
            return error(400, "not CDS Hooks feedback: " + _validation_message(exc))
        recorded, unknown = 0, []
        for item in req.feedback:
            rid = record_of(item.card)
            if rid is None or self.store.get(rid) is None:
                unknown.append(item.card)
                continue
            self.store.dispose(rid, _disposition(item))
            recorded += 1
        if unknown:
            return Answer(
                404, {"error": "unknown card uuid(s)", "unknown": unknown, "recorded": recorded}
            )
        return Answer(200, {"recorded": recorded})


def _disposition(item: FeedbackItem) -> Disposition:
    at = _timestamp(item.outcome_timestamp)
    if item.outcome == "accepted":
        ids = ", ".join(s.id for s in item.accepted_suggestions or [])
        text = "suggestion accepted at order entry" + (f" ({ids})" if ids else "")
        return Disposition(state="accepted", text=text[:2000], reviewer=REVIEWER, at=at)
    reason = item.override_reason
    coding = reason.reason if reason is not None and isinstance(reason.reason, dict) else {}
    code = str(coding.get("code", ""))
    system = str(coding.get("system", ""))
    words = []
    if code in OVERRIDE_REASONS and system in ("", OVERRIDE_SYSTEM):
        reason_code = code
    elif code:
        reason_code = "other"
        words.append(f"reason {system}|{code} {coding.get('display', '')}".strip())
    else:
        reason_code = ""
        words.append("overridden at order entry without a coded reason")
    if reason is not None and reason.user_comment:
        words.append(reason.user_comment)
    return Disposition(
        state="overridden",
        reason_code=reason_code,
        text=" ".join(words)[:2000],
        reviewer=REVIEWER,
        at=at,
    )


def _timestamp(value: str | None) -> datetime:
    if value:
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return when if when.tzinfo else when.replace(tzinfo=UTC)
        except ValueError:
            pass
    return datetime.now(UTC)


def _json_object(body: bytes) -> tuple[dict[str, Any] | None, str]:
    if not body.strip():
        return None, "the request body is empty: a JSON object is expected"
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"the request body is not JSON ({type(exc).__name__})"
    if not isinstance(data, dict):
        return None, "the request body must be a JSON object"
    return data, ""
