"""One source of truth, two doors: every seed order with an expected verdict, sent as the
equivalent CDS Hooks request (tests/fhirseeds.py), gets the HL7 path's verdict, flags, advice,
preferred procedure and protocol, and the cards that say so."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import SEEDS
from tests.fhirseeds import SeedCase, seed_cases
from worker.cds.service import CdsService
from worker.guideline import Knowledge
from worker.models import CheckResult
from worker.store import MemoryStore

EXPECTED: dict[str, dict[str, Any]] = json.loads((SEEDS / "expected.json").read_text())
FILES = sorted({e["file"] for e in EXPECTED.values()})


def _summary(r: CheckResult) -> tuple[Any, ...]:
    return (
        r.verdict,
        r.in_scope,
        sorted(f.code for f in r.flags),
        sorted(a.code for a in r.advice),
        r.preferred_procedure.code if r.preferred_procedure else None,
        r.protocol,
        r.rule_ids,
    )


@pytest.fixture(scope="module")
def cases(knowledge: Knowledge) -> dict[str, list[SeedCase]]:
    """The whole corpus in order with one shared history, as test_seeds checks it."""
    return seed_cases(sorted(SEEDS.glob("*.hl7")), knowledge)


def test_every_seed_order_has_a_cds_request(cases: dict[str, list[SeedCase]]) -> None:
    placers = {(f, p) for f, cs in cases.items() for c in cs for p in c.placers}
    orders = [e for e in EXPECTED.values() if (e["file"], e.get("placer", "")) in placers]
    # Most of the corpus are orders; a file without an order (a result, an ACK) has no request.
    assert len(orders) >= 80


@pytest.mark.parametrize("file", FILES)
def test_the_cds_door_gives_the_hl7_verdicts(
    file: str, cases: dict[str, list[SeedCase]], knowledge: Knowledge
) -> None:
    service = CdsService(knowledge, MemoryStore())
    for case in cases[file]:
        ev = service.evaluate("order-sign", json.dumps(case.request).encode())
        assert ev.answer.status == 200, ev.answer.body
        assert [_summary(r) for r in ev.results] == [_summary(r) for r in case.hl7], case.placers
        cards = ev.answer.body["cards"]
        for i, hl7 in enumerate(case.hl7):
            ref = f"ServiceRequest/order-{i + 1}"
            mine = [c for c in cards if c["extension"]["ordercheck.verdict"]["draft"] == ref]
            warning = [c for c in mine if c["indicator"] == "warning"]
            info = [c["source"]["topic"]["code"] for c in mine if c["indicator"] == "info"]
            if not hl7.in_scope:
                assert mine == [], (file, hl7.placer_order_number)
                continue
            assert bool(warning) == (hl7.verdict == "not-appropriate"), hl7.placer_order_number
            for card in warning:
                assert card["extension"]["ordercheck.verdict"]["flags"] == [
                    f.code for f in hl7.flags
                ]
                create = card["suggestions"][0]["actions"][1]["resource"]
                assert create["code"]["coding"][0]["code"] == "73720"
            assert info == [a.code for a in hl7.advice]


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_the_cds_door_gives_the_expected_verdicts(
    key: str, cases: dict[str, list[SeedCase]], knowledge: Knowledge
) -> None:
    exp = EXPECTED[key]
    found = [
        (case, i)
        for case in cases[exp["file"]]
        for i, placer in enumerate(case.placers)
        if placer == exp.get("placer") or (not exp.get("placer") and i == 0)
    ]
    if not found:
        pytest.skip("not an order: no CDS request")
    case, i = found[0]
    ev = CdsService(knowledge, MemoryStore()).evaluate(
        "order-sign", json.dumps(case.request).encode()
    )
    r = ev.results[i]
    flags, advice = {f.code for f in r.flags}, {a.code for a in r.advice}
    assert r.verdict == exp["verdict"], r.reason
    assert set(exp.get("flags", [])) <= flags
    assert not set(exp.get("not_flags", [])) & flags
    assert set(exp.get("advice", [])) <= advice
    assert not set(exp.get("not_advice", [])) & advice
