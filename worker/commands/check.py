"""`ordercheck check [--json] PATH...`: the design.md contract."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from worker.check import Checker
from worker.errors import GuidelineError
from worker.history import InMemoryHistory
from worker.models import CheckResult
from worker.protocols import ProtocolChoice
from worker.settings import Settings

CONTRACT_EXCLUDE = {"facts"}


def result_json(result: CheckResult) -> str:
    return json.dumps(
        result.model_dump(mode="json", exclude=CONTRACT_EXCLUDE),
        ensure_ascii=False,
        separators=(",", ":"),
    )


def render_text(result: CheckResult, out: TextIO, protocol: ProtocolChoice | None = None) -> None:
    """A readable summary of one result; *protocol*: its protocol variant and site code."""
    order = f" order {result.placer_order_number}" if result.placer_order_number else ""
    head = (
        f"{result.source or '-'}  {result.message_type or '?'} "
        f"{result.message_control_id or '?'}{order}: {result.verdict.upper()}"
    )
    out.write(head + "\n")
    if result.error:
        out.write(f"  error: {result.error}\n")
    for flag in result.flags:
        out.write(f"  FLAG {flag.code}: {flag.reason}\n")
        for c in flag.citations:
            out.write(f"    source: {c}\n")
    for advice in result.advice:
        out.write(f"  advice {advice.code}: {advice.text}\n")
    if result.preferred_procedure:
        p = result.preferred_procedure
        out.write(f"  preferred: {p.system} {p.code} {p.text}\n")
    if result.protocol:
        out.write(_protocol_head(protocol) + "\n")
        if protocol is not None and protocol.note:
            out.write(f"    note: {protocol.note}\n")
        for i, step in enumerate(result.protocol, start=1):
            out.write(f"    {i}. {step}\n")
    if result.reason and not result.error:
        out.write(f"  {result.reason}\n")


def _protocol_head(protocol: ProtocolChoice | None) -> str:
    if protocol is None:
        return "  protocol:"
    code = protocol.code
    ris = f", RIS code {code.code}" + (f" ({code.text})" if code.text else "") if code else ""
    return f"  protocol: {protocol.variant}{ris}"


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    return Path(path).read_bytes()


def offline_checker(settings: Settings) -> Checker | None:
    """A checker sharing one in-memory history (check, replay); None, said on stderr, when the
    guideline or the site code map does not load."""
    from worker.guideline import load_knowledge

    try:
        knowledge = load_knowledge(settings.code_map, protocols=settings.protocols_file)
    except GuidelineError as exc:
        print(f"ordercheck: {exc}", file=sys.stderr)
        return None
    return Checker(knowledge, InMemoryHistory(), settings.site())


def run_check(paths: list[str], as_json: bool, settings: Settings | None = None) -> int:
    checker = offline_checker(settings or Settings())
    if checker is None:
        return 2
    status = 0
    out = sys.stdout
    for path in paths:
        try:
            data = _read(path)
        except OSError as exc:
            print(f"ordercheck: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
            status = 2
            continue
        label = "<stdin>" if path == "-" else path
        outcomes = checker.check_file_bytes(data, label)
        if not outcomes:
            print(f"ordercheck: {label}: no HL7 message found", file=sys.stderr)
        for outcome in outcomes:
            for result in outcome.results:
                if as_json:
                    out.write(result_json(result) + "\n")
                else:
                    render_text(result, out, checker.kn.protocol_choice(result))
    out.flush()
    return status
