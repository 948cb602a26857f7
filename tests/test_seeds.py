"""The seed corpus and the peer samples through `ordercheck check --json`, in one run each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CONTRACT_FIELDS, ROOT, SEEDS, SHARED
from worker.cli import main


def run_json(paths: list[Path], capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    code = main(["check", "--json", *map(str, paths)])
    out = capsys.readouterr().out
    assert code == 0
    return [json.loads(line) for line in out.splitlines()]


def _index(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_file: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_file.setdefault(Path(r["source"].rsplit(":", 1)[0]).name, []).append(r)
    return by_file


def _check_expected(expected: dict[str, Any], results: list[dict[str, Any]]) -> list[str]:
    by_file = _index(results)
    problems = []
    for key, exp in expected.items():
        candidates = by_file.get(exp["file"], [])
        if exp.get("placer"):
            candidates = [r for r in candidates if r["placer_order_number"] == exp["placer"]]
        if not candidates:
            problems.append(f"{key}: no result")
            continue
        r = candidates[0]
        flags = {f["code"] for f in r["flags"]}
        advice = {a["code"] for a in r["advice"]}
        if r["verdict"] != exp["verdict"]:
            problems.append(f"{key}: verdict {r['verdict']} != {exp['verdict']} ({r['reason']})")
        if exp.get("control_id") and r["message_control_id"] != exp["control_id"]:
            problems.append(f"{key}: control id {r['message_control_id']}")
        for code in exp.get("flags", []):
            if code not in flags:
                problems.append(f"{key}: flag {code} missing (got {sorted(flags)})")
        for code in exp.get("not_flags", []):
            if code in flags:
                problems.append(f"{key}: flag {code} must not be raised")
        for code in exp.get("advice", []):
            if code not in advice:
                problems.append(f"{key}: advice {code} missing (got {sorted(advice)})")
        for code in exp.get("not_advice", []):
            if code in advice:
                problems.append(f"{key}: advice {code} must not be given")
    return problems


def test_seeds_give_the_expected_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    expected = json.loads((SEEDS / "expected.json").read_text())
    results = run_json(sorted(SEEDS.glob("*.hl7")), capsys)
    assert _check_expected(expected, results) == []


def test_every_result_has_the_contract_fields(capsys: pytest.CaptureFixture[str]) -> None:
    for r in run_json(sorted(SEEDS.glob("*.hl7")), capsys):
        assert set(r) >= CONTRACT_FIELDS
        assert r["verdict"] in ("appropriate", "not-appropriate", "no-criteria-apply", "rejected")
        assert (r["error"] is not None) == (r["verdict"] == "rejected")
        for f in r["flags"]:
            assert {"code", "severity", "reason", "citations"} <= set(f) and f["citations"]
        for a in r["advice"]:
            assert {"code", "text"} <= set(a)
        if r["verdict"] == "not-appropriate":
            assert r["flags"] and r["preferred_procedure"]["code"] == "73720"
        if r["verdict"] == "no-criteria-apply":
            assert r["flags"] == [] and r["preferred_procedure"] is None


def test_every_seed_is_described_in_the_readme() -> None:
    readme = (SEEDS / "README.md").read_text()
    missing = [p.name for p in SEEDS.glob("*.hl7") if p.name not in readme]
    assert missing == []


@pytest.mark.skipif(not (SHARED / "peer-samples").is_dir(), reason="shared/ not beside the repo")
def test_peer_samples_read_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    peer = SHARED / "peer-samples"
    expected = json.loads((peer / "expected.json").read_text())
    results = run_json(sorted(peer.glob("*.hl7")), capsys)
    assert _check_expected(expected, results) == []
    assert all(r["error"] is None for r in results)


def test_unreadable_file_exits_2_and_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "--json", str(ROOT / "no-such-file.hl7"), str(SEEDS / "50-ct-chest.hl7")])
    captured = capsys.readouterr()
    assert code == 2
    assert "no-such-file.hl7" in captured.err
    assert len(captured.out.splitlines()) == 1  # the readable file still gets its result
