"""Prior imaging as a structured fact (worker/imaging.py): what an order's text and the patient's
history say of each study, and whether it covers the order (guideline.md section 4: "no MRI of
that thigh", "no MRI yet")."""

from __future__ import annotations

from datetime import date
from importlib import resources
from pathlib import Path

import pytest

from tests.hl7build import order_message
from worker.check import Checker
from worker.guideline import Knowledge, load_knowledge
from worker.history import InMemoryHistory
from worker.imaging import MAX_MENTIONS, find_date, mri_mentions
from worker.models import PriorStudy, TextSource
from worker.text import largest_size_cm

ORDER_DATE = date(2026, 11, 20)
BIOPSY = "20206^BIOPSY MUSCLE PERCUTANEOUS^CPT4"


def studies(text: str, kn: Knowledge, side: str = "left") -> list[PriorStudy]:
    return mri_mentions(TextSource(source="OBR-31", text=text), kn, ORDER_DATE, side)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("phrase", "when", "future"),
    [
        ("10/28", date(2026, 10, 28), False),
        ("12/18", date(2026, 12, 18), True),
        ("on 11.11.2026", date(2026, 11, 11), False),
        ("2026-12-01", date(2026, 12, 1), True),
        ("3/14/25", date(2025, 3, 14), False),
        ("09/2026", date(2026, 9, 1), False),
        ("dec 4", date(2026, 12, 4), True),
        ("oct 2026", date(2026, 10, 1), False),
        ("2024", date(2024, 1, 1), False),
        ("next week", None, True),
        ("2 weeks ago", None, False),
        ("6.5 cm", None, None),  # a size, not the 6th of May
        ("5-6 cm", None, None),
    ],
)
def test_dates_against_the_order_date(phrase: str, when: date | None, future: bool | None) -> None:
    assert find_date(phrase, ORDER_DATE) == (when, future)


def test_a_month_and_day_in_the_next_half_year_is_this_year_else_last_year() -> None:
    assert find_date("12/18", date(2027, 1, 10)) == (date(2026, 12, 18), False)


def test_an_mri_phrase_gives_every_field(knowledge: Knowledge) -> None:
    [s] = studies("L thigh mass. MRI L thigh w/wo 10/28: 6 cm enhancing mass", knowledge)
    assert (s.modality, s.site, s.side, s.contrast, s.status, s.on) == (
        "mri",
        "thigh",
        "left",
        "without_and_with",
        "done",
        date(2026, 10, 28),
    )
    assert s.words == "MRI L thigh w/wo 10/28" and s.covers("left") and not s.covers("right")


@pytest.mark.parametrize(
    ("text", "site", "side", "status"),
    [
        ("Cardiac MRI 2024 normal EF", "chest", "unknown", "done"),
        ("MRI brain 2025 unremarkable", "head", "unknown", "done"),
        ("MRI right knee 10/2026: meniscal tear", "knee", "right", "done"),
        ("MRI of the contralateral thigh 2024 normal", "thigh", "right", "done"),
        ("MRI appt 12/18", "unknown", "unknown", "planned"),
        ("MRI screening form completed", "unknown", "unknown", "planned"),
        ("cleared for MRI", "unknown", "unknown", "planned"),
        ("MRI w/wo reviewed at sarcoma MDT", "unknown", "unknown", "done"),
        ("s/p MR L femur w+w/o", "thigh", "left", "done"),
        ("MRI thigh w/wo", "thigh", "unknown", "unknown"),
        ("Prior MRI?: Yes 10/28", "unknown", "unknown", "done"),
        ("MRI?", "unknown", "unknown", "planned"),
    ],
)
def test_site_side_and_status(
    knowledge: Knowledge, text: str, site: str, side: str, status: str
) -> None:
    [s] = studies(text, knowledge)
    assert (s.site, s.side, s.status) == (site, side, status)


@pytest.mark.parametrize(
    "text",
    [
        "No prior MRI",
        "MRI: none",
        "MRI not yet done",
        "MRI cancelled",
        "MRI declined by patient",
        "Unable to tolerate MRI",
        "asks for CT instead of MRI",
        "MR conditional pacemaker",
        "Weight exceeds MRI table limit",
    ],
)
def test_no_study_of_the_patient(knowledge: Knowledge, text: str) -> None:
    assert studies(text, knowledge) == []


@pytest.mark.parametrize(
    ("study", "side", "covers"),
    [
        (PriorStudy(modality="mri", site="thigh", side="left", status="done"), "left", True),
        (PriorStudy(modality="mri", site="thigh", side="right", status="done"), "left", False),
        (PriorStudy(modality="mri", site="thigh", side="unknown", status="done"), "left", True),
        (PriorStudy(modality="mri", site="unknown", side="left", status="unknown"), "left", True),
        (PriorStudy(modality="mri", site="thigh", side="left", status="planned"), "left", False),
        (PriorStudy(modality="mri", site="chest", status="done"), "left", False),
        (PriorStudy(modality="mri", site="knee", side="left", status="done"), "left", False),
        (PriorStudy(modality="mri", site="lower_extremity", status="done"), "right", True),
        (PriorStudy(modality="ct", site="thigh", side="left", status="done"), "left", False),
        (PriorStudy(modality="mri", site="thigh", side="right", status="done"), "bilateral", True),
    ],
)
def test_covers(study: PriorStudy, side: str, covers: bool) -> None:
    assert study.covers(side) is covers  # type: ignore[arg-type]


def test_mentions_read_per_text_are_bounded(knowledge: Knowledge) -> None:
    assert len(studies("MRI thigh planned. " * 500, knowledge)) == MAX_MENTIONS


def _check(checker: Checker, reason: str, procedure: str = BIOPSY, **kw: object) -> object:
    return checker.check_message(order_message(procedure=procedure, reason=f"^{reason}", **kw))  # type: ignore[arg-type]


def test_the_history_gives_structured_studies(checker: Checker) -> None:
    for i, prior in enumerate(
        ("75561^CARDIAC MRI W/WO^CPT4", "^^^^MRI RIGHT THIGH W/WO", "13952-7^HBV core Ab^LN")
    ):
        outcome = _check(checker, "thigh", procedure=prior, msg_type="ORU^R01", control_id=f"H{i}")
        assert outcome.recorded == (0 if "Ab" in prior else 1)  # type: ignore[attr-defined]
    r = _check(checker, "left thigh mass 6 cm").results[0]  # type: ignore[attr-defined]
    assert {f.code for f in r.flags} == {"BIOPSY_BEFORE_MRI"}
    _check(checker, "thigh", procedure="73720^MRI LE WO+W^CPT4", msg_type="ORU^R01")
    r = _check(checker, "left thigh mass 6 cm").results[0]  # type: ignore[attr-defined]
    assert r.verdict == "appropriate" and not r.flags


def test_an_mri_of_unclear_status_is_not_evaluated(checker: Checker) -> None:
    r = _check(checker, "L thigh mass 6 cm. MRI L thigh w/wo").results[0]  # type: ignore[attr-defined]
    assert not r.flags
    assert "Not evaluated: BIOPSY_BEFORE_MRI" in r.reason
    r = _check(checker, "L thigh mass 6 cm. MRI L thigh w/wo 10/28").results[0]  # type: ignore[attr-defined]
    assert "Not evaluated" not in r.reason


def test_the_studies_are_in_the_facts(checker: Checker) -> None:
    r = _check(checker, "New L thigh mass. Cardiac MRI 2024 normal EF").results[0]  # type: ignore[attr-defined]
    assert [(s.site, s.status) for s in r.facts.prior_imaging] == [("chest", "done")]
    assert {f.code for f in r.flags} == {"BIOPSY_BEFORE_MRI"}


@pytest.mark.parametrize(
    ("text", "cm"),
    [
        ("1.5 cm superficial mass, 10 cm above the knee", 1.5),
        ("2 cm lump 7 cm proximal to the patella", 2.0),
        ("mass 3 x 2 cm located 12cm from the greater trochanter", 3.0),
        ("7 cm mass, 10 cm above the knee", 7.0),
        ("6 cm deep mass", 6.0),
    ],
)
def test_a_distance_is_no_size(text: str, cm: float) -> None:
    size = largest_size_cm(text)
    assert size is not None and size[0] == cm


def test_a_text_with_no_english_mri_word_is_read_by_the_vocabularys_prior_mri(
    tmp_path: Path,
) -> None:
    """Other languages' words for a done MRI (vocabulary.toml prior_mri) still document one."""
    data = resources.files("worker") / "data"
    for name in (
        "guideline.toml",
        "codes.toml",
        "vocabulary.toml",
        "codemap.toml",
        "protocols.toml",
    ):
        (tmp_path / name).write_text((data / name).read_text(encoding="utf-8"), encoding="utf-8")
    vocab = tmp_path / "vocabulary.toml"
    text = vocab.read_text(encoding="utf-8")
    vocab.write_text(
        text.replace("prior_mri = [", "prior_mri = ['\\brm\\s+(?:\\w+\\s+){0,3}realizada\\b', ", 1),
        encoding="utf-8",
    )
    checker = Checker(load_knowledge(data_dir=tmp_path), InMemoryHistory())
    done = "left thigh mass 6 cm. RM muslo izquierdo realizada"
    r = _check(checker, done).results[0]  # type: ignore[attr-defined]
    assert r.verdict == "appropriate" and not r.flags
    r = _check(checker, "left thigh mass 6 cm").results[0]  # type: ignore[attr-defined]
    assert {f.code for f in r.flags} == {"BIOPSY_BEFORE_MRI"}
