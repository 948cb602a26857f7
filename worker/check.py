"""The pure pipeline: HL7 bytes in, one CheckResult per order out, history updated.

No I/O here beyond the History object it is given: the CLI, the Celery task and the replay
command all call this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Literal

from worker.errors import HL7ParseError
from worker.facts import extract
from worker.guideline import Knowledge, ProcedureDef
from worker.history import History
from worker.hl7.parse import RawMessage, parse_message, peek_msh, split_messages
from worker.hl7.read import read_message
from worker.models import (
    Advice,
    CheckResult,
    Flag,
    HistoryEntry,
    Order,
    OrderFacts,
    ParsedMessage,
    Procedure,
    SiteSettings,
)
from worker.protocols import ProtocolKind, conditions, kind_of
from worker.validators import RuleContext, in_scope, run_rules

ORDER_TYPES = ("ORM", "OMI", "OMG")
RESULT_TYPES = ("ORU",)
FINAL_RESULT = ("F", "C", "")  # OBR-25 (table 0123); blank is taken as final
_HISTORY_CLASSES = ("mri", "mra", "radiograph", "ct", "us", "pet", "biopsy")


@dataclass(slots=True)
class MessageOutcome:
    """What one message gave: its parsed form (None when rejected) and one result per order."""

    results: list[CheckResult]
    raw: RawMessage | None = None
    parsed: ParsedMessage | None = None
    orders: list[Order] = field(default_factory=list)  # the order of each result, if any
    recorded: int = 0  # studies this message added to the patient's history
    error: HL7ParseError | None = None


class Checker:
    """Checks orders against the guideline, sharing one patient history."""

    def __init__(
        self,
        knowledge: Knowledge,
        history: History,
        site: SiteSettings | None = None,
        today: Callable[[], date] = date.today,
    ) -> None:
        self.kn = knowledge
        self.history = history
        self.site = site or SiteSettings()
        self.today = today  # the clock: the day of an order that carries no date

    # -- entry points ------------------------------------------------------------------------
    def check_file_bytes(self, data: bytes, source: str = "") -> list[MessageOutcome]:
        """Every message of a file or stream, in order."""
        return [
            self.check_message(raw, line, f"{source}:{line}" if source else "")
            for line, raw in split_messages(data)
        ]

    def check_message(self, data: bytes, line: int = 1, source: str = "") -> MessageOutcome:
        """One message: never raises for bad input; a message that cannot be read is rejected."""
        try:
            raw = parse_message(data, line)
            parsed = read_message(raw)
        except HL7ParseError as exc:
            return MessageOutcome([self._rejected(data, exc, source)], error=exc)
        outcome = self.check_parsed(parsed, source)
        outcome.raw = raw
        return outcome

    def check_parsed(self, parsed: ParsedMessage, source: str = "") -> MessageOutcome:
        header = parsed.header
        kind = header.message_type
        keys = parsed.patient.keys()
        if kind in RESULT_TYPES:
            recorded = self._record_results(parsed, keys)
            what = (
                f"{recorded} final result(s) recorded in the patient's history"
                if recorded
                else "no final imaging result to record"
            )
            return MessageOutcome(
                [
                    self._plain(
                        parsed,
                        source,
                        f"{header.type_label} result: {what}; results are not evaluated",
                    )
                ],
                parsed=parsed,
                recorded=recorded,
            )
        if kind not in ORDER_TYPES:
            return MessageOutcome(
                [self._plain(parsed, source, f"{header.type_label or kind} is not an order")],
                parsed=parsed,
            )
        if not parsed.orders:
            return MessageOutcome(
                [self._plain(parsed, source, "the message holds no order")], parsed=parsed
            )
        facts = [self.extract(o, parsed, parsed.orders) for o in parsed.orders]
        recorded = 0
        for order, f in zip(parsed.orders, facts, strict=True):  # history first: same message
            if order.order_status == "CM" and f.procedure_class in _HISTORY_CLASSES and keys:
                self.history.add(keys, self._entry(order, f, header.control_id, "completed-order"))
                recorded += 1
        past = self.history.entries(keys) if keys else []
        results = [
            self.evaluate(parsed, order, f, past, source)
            for order, f in zip(parsed.orders, facts, strict=True)
        ]
        return MessageOutcome(results, parsed=parsed, orders=list(parsed.orders), recorded=recorded)

    def extract(
        self, order: Order, parsed: ParsedMessage, siblings: list[Order] | None = None
    ) -> OrderFacts:
        """The facts of *order*, reading at most the site's text limit."""
        return extract(order, parsed, self.kn, self.today(), siblings, self.site.max_text_chars)

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(
        self,
        parsed: ParsedMessage,
        order: Order,
        facts: OrderFacts,
        history: list[HistoryEntry],
        source: str = "",
    ) -> CheckResult:
        """The verdict for one order, given its facts and the patient's history."""
        result = self._base(parsed, source)
        result.placer_order_number = order.placer_number
        result.filler_order_number = order.filler_number
        result.ordering_provider = order.ordering_provider
        result.facts = facts
        scoped, why = in_scope(order, facts)
        if not scoped:
            result.verdict = "no-criteria-apply"
            result.reason = f"Not evaluated: {why}.{_left_out(facts)}"
            return result
        meta = self.kn.guideline.guideline
        ctx = RuleContext(
            facts=facts,
            history=history,
            site=self.site,
            knowledge=self.kn,
            red_flags=facts.red_flags(meta.red_flag_size_cm),
        )
        findings = run_rules(ctx)
        result.in_scope = True
        preferred_key = "MRI_WWO"
        reasons: list[str] = []
        for f in findings:
            rule = self.kn.rule(f.rule_id)
            result.rule_ids.append(
                f.rule_id if f.exception is None else f"{f.rule_id}.{f.exception}"
            )
            if f.exception is not None:
                exc = rule.exceptions[f.exception]
                result.advice.append(
                    Advice(
                        code=f.exception,
                        text=f"{exc.advice} ({f.detail})",
                        citations=self.kn.cite(exc.citations),
                    )
                )
                preferred_key = exc.preferred
                reasons.append(exc.title)
            elif f.kind == "flag":
                # The action a flag asks for goes in its reason: `advice` holds only the
                # rules that do not change the verdict (design.md contract).
                result.flags.append(
                    Flag(
                        code=f.rule_id,
                        severity=rule.severity,
                        reason=f"{rule.reason} Found: {f.detail}. {rule.advice}",
                        citations=self.kn.cite(rule.citations),
                    )
                )
                preferred_key = rule.preferred or preferred_key
                reasons.append(f"{rule.title}: {f.detail}")
            else:
                result.advice.append(
                    Advice(
                        code=f.rule_id,
                        text=f"{rule.advice} ({f.detail})",
                        citations=self.kn.cite(rule.citations),
                    )
                )
        result.verdict = "not-appropriate" if result.flags else "appropriate"
        result.preferred_procedure = _procedure(self.kn.guideline.procedures[preferred_key])
        result.protocol = self._protocol(facts, kind_of(preferred_key))
        flags_txt = "; ".join(reasons) if reasons else "no flag"
        red = ", ".join(ctx.red_flags) or "none stated"
        result.reason = (
            f"In scope: {why}. {flags_txt[0].upper()}{flags_txt[1:]}. Red flags: {red}."
            f"{_unclear_mri(ctx)}{_left_out(facts)}"
        )
        return result

    def _protocol(self, facts: OrderFacts, kind: ProtocolKind) -> list[str]:
        active = conditions(facts)
        return [s.text for s in self.kn.guideline.protocol[kind] if s.when in active]

    # -- history -----------------------------------------------------------------------------
    def _record_results(self, parsed: ParsedMessage, keys: list[str]) -> int:
        count = 0
        for order in parsed.orders:
            # A result message may carry several patients: each group under its own PID.
            order_keys = order.patient.keys() if order.patient is not None else keys
            if not order_keys:
                continue
            # OBR-25, else the OBX-11s (a result that says only there that it is preliminary)
            if (order.result_status or order.observation_status) not in FINAL_RESULT:
                continue
            f = self.extract(order, parsed)
            if f.procedure_class in _HISTORY_CLASSES:
                self.history.add(
                    order_keys, self._entry(order, f, parsed.header.control_id, "result")
                )
                count += 1
        return count

    @staticmethod
    def _entry(
        order: Order,
        facts: OrderFacts,
        control_id: str,
        source: Literal["result", "completed-order"],
    ) -> HistoryEntry:
        return HistoryEntry(
            procedure_class=facts.procedure_class,
            region=facts.region,
            laterality=facts.laterality,
            at=order.ordered_at,
            control_id=control_id,
            source=source,
        )

    # -- results without evaluation ----------------------------------------------------------
    def _base(self, parsed: ParsedMessage, source: str) -> CheckResult:
        h = parsed.header
        return CheckResult(
            message_control_id=h.control_id,
            message_type=h.type_label,
            verdict="no-criteria-apply",
            guideline_version=self.kn.version,
            sending_application=h.sending_application,
            sending_facility=h.sending_facility,
            source=source,
        )

    def _plain(self, parsed: ParsedMessage, source: str, reason: str) -> CheckResult:
        result = self._base(parsed, source)
        if parsed.orders:
            result.placer_order_number = parsed.orders[0].placer_number
            result.filler_order_number = parsed.orders[0].filler_number
        result.reason = f"Not evaluated: {reason}."
        return result

    def _rejected(self, data: bytes, exc: HL7ParseError, source: str) -> CheckResult:
        where = f"{source}: " if source else ""
        head = peek_msh(data)
        return CheckResult(
            message_control_id=head.control_id,
            message_type=head.message_type,
            verdict="rejected",
            guideline_version=self.kn.version,
            error=f"{where}{exc}",
            reason="The message could not be read.",
            source=source,
        )


_NEEDS_NO_MRI = {"ct": "CT_BEFORE_MRI", "biopsy": "BIOPSY_BEFORE_MRI", "pet": "PET_INITIAL"}


def _unclear_mri(ctx: RuleContext) -> str:
    """The reason's note when the rule that needs "no MRI yet" was not evaluated, or ""."""
    rule = _NEEDS_NO_MRI.get(ctx.facts.procedure_class)
    study = ctx.unclear_mri if rule is not None else None
    if study is None:
        return ""
    return (
        f' Not evaluated: {rule}, since the order names an MRI ("{study.words}") without'
        " saying whether it was done."
    )


def _left_out(facts: OrderFacts) -> str:
    """The reason's note on text beyond the per-order limit, or ""."""
    if not facts.text_left_out:
        return ""
    return (
        f" Only the first part of the order's text was read: {facts.text_left_out:,} characters"
        " beyond the limit were not (ORDERCHECK_MAX_TEXT_CHARS)."
    )


def _procedure(p: ProcedureDef) -> Procedure:
    return Procedure(code=p.code, system=p.system, text=p.text)
