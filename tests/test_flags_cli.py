"""`ordercheck flags ...` and `ordercheck review` on the real Redis (marked `redis`), plus the
in-memory default. The CLI and the page share the query layer: same filters, same counts.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CONTRACT_FIELDS
from tests.reviewdata import FLAGGED, populate
from worker.cli import main
from worker.records import AdvisoryRecord
from worker.review.present import CSV_COLUMNS
from worker.store import RedisStore

# design.md: the fields of `check --json` plus these four.
CONTRACT_KEYS = CONTRACT_FIELDS | {"id", "received_at", "delivery", "disposition"}


@pytest.fixture
def stored(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[RedisStore, dict[str, AdvisoryRecord]]]:
    import redis

    monkeypatch.setenv("ORDERCHECK_REDIS_URL", redis_url)
    client = redis.Redis.from_url(redis_url)
    store = RedisStore(client)
    yield store, populate(store)
    client.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["flags", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.redis
def test_list_json_is_the_contract(stored: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "list", "--json")
    assert code == 0 and "note" not in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["message_control_id"] for r in rows] == ["C1", "C2", "C3", "C4", "C5", "C6", "C7"]
    assert all(set(r) >= CONTRACT_KEYS for r in rows)
    assert "facts" not in rows[0] and rows[0]["flags"][0]["code"] == "CT_BEFORE_MRI"


@pytest.mark.redis
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("--rule", "CT_BEFORE_MRI"), ["C1", "C2", "C6"]),
        (("--provider", "smith", "--rule", "CT_BEFORE_MRI"), ["C2", "C6"]),
        (("--facility", "CLINIC"), ["C2", "C7"]),
        (("--verdict", "appropriate"), ["C3"]),
        (("--delivery", "undelivered"), ["C4"]),
        (("--disposition", "open", "--limit", "2"), ["C1", "C2"]),
        (("--limit", "2", "--offset", "5"), ["C6", "C7"]),
    ],
)
def test_list_filters(
    stored: Any, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], expected: list[str]
) -> None:
    code, out, _ = run(capsys, "list", "--json", *argv)
    assert code == 0
    assert [json.loads(line)["message_control_id"] for line in out.splitlines()] == expected


@pytest.mark.redis
def test_list_table_and_dates(stored: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from datetime import datetime, timedelta

    from worker.review.filters import local_tz

    code, out, _ = run(capsys, "list", "--rule", "PET_INITIAL")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["ID", "RECEIVED", "VERDICT"]
    assert len(lines) == 2 and "PET_INITIAL" in lines[1] and stored[1]["C7"].id in lines[1]
    since = (datetime.now(local_tz()).date() - timedelta(days=7)).isoformat()
    code, out, _ = run(capsys, "list", "--json", "--since", since)
    assert len(out.splitlines()) == 5
    code, out, err = run(capsys, "list", "--limit", "3")
    assert len(out.splitlines()) == 4 and "more than 3" in err


@pytest.mark.redis
def test_show_has_facts_evidence_audit_and_raw(
    stored: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    _, recs = stored
    code, out, _ = run(capsys, "show", recs["C3"].id)
    assert code == 0
    for part in (
        "verdict       appropriate (in scope)",
        "Suspected haemorrhage",
        "pacemaker",
        "mri_contraindication = pacemaker <- OBR-31",
        "Protocol:",
        "no decision yet",
        "PID|1||PAT003^^^HOSP^MR",
        "OBX|1|CWE|76515-6",
    ):
        assert part in out, part
    code, out, _ = run(capsys, "show", "--json", recs["C3"].id)
    assert json.loads(out)["result"]["facts"]["evidence"][0]["source"] == "OBR-4 code (CPT4)"


@pytest.mark.redis
def test_resolve_appends_and_refuses_incomplete(
    stored: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    store, recs = stored
    rid = recs["C1"].id
    code, out, err = run(capsys, "resolve", rid, "--as", "overridden")
    assert code == 2 and out == ""
    assert err.strip().endswith(
        "overridden needs a reason code: patient-specific, "
        "mri-unavailable, specialist-request, prior-imaging-elsewhere, "
        "contraindication-not-coded, other"
    )
    assert "Traceback" not in err and store.get(rid).audit == []
    code, out, err = run(capsys, "resolve", "nope", "--as", "accepted")
    assert code == 2 and "no advisory with id 'nope'" in err
    code, out, _ = run(capsys, "resolve", rid, "--as", "accepted", "--reviewer", "carol")
    assert code == 0
    code, out, _ = run(
        capsys,
        "resolve",
        rid,
        "--as",
        "overridden",
        "--reason",
        "specialist-request",
        "--text",
        "sarcoma team asked",
        "--reviewer",
        "dan",
    )
    assert code == 0 and "2 decision(s) in the audit trail; disposition now overridden" in out
    rec = store.get(rid)
    assert [(d.state, d.reviewer) for d in rec.audit] == [
        ("accepted", "carol"),
        ("overridden", "dan"),
    ]
    assert rec.audit[1].reason_code == "specialist-request"
    code, out, _ = run(capsys, "list", "--json", "--disposition", "overridden")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [rid]
    with pytest.raises(SystemExit) as exc:  # argparse: unknown code, exit 2
        main(["flags", "resolve", rid, "--as", "overridden", "--reason", "bored"])
    assert exc.value.code == 2


@pytest.mark.redis
def test_export_csv(stored: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _, recs = stored
    run(
        capsys,
        "resolve",
        recs["C2"].id,
        "--as",
        "false-positive",
        "--text",
        'a, "quoted"\nnote',
        "--reviewer",
        "erin",
    )
    code, out, _ = run(capsys, "export", "--csv", "--rule", "CT_BEFORE_MRI")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and tuple(rows[0]) == CSV_COLUMNS
    assert [r["message_control_id"] for r in rows] == ["C1", "C2", "C6"]
    assert rows[1]["disposition"] == "false-positive" and rows[1]["reviewer"] == "erin"
    assert rows[1]["review_text"] == 'a, "quoted"\nnote' and rows[1]["flags"] == "CT_BEFORE_MRI"
    with pytest.raises(SystemExit):
        main(["flags", "export"])  # --csv is required


@pytest.mark.redis
def test_summary_matches_the_page(stored: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _, recs = stored
    run(capsys, "resolve", recs["C4"].id, "--as", "overridden", "--reason", "patient-specific")
    code, out, _ = run(capsys, "summary", "--json")
    data = json.loads(out)
    assert code == 0 and data["flagged"] == len(FLAGGED) and data["overridden"] == 1
    assert data["override_share"] == pytest.approx(0.2)
    code, out, _ = run(capsys, "summary")
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert total.split()[-3:] == ["5", "1", "20%"]
    assert "5678 SMITH ANNA" in out


@pytest.mark.redis
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("list", "--since", "last week"), "since: 'last week' is not a date"),
        (("list", "--since", "2026-11-20", "--until", "2026-11-01"), "range ends before"),
        (("list", "--limit", "-1"), "--limit and --offset"),
    ],
)
def test_bad_arguments_exit_2_without_traceback(
    stored: Any, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err and out == ""


def test_redis_down_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ORDERCHECK_REDIS_URL", "redis://127.0.0.1:1/0")
    code, _, err = run(capsys, "list")
    assert code == 2 and "the advisory store (Redis) failed" in err and "Traceback" not in err


def test_without_redis_url_the_store_is_empty_and_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ORDERCHECK_REDIS_URL", raising=False)
    code, out, err = run(capsys, "list", "--json")
    assert code == 0 and out == "" and "ORDERCHECK_REDIS_URL is not set" in err


# -- ordercheck review -------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.slow
def test_review_command_serves_the_login_page(stored: Any, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ORDERCHECK_REVIEW_USERS": '{"alice": "pw"}',
        "ORDERCHECK_REVIEW_PORT": "0",
    }
    with subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "review", "--host", "127.0.0.1"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    ) as proc:
        try:
            assert proc.stderr is not None
            deadline, url = time.monotonic() + 15, ""
            while time.monotonic() < deadline and not url:
                line = proc.stderr.readline()
                if "serving on " in line:
                    url = line.split("serving on ")[1].split()[0]
            assert url.startswith("http://127.0.0.1:"), "the server did not say where it listens"
            with urllib.request.urlopen(url + "summary") as resp:  # redirected to the login form
                body = resp.read().decode()
            assert resp.url.startswith(url + "login") and 'name="password"' in body
            assert "PAT001" not in body
        finally:
            proc.terminate()
            proc.wait(10)


def test_review_command_notes_missing_redis_and_bad_port(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ORDERCHECK_REDIS_URL", raising=False)
    monkeypatch.delenv("ORDERCHECK_REVIEW_USERS", raising=False)
    monkeypatch.delenv("ORDERCHECK_REVIEW_TOKEN", raising=False)
    import worker.review.server as server

    class Fake:
        def __init__(self, app: Any, host: str, port: int) -> None:
            self.url = f"http://{host}:{port}"

        def run(self) -> None:
            pass

    monkeypatch.setattr(server, "ReviewServer", Fake)
    assert main(["review", "--port", "8099"]) == 0
    err = capsys.readouterr().err
    assert "ORDERCHECK_REDIS_URL is not set" in err and "no login is configured" in err
    assert "serving on http://127.0.0.1:8099/" in err
    assert main(["review", "--port", "70000"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_the_stream_entry_text_is_the_flags_json_object() -> None:
    """The worker writes flags_json_text() (pydantic's serialiser) where the review and
    `flags list --json` read flags_json(): the same object, non-ASCII text included."""
    from tests.reviewdata import build_records

    records = build_records()
    assert records
    for rec in records:
        rec = rec.model_copy(
            update={"result": rec.result.model_copy(update={"reason": "Größe ≥ 5 cm"})}
        )
        assert json.loads(rec.flags_json_text()) == json.loads(json.dumps(rec.flags_json()))
