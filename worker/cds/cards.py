"""CDS Hooks cards from the Checker's result for one draft order.

A flag (not-appropriate) gives one `warning` card whose suggestion deletes the draft and creates
the preferred ServiceRequest (MRI without and with IV contrast, CPT 73720) with the recommended
protocol in its note; each advice gives an `info` card. An appropriate order without advice and
an order out of scope give no card. The texts, codes and citations are the knowledge files' own,
as on the HL7 advisory.
"""

from __future__ import annotations

import re
from typing import Any

from worker.cds.fhir import CPT
from worker.cds.models import Action, Card, Coding, Link, Source, Suggestion
from worker.guideline import Knowledge, ProcedureDef, RuleDef, RuleException
from worker.models import CheckResult
from worker.records import OVERRIDE_REASONS

OVERRIDE_SYSTEM = "urn:ordercheck:cds:override-reason"
RULE_SYSTEM = "urn:ordercheck:rule"
EXTENSION = "ordercheck.verdict"
SUMMARY_MAX = 139  # the specification: "less than 140 characters"
LOINC = "http://loinc.org"
RADLEX = "http://www.radlex.org"
_SYSTEM_URIS = {"CPT": CPT, "C4": CPT, "LN": LOINC, "LOINC": LOINC, "RADLEX": RADLEX}


def card_uuid(record_id: str, n: int) -> str:
    """A card's (or suggestion's) uuid: the advisory record's id plus a number, so feedback
    finds its record in any process without a lookup table."""
    r = record_id
    return f"{r[0:8]}-{r[8:12]}-{r[12:16]}-{r[16:20]}-{n:012x}"


def record_of(uuid: str) -> str | None:
    """The advisory record id a card uuid names, or None when it is not one of ours."""
    parts = uuid.strip().lower().split("-")
    if [len(p) for p in parts] != [8, 4, 4, 4, 12]:
        return None
    rid = "".join(parts[:4])
    return rid if all(c in "0123456789abcdef" for c in rid) else None


def _short(text: str, limit: int = SUMMARY_MAX) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip(" ,;:") + "…"


class CardBuilder:
    def __init__(self, knowledge: Knowledge, links: list[Link] | None = None) -> None:
        self.kn = knowledge
        meta = knowledge.guideline.guideline
        self.source_label = f"ordercheck: {meta.title} (guideline {meta.id} {meta.version})"
        self.links = links

    def _source(self, code: str, title: str) -> Source:
        return Source(
            label=self.source_label, topic=Coding(system=RULE_SYSTEM, code=code, display=title)
        )

    def _definition(self, code: str) -> RuleDef | RuleException | None:
        """The rule or rule exception of the guideline with this code, or None."""
        rules = self.kn.guideline.rules
        if code in rules:
            return rules[code]
        return next((r.exceptions[code] for r in rules.values() if code in r.exceptions), None)

    def _title(self, code: str) -> str:
        found = self._definition(code)
        return found.title if found is not None else code

    def cards(
        self,
        result: CheckResult,
        draft: dict[str, Any],
        reference: str,
        record_id: str,
        notes: list[str],
    ) -> list[Card]:
        """The cards for one draft's result (empty when there is nothing to say)."""
        if not result.in_scope or result.verdict not in ("appropriate", "not-appropriate"):
            return []
        verdict = {
            "verdict": result.verdict,
            "flags": [f.code for f in result.flags],
            "advice": [a.code for a in result.advice],
            "ruleIds": result.rule_ids,
            "guidelineVersion": result.guideline_version,
            "draft": reference,
        }
        cards: list[Card] = []
        n = 0
        if result.flags:
            cards.append(self._warning(result, draft, reference, record_id, notes, verdict))
            n = 1
        for advice in result.advice:
            title = self._title(advice.code)
            detail = [
                f"**{title}**",
                "",
                advice.text,
                "",
                *self._sources(advice.citations),
                *self._footer(result, notes),
            ]
            suggestion = None
            rule = self.kn.guideline.rules.get(advice.code)
            if rule is not None and rule.kind == "advice" and rule.preferred:
                preferred = self.kn.guideline.procedures[rule.preferred]
                if not _orders(draft, preferred):
                    suggestion = self._replace(
                        result, draft, reference, preferred, card_uuid(record_id, 0x100 + n)
                    )
            cards.append(
                Card(
                    uuid=card_uuid(record_id, n),
                    summary=self._summary(advice.code, title),
                    detail="\n".join(detail).strip(),
                    indicator="info",
                    source=self._source(advice.code, title),
                    suggestions=[suggestion] if suggestion else None,
                    selection_behavior="at-most-one" if suggestion else None,
                    links=self.links,
                    extension={EXTENSION: verdict},
                )
            )
            n += 1
        return cards

    def _warning(
        self,
        result: CheckResult,
        draft: dict[str, Any],
        reference: str,
        record_id: str,
        notes: list[str],
        verdict: dict[str, Any],
    ) -> Card:
        first = result.flags[0]
        title = self._title(first.code)
        pref = result.preferred_procedure
        pref_text = f"{pref.text} ({pref.system} {pref.code})" if pref else "MRI"
        detail = [f"**{self._title(f.code)}** ({f.code})\n\n{f.reason}" for f in result.flags]
        detail += ["", f"**Recommended instead:** {pref_text}."]
        if result.protocol:
            detail += ["", "**Recommended protocol:**", ""]
            detail += [f"{i}. {step}" for i, step in enumerate(result.protocol, 1)]
        detail += ["", *self._sources([c for f in result.flags for c in f.citations])]
        detail += self._footer(result, notes)
        preferred = self.kn.guideline.procedures.get("MRI_WWO")
        if pref is not None:
            preferred = next(
                (p for p in self.kn.guideline.procedures.values() if p.code == pref.code),
                preferred,
            )
        suggestions = None
        if preferred is not None:
            suggestions = [
                self._replace(result, draft, reference, preferred, card_uuid(record_id, 0x100))
            ]
        return Card(
            uuid=card_uuid(record_id, 0),
            summary=self._summary(first.code, title),
            detail="\n".join(detail).strip(),
            indicator="warning",
            source=self._source(first.code, title),
            suggestions=suggestions,
            selection_behavior="at-most-one" if suggestions else None,
            override_reasons=[
                Coding(system=OVERRIDE_SYSTEM, code=code, display=label)
                for code, label in OVERRIDE_REASONS.items()
            ],
            links=self.links,
            extension={EXTENSION: verdict},
        )

    def _summary(self, code: str, title: str) -> str:
        """The title and the first clause of the advice ("Order MRI ... (CPT 73720) first"),
        or the title alone when both do not fit in 139 characters."""
        advice = self._advice(code)
        clause = re.split(r"[.;:]\s|, (?:and|unless|or|but)\b", advice, maxsplit=1)[0].strip()
        both = f"{title}: {clause.rstrip('.')}" if clause else title
        return both if len(both) <= SUMMARY_MAX else _short(title)

    def _advice(self, code: str) -> str:
        found = self._definition(code)
        return found.advice if found is not None else ""

    def _sources(self, citations: list[str]) -> list[str]:
        seen = list(dict.fromkeys(citations))
        return ["**Sources:**", "", *(f"- {c}" for c in seen), ""] if seen else []

    def _footer(self, result: CheckResult, notes: list[str]) -> list[str]:
        meta = self.kn.guideline.guideline
        out = [f"Guideline: {meta.title}, version {result.guideline_version}."]
        if result.reason:
            out.append(f"Assessment: {result.reason}")
        out += [f"Note: {n}" for n in notes]
        out.append(f"_{meta.disclaimer}_")
        return ["", *(f"{line}  " for line in out)]

    def _replace(
        self,
        result: CheckResult,
        draft: dict[str, Any],
        reference: str,
        preferred: ProcedureDef,
        uuid: str,
    ) -> Suggestion:
        """Delete the draft, create the preferred ServiceRequest with the protocol as a note."""
        codings = [
            {
                "system": _SYSTEM_URIS.get(preferred.system.upper(), preferred.system),
                "code": preferred.code,
                "display": preferred.text,
            }
        ]
        if preferred.loinc:
            codings.append({"system": LOINC, "code": preferred.loinc, "display": preferred.text})
        if preferred.radlex:
            codings.append({"system": RADLEX, "code": preferred.radlex, "display": preferred.text})
        resource: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": draft.get("intent") if isinstance(draft.get("intent"), str) else "order",
            "code": {"coding": codings, "text": preferred.text},
        }
        for key in ("category", "priority", "subject", "encounter", "requester", "bodySite"):
            if key in draft:
                resource[key] = draft[key]
        for key in ("reasonCode", "reasonReference"):
            if key in draft:
                resource[key] = draft[key]
        protocol = "Recommended protocol: " + " ".join(
            f"{i}. {step}" for i, step in enumerate(result.protocol, 1)
        )
        notes = [{"text": protocol}] if result.protocol else []
        notes += [n for n in draft.get("note", []) if isinstance(n, dict)]
        if notes:
            resource["note"] = notes
        return Suggestion(
            label=_short(f"Order {_lower_first(preferred.text)} ({preferred.code}) instead"),
            uuid=uuid,
            is_recommended=True,
            actions=[
                Action(
                    type="delete",
                    description=f"Remove the draft order {reference}",
                    resource_id=reference,
                ),
                Action(
                    type="create",
                    description=f"Order {_lower_first(preferred.text)} (CPT {preferred.code})",
                    resource=resource,
                ),
            ],
        )


def _lower_first(text: str) -> str:
    """ "Ultrasound ..." -> "ultrasound ..."; an acronym ("MRI ...") is kept."""
    return text if text[:2].isupper() else text[:1].lower() + text[1:]


def _orders(draft: dict[str, Any], preferred: ProcedureDef) -> bool:
    """Whether the draft already orders *preferred* (its CPT code among the codings)."""
    code = draft.get("code")
    codings = code.get("coding", []) if isinstance(code, dict) else []
    return any(isinstance(c, dict) and c.get("code") == preferred.code for c in codings)
