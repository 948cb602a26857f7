"""Orders not in English (issue 12, class 8) are read like English ones: Spanish, German, French
and Italian wordings of every rule, their out-of-scope look-alikes and negations, with the
language declared in MSH-19 or detected from the text. English stays the default and is read
by the very same Knowledge object as before."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.hl7build import order_message
from tests.languagecases import LANGUAGES, Case, cases
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


# Wordings beyond the generated grid, each with the guideline's outcome: (procedure, indication,
# verdict, flags, advice that must be given).
MORE = [
    (
        "TC muslo derecho",
        "Recidiva de liposarcoma en cicatriz de muslo derecho",
        "not-appropriate",
        {"CT_BEFORE_MRI"},
        set(),
    ),
    ("MRT Knie links", "V.a. Meniskusläsion, Schwellung", "no-criteria-apply", set(), set()),
    (
        "TC de tórax",
        "Estudio de extensión de sarcoma de muslo izquierdo",
        "no-criteria-apply",
        set(),
        set(),
    ),
    (
        "Ecografía de partes blandas muslo derecho",
        "Bulto de 3 cm, blando",
        "appropriate",
        set(),
        {"RADIOGRAPH_FIRST"},
    ),
    ("RM coscia dx con mdc", "massa della coscia dx", "appropriate", set(), {"MRI_NO_PRECONTRAST"}),
    (
        "MRT Oberschenkel rechts mit KM",
        "Raumforderung Oberschenkel rechts",
        "appropriate",
        set(),
        {"MRI_NO_PRECONTRAST"},
    ),
    (
        "PET-TC",
        "Masa en muslo izquierdo, valoración inicial",
        "not-appropriate",
        {"PET_INITIAL"},
        set(),
    ),
    (
        "PET-TC",
        "Estadificación de sarcoma de muslo izquierdo confirmado por biopsia",
        "appropriate",
        set(),
        set(),
    ),
    (
        "Stanzbiopsie Oberschenkel links",
        "Raumforderung Oberschenkel links. MRT Oberschenkel rechts 2024 unauffällig",
        "not-appropriate",
        {"BIOPSY_BEFORE_MRI"},
        set(),
    ),
    (
        "TC muslo izquierdo",
        "Masa en muslo izquierdo. Claustrofobia",
        "not-appropriate",
        {"CT_BEFORE_MRI"},
        set(),
    ),
    (
        "TC muslo izquierdo",
        "Masa en muslo izquierdo. Clavo endomedular en fémur izquierdo",
        "appropriate",
        set(),
        {"MRI_CONTRAINDICATED"},
    ),
    (
        "TC muslo izquierdo sin contraste",
        "Masa con calcificaciones en muslo izquierdo: descartar miositis osificante"
        " vs osteosarcoma extraesquelético",
        "appropriate",
        set(),
        {"CT_FOR_MINERALISATION"},
    ),
    (
        "IRM cuisse droite avec injection",
        "masse de la cuisse droite, DFG 25",
        "appropriate",
        set(),
        {"CONTRAST_CAUTION"},
    ),
    (
        "RM coscia sinistra senza e con mdc",
        "massa coscia sinistra, paziente in dialisi",
        "appropriate",
        set(),
        {"CONTRAST_CAUTION"},
    ),
    (
        "TDM cuisse gauche",
        "masse de la cuisse gauche, pas de pacemaker",
        "not-appropriate",
        {"CT_BEFORE_MRI"},
        set(),
    ),
    (
        "CT Oberschenkel links",
        "Raumforderung OS links, Schrittmacher 2019 entfernt",
        "not-appropriate",
        {"CT_BEFORE_MRI"},
        set(),
    ),
    (
        "Scanner de la cuisse gauche",
        "hématome de la cuisse gauche après chute",
        "no-criteria-apply",
        set(),
        set(),
    ),
    (
        "TC coscia sinistra",
        "ematoma post-traumatico coscia sinistra",
        "no-criteria-apply",
        set(),
        set(),
    ),
    ("CT Becken", "Raumforderung Oberschenkel links", "no-criteria-apply", set(), set()),
    (
        "TC muslo izquierdo con contraste",
        "Masa en muslo izquierdo. Marcapasos compatible con RM",
        "not-appropriate",
        {"CT_BEFORE_MRI"},
        set(),
    ),
    (
        "TC coscia sinistra con mdc",
        "massa della coscia sinistra. RM della coscia sinistra eseguita il 03/11/2026:"
        " massa di 7 cm",
        "appropriate",
        set(),
        set(),
    ),
    (
        "Biopsia coscia destra",
        "massa coscia destra. RM della coscia sinistra eseguita il 03/11/2026",
        "not-appropriate",
        {"BIOPSY_BEFORE_MRI"},
        set(),
    ),
]


@pytest.mark.parametrize(("procedure", "reason", "verdict", "flags", "advice"), MORE)
def test_more_wordings_follow_the_guideline(
    knowledge: Knowledge,
    procedure: str,
    reason: str,
    verdict: str,
    flags: set[str],
    advice: set[str],
) -> None:
    r = run(knowledge, Case("", "more", procedure, reason))
    assert r.verdict == verdict, r.reason
    assert {f.code for f in r.flags} == flags, r.reason
    assert advice <= {a.code for a in r.advice}, r.reason


def test_a_result_in_spanish_enters_the_history_and_covers_the_biopsy(knowledge: Knowledge) -> None:
    checker = Checker(knowledge, InMemoryHistory())
    biopsy = order_message(
        procedure="^Biopsia con aguja gruesa ecoguiada muslo izquierdo",
        reason="^Masa en muslo izquierdo",
        control_id="B1",
    )
    assert {f.code for f in checker.check_message(biopsy).results[0].flags} == {"BIOPSY_BEFORE_MRI"}
    result = order_message(
        procedure="^RM MUSLO IZQUIERDO CON Y SIN CONTRASTE",
        reason="^Masa de partes blandas",
        msg_type="ORU^R01",
        control_id="R1",
    )
    assert checker.check_message(result).recorded == 1
    r = checker.check_message(biopsy).results[0]
    assert r.verdict == "appropriate" and not r.flags, r.reason
