"""How an advisory is shown: HL7 segment lines, table rows, CSV rows and the detail text.

Shared by the web page and `ordercheck flags`. The output holds patient data (raw HL7): it goes
to an authorised reader (the logged-in page, the operator's terminal), never to a log.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from datetime import datetime
from typing import TextIO

from worker.records import OVERRIDE_REASONS, AdvisoryRecord, Disposition
from worker.review.filters import local_tz
from worker.review.summary import driving_facts

_SEGMENT_END = re.compile(r"\r\n|\r|\n")
_FRAMING = str.maketrans("", "", "\x0b\x1c")
# What a terminal or a spreadsheet could act on: C0 controls, DEL, C1 controls (CSI is 0x9b),
# and the bidirectional overrides that reorder what is shown ("Trojan Source").
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_KEEP_NEWLINE = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
# OWASP "CSV Injection": a cell starting with one of these is read as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

CSV_COLUMNS = (
    "id",
    "received_at",
    "verdict",
    "flags",
    "advice",
    "message_control_id",
    "message_type",
    "placer_order_number",
    "ordering_provider",
    "sending_application",
    "sending_facility",
    "procedure",
    "preferred_procedure",
    "in_scope",
    "guideline_version",
    "delivery",
    "disposition",
    "reviewer",
    "reviewed_at",
    "override_reason",
    "review_text",
    "missed_rule",
)


def printable(text: str) -> str:
    """*text* without control characters (ESC sequences, NUL, bidi overrides): safe to print on
    a terminal. Line breaks go too: a value is one line."""
    return _CONTROL.sub("", text)


_C1 = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def json_safe(text: str) -> str:
    """JSON text (json.dumps with ensure_ascii=False) with the controls it leaves raw (DEL, C1,
    bidi overrides) written as \\u escapes: the same JSON value, harmless on a terminal."""
    return _C1.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def csv_cell(value: str) -> str:
    """A CSV value a spreadsheet will not run: control characters dropped (line breaks kept)
    and, as OWASP's CSV Injection page says, a value starting with = + - @ tab or CR gets a
    leading single quote. Write the cells quoted (write_csv)."""
    value = value.replace("\r\n", "\n")
    if value.startswith(_FORMULA_START):
        return "'" + _CONTROL_KEEP_NEWLINE.sub("", value)
    value = _CONTROL_KEEP_NEWLINE.sub("", value)
    return "'" + value if value.startswith(_FORMULA_START) else value


def write_csv(records: Iterable[AdvisoryRecord], out: TextIO) -> int:
    """The CSV export (`flags export --csv` and the page's button): a header and one row per
    record, every field quoted and neutralised (csv_cell); returns the number of rows."""
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_ALL)
    writer.writerow(CSV_COLUMNS)
    n = 0
    for rec in records:
        writer.writerow([csv_cell(v) for v in csv_row(rec)])
        n += 1
    return n


def hl7_segments(raw: str) -> list[str]:
    """The segments of an HL7 message, one per item (MLLP framing and blank lines dropped)."""
    return [s for s in _SEGMENT_END.split(raw.translate(_FRAMING)) if s.strip()]


def local_time(when: datetime | None) -> str:
    """A time as shown to a reviewer: local, to the minute."""
    if when is None:
        return ""
    return (
        when.astimezone(local_tz()).strftime("%Y-%m-%d %H:%M")
        if when.tzinfo
        else when.strftime("%Y-%m-%d %H:%M")
    )


def rules_of(rec: AdvisoryRecord) -> str:
    return " ".join(f.code for f in rec.result.flags)


def procedure_of(rec: AdvisoryRecord) -> str:
    facts = rec.result.facts
    if facts is None:
        return ""
    return facts.procedure_text or facts.procedure_code or facts.procedure_class


def reason_label(code: str) -> str:
    return OVERRIDE_REASONS.get(code, code)


def last_decision(rec: AdvisoryRecord) -> Disposition | None:
    return next((d for d in reversed(rec.audit) if d.kind == "decision"), None)


def csv_row(rec: AdvisoryRecord) -> list[str]:
    """One CSV row in CSV_COLUMNS order."""
    r = rec.result
    last = last_decision(rec)
    pp = r.preferred_procedure
    return [
        rec.id,
        rec.received_at.isoformat(),
        r.verdict,
        " ".join(f.code for f in r.flags),
        " ".join(a.code for a in r.advice),
        r.message_control_id,
        r.message_type,
        r.placer_order_number,
        r.ordering_provider,
        r.sending_application,
        r.sending_facility,
        procedure_of(rec),
        f"{pp.system} {pp.code} {pp.text}" if pp else "",
        "yes" if r.in_scope else "no",
        r.guideline_version,
        rec.delivery,
        rec.disposition,
        last.reviewer if last else "",
        last.at.isoformat() if last else "",
        last.reason_code if last else "",
        last.text if last else "",
        last.rule if last else "",
    ]


TABLE_HEAD = (
    "ID",
    "RECEIVED",
    "VERDICT",
    "FLAGS",
    "PROVIDER",
    "FACILITY",
    "DELIVERY",
    "DISPOSITION",
)


def table_row(rec: AdvisoryRecord) -> tuple[str, ...]:
    """One line of `flags list` (control characters removed: it goes to a terminal)."""
    r = rec.result
    return tuple(
        printable(c)
        for c in (
            rec.id,
            local_time(rec.received_at),
            r.verdict,
            rules_of(rec) or "-",
            r.ordering_provider or "-",
            r.sending_facility or "-",
            rec.delivery,
            rec.disposition,
        )
    )


def format_table(rows: list[tuple[str, ...]], head: tuple[str, ...] = TABLE_HEAD) -> str:
    """A plain text table with columns as wide as their widest cell."""
    widths = [max(len(c) for c in col) for col in zip(head, *rows, strict=True)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (head, *rows)
    ]
    return "\n".join(lines) + "\n"


def decision_line(d: Disposition) -> str:
    reason = f" ({d.reason_code}: {reason_label(d.reason_code)})" if d.reason_code else ""
    text = f" \u2014 {d.text}" if d.text else ""
    state = "protocolled" if d.kind == "protocolled" else d.state
    rule = f" flag {d.rule}" if d.rule else ""
    return f"{local_time(d.at)}  {d.reviewer}: {state}{rule}{reason}{text}"


def detail_text(rec: AdvisoryRecord) -> str:
    """Everything about one advisory, as `ordercheck flags show` prints it."""
    r = rec.result
    out: list[str] = [
        f"Advisory {rec.id}",
        f"  received      {local_time(rec.received_at)}",
        f"  message       {r.message_type or '?'} {r.message_control_id or '?'} from "
        f"{r.sending_application or '?'}/{r.sending_facility or '?'}",
        f"  order         {r.placer_order_number or '-'}"
        + (f" (filler {r.filler_order_number})" if r.filler_order_number else ""),
        f"  provider      {r.ordering_provider or '-'}",
        f"  procedure     {procedure_of(rec) or '-'}",
        f"  verdict       {r.verdict}" + (" (in scope)" if r.in_scope else ""),
        f"  guideline     {r.guideline_version}  rules: {' '.join(r.rule_ids) or '-'}",
        f"  delivery      {rec.delivery}"
        + (f" to {rec.destination}" if rec.destination else "")
        + (f", {rec.delivery_attempts} attempt(s)" if rec.delivery_attempts else "")
        + (f": {rec.delivery_error}" if rec.delivery_error else ""),
        f"  disposition   {rec.disposition}",
    ]
    if r.error:
        out.append(f"  error         {r.error}")
    if r.reason:
        out += ["", f"Reason: {r.reason}"]
    for f in r.flags:
        out += ["", f"FLAG {f.code} ({f.severity})", f"  {f.reason}"]
        out += [f"  source: {c}" for c in f.citations]
    for a in r.advice:
        out += ["", f"Advice {a.code}", f"  {a.text}"]
        out += [f"  source: {c}" for c in a.citations]
    if r.preferred_procedure:
        p = r.preferred_procedure
        out += ["", f"Preferred procedure: {p.system} {p.code} {p.text}"]
    if r.protocol:
        out += ["", "Protocol:"] + [f"  {i}. {s}" for i, s in enumerate(r.protocol, 1)]
    if r.facts is not None:
        out += ["", "Facts driving the protocol:"]
        for row in driving_facts(r.facts):
            src = f"  [{'; '.join(row.sources)}]" if row.sources else ""
            out.append(f"  {row.label:<24}{row.value}{src}")
        out += ["", "Evidence (fact = value <- where it was read):"]
        out += [f"  {e.fact} = {e.value} <- {e.source}" for e in r.facts.evidence] or ["  none"]
    out += ["", "Audit trail:"]
    out += [f"  {decision_line(d)}" for d in rec.audit] or ["  no decision yet"]
    out += ["", "HL7 received:"]
    out += [f"  {s}" for s in hl7_segments(rec.raw_in)] or ["  (not kept)"]
    out += ["", "HL7 sent:"]
    out += [f"  {s}" for s in hl7_segments(rec.raw_out)] or ["  (nothing sent)"]
    # Every field may come from an order: no control character reaches the terminal.
    return "\n".join(printable(line) for line in out) + "\n"
