"""Orders not in English (issue 12, class 8) are read like English ones: Spanish, German, French
and Italian wordings of every rule, their out-of-scope look-alikes and negations, with the
language declared in MSH-19 or detected from the text. English stays the default and is read
by the very same Knowledge object as before."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hl7build import order_message
from languagecases import LANGUAGES, Case, cases

from worker.check import Checker
from worker.errors import GuidelineError
from worker.guideline import Knowledge, load_knowledge
from worker.history import InMemoryHistory
from worker.language import DETECT_CHARS, detect
from worker.models import CheckResult

CASES = cases()
DATA = Path(__file__).resolve().parent.parent / "worker" / "data"


def run(kn: Knowledge, case: Case) -> CheckResult:
    extra = {19: case.msh19} if case.msh19 else None
    data = order_message(
        procedure=f"^{case.procedure}",
        reason=f"^{case.reason}",
        notes=case.notes,
        extra_msh=extra,
    )
    return Checker(kn, InMemoryHistory()).check_message(data).results[0]


def test_the_generated_set_is_large_and_covers_every_language_and_rule() -> None:
    assert len(CASES) >= 100
    per = {(c.language, c.category) for c in CASES}
    categories = {c.category for c in CASES}
    assert len(categories) == 9
    assert per == {(lang, cat) for lang in LANGUAGES for cat in categories}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_orders_in_other_languages_follow_the_guideline(knowledge: Knowledge, case: Case) -> None:
    r = run(knowledge, case)
    assert r.verdict == case.verdict, r.reason
    assert {f.code for f in r.flags} == case.flags, r.reason
    assert case.advice <= {a.code for a in r.advice}, r.reason
    if case.verdict != "no-criteria-apply":
        language = [e for e in r.facts.evidence if e.fact == "language"] if r.facts else []
        assert [e.value for e in language] == [case.language]
        assert language[0].source == ("MSH-19" if case.msh19 else "order text")


def test_no_false_flag_in_the_generated_set(knowledge: Knowledge) -> None:
    false_flags = [c.id for c in CASES if not c.flags and run(knowledge, c).flags]
    assert false_flags == []


@pytest.mark.parametrize(
    "text",
    [
        "Left thigh mass 6 cm, deep, r/o sarcoma",
        "CT FEMUR LT W/CONTRAST. Palpable lump of the right thigh for 3 months",
        "MRI L thigh w/wo 10/28: 6 cm enhancing mass. US core bx",
        "Dx: R22.42 left thigh mass per PCP, non-tender, no calcification",
        "pt has pacemaker; cannot have MRI. Soft tissue mass of the left thigh",
        "Mass of the thigh con el paciente",  # one Spanish word is not Spanish
    ],
)
def test_english_text_stays_english(knowledge: Knowledge, text: str) -> None:
    assert detect([text], knowledge) is None


def test_english_orders_are_read_by_the_default_knowledge(knowledge: Knowledge) -> None:
    assert knowledge.in_language("en") is knowledge
    assert knowledge.in_language("nl") is knowledge  # no file: English only
    data = order_message(reason="^Left thigh mass 6 cm, deep")
    r = Checker(knowledge, InMemoryHistory()).check_message(data).results[0]
    assert r.facts is not None
    assert [e for e in r.facts.evidence if e.fact == "language"] == []


def test_each_language_is_compiled_once_per_process(knowledge: Knowledge) -> None:
    for code in ("es", "de", "fr", "it"):
        kn = knowledge.in_language(code)
        assert kn is not knowledge and kn.language == code
        assert knowledge.in_language(code) is kn
        assert kn.in_language(code) is kn and kn.in_language("en") is knowledge


def test_a_german_order_still_reads_english_abbreviations(knowledge: Knowledge) -> None:
    case = Case(
        "de",
        "mixed",
        "CT Oberschenkel links mit KM",
        "Raumforderung Oberschenkel links",
        ("PPM in situ, not MR conditional",),
    )
    r = run(knowledge, case)
    assert r.verdict == "appropriate" and not r.flags
    assert "MRI_CONTRAINDICATED" in {a.code for a in r.advice}


def test_a_declared_language_wins_over_detection(knowledge: Knowledge) -> None:
    # "TC" is a CT only in Spanish and Italian: declared English, the order is not read as CT.
    case = Case("es", "declared", "TC muslo izquierdo", "Masa en muslo izquierdo", msh19="en")
    assert run(knowledge, case).verdict == "no-criteria-apply"
    assert run(knowledge, Case("es", "x", case.procedure, case.reason)).flags


def test_a_character_set_of_another_script_keeps_english(knowledge: Knowledge) -> None:
    data = order_message(
        procedure="^TC muslo izquierdo",
        reason="^Masa de partes blandas en muslo izquierdo",
        extra_msh={18: "ISO IR87"},
    )
    r = Checker(knowledge, InMemoryHistory()).check_message(data).results[0]
    assert r.verdict == "no-criteria-apply"


def test_detection_reads_a_bounded_prefix(knowledge: Knowledge) -> None:
    german = "Raumforderung Oberschenkel links, V.a. Weichteilsarkom. "
    assert detect([german], knowledge) == "de"
    assert detect(["x " * DETECT_CHARS, german], knowledge) is None


def test_a_language_file_with_an_unknown_key_fails_at_start_up(tmp_path: Path) -> None:
    for f in DATA.glob("*.toml"):
        shutil.copy(f, tmp_path / f.name)
    bad = tmp_path / "vocabulary.nl.toml"
    bad.write_text(
        'version = "1"\n[language]\ncode = "nl"\nname = "Dutch"\ndetect = [\'\\bhet\\b\']\n'
        "[findings]\nbogus = ['x']\n",
        encoding="utf-8",
    )
    with pytest.raises(GuidelineError, match=r"vocabulary\.nl\.toml: findings\.bogus"):
        load_knowledge(data_dir=tmp_path)
    bad.write_text(
        'version = "1"\n[language]\ncode = "nl"\nname = "Dutch"\ndetect = [\'(\']\n',
        encoding="utf-8",
    )
    with pytest.raises(GuidelineError, match=r"vocabulary\.nl\.toml"):
        load_knowledge(data_dir=tmp_path)
