"""`ordercheck replay`: streamed replay of archived HL7, its counts, JSON mode, unreadable files."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import cast

import pytest

from tests import replaycorpus
from worker.cli import main
from worker.commands import replay
from worker.history import InMemoryHistory
from worker.models import HistoryEntry

N = 5_000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "day.hl7"
    with path.open("wb") as out:
        replaycorpus.write_corpus(out, N)
    return path


def _expected_summary(n: int) -> dict[str, object]:
    kinds, by_provider = replaycorpus.expected(n)
    flagged, appropriate = kinds["flagged"], kinds["appropriate"]
    return {
        "messages": n,
        "orders": flagged + appropriate + kinds["out-of-scope"],
        "in_scope": flagged + appropriate,
        "verdicts": {
            "appropriate": appropriate,
            "not-appropriate": flagged,
            "no-criteria-apply": kinds["out-of-scope"],
        },
        "flags_by_rule": {"CT_BEFORE_MRI": flagged},
        "advice_by_rule": {"RADIOGRAPH_FIRST": flagged, "REFER_SARCOMA_CENTRE": flagged},
        "flags_by_provider": by_provider,
        "rejected": kinds["garbage"],
        "not_orders": kinds["result"],
        "oversized": 0,
        "unreadable_files": 0,
    }


def _replay_json(paths: list[str]) -> tuple[int, dict[str, object]]:
    out = io.StringIO()
    code = replay.run_replay(paths, as_json=True, out=out)
    return code, json.loads(out.getvalue())


def test_counts_of_a_generated_day(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay, "CHUNK_BYTES", 4096)  # many chunk boundaries inside messages
    code, summary = _replay_json([str(corpus)])
    assert code == 0
    want = _expected_summary(N)
    assert {k: summary[k] for k in want} == want
    assert summary["files"] == [str(corpus)]


def test_files_share_the_run_and_line_ends_do_not_matter(corpus: Path, tmp_path: Path) -> None:
    lf = tmp_path / "lf.hl7"
    with lf.open("wb") as out:
        replaycorpus.write_corpus(out, 100, newline=b"\r\n")
    code, summary = _replay_json([str(corpus), str(lf)])
    assert code == 0
    assert summary["messages"] == N + 100
    assert (
        summary["rejected"]
        == cast(int, _expected_summary(N)["rejected"]) + replaycorpus.expected(100)[0]["garbage"]
    )


def test_cli_json_is_one_object(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--json", "--no-progress", str(corpus)]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1
    assert json.loads(out)["orders"] == _expected_summary(N)["orders"]


def test_cli_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "small.hl7"
    with path.open("wb") as corpus:
        replaycorpus.write_corpus(corpus, 50)
    assert main(["replay", str(path)]) == 0
    out = capsys.readouterr().out
    for label in (
        "orders",
        "in scope",
        "not-appropriate",
        "rejected",
        "Flags by rule",
        "CT_BEFORE_MRI",
        "REFER_SARCOMA_CENTRE",
        "1234 ORDERING DOC",
    ):
        assert label in out
    assert "\x1b[" not in out  # no colour codes when stdout is not a terminal


@pytest.mark.parametrize("bad", ["missing.hl7", "."])
def test_unreadable_file_exits_2_and_says_why(
    bad: str, tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / bad)
    assert main(["replay", "--json", path, str(corpus)]) == 2
    captured = capsys.readouterr()
    assert f"ordercheck: cannot read {path}:" in captured.err
    summary = json.loads(captured.out)
    assert summary["unreadable_files"] == 1
    assert summary["messages"] == N  # the readable file was still replayed


def test_oversized_message_is_rejected_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay, "MAX_MESSAGE_BYTES", 2048)
    monkeypatch.setattr(replay, "CHUNK_BYTES", 512)
    path = tmp_path / "big.hl7"
    big = replaycorpus.message(0, "flagged").replace(b"Left thigh", b"x" * 10_000 + b" Left thigh")
    path.write_bytes(
        replaycorpus.message(1, "appropriate") + big + replaycorpus.message(2, "out-of-scope")
    )
    code, summary = _replay_json([str(path)])
    assert code == 0
    assert (summary["messages"], summary["orders"], summary["rejected"], summary["oversized"]) == (
        3,
        2,
        1,
        1,
    )


def test_history_forgets_the_least_recently_used_patient() -> None:
    history = InMemoryHistory(max_patients=2)
    entry = HistoryEntry(procedure_class="mri", region="thigh")
    history.add(["A"], entry)
    history.add(["B"], entry)
    assert history.entries(["A"]) == [entry]  # A is now the most recently used
    history.add(["C"], entry)
    assert len(history) == 2
    assert history.entries(["B"]) == []
    assert history.entries(["A"]) == [entry] and history.entries(["C"]) == [entry]
