"""Each rule and exception of guideline.md section 4, and the facts behind them."""

from __future__ import annotations

import pytest

from tests.hl7build import order_message
from worker.check import Checker
from worker.guideline import RULE_IDS, Knowledge, load_knowledge
from worker.models import CheckResult, HistoryEntry, OrderFacts, SiteSettings
from worker.validators import RULES, RuleContext

CT = "73701^CT LOWER EXTREMITY W CONTRAST^CPT4"
MRI_WWO = "73720^MRI LOWER EXTREMITY WO W CONTRAST^CPT4"
MASS = "^Left thigh mass 6 cm, deep. XR femur showed calcification."


def check(checker: Checker, **kw: object) -> CheckResult:
    return checker.check_message(order_message(**kw)).results[0]  # type: ignore[arg-type]


def codes(r: CheckResult) -> tuple[set[str], set[str]]:
    return {f.code for f in r.flags}, {a.code for a in r.advice}


def test_the_rule_modules_are_the_guideline_rules() -> None:
    assert set(RULES) == set(RULE_IDS)


@pytest.mark.parametrize(
    ("procedure", "reason", "flag"),
    [
        (CT, MASS, "CT_BEFORE_MRI"),
        ("36172-5^CT Thigh W contrast IV^LN", MASS, "CT_BEFORE_MRI"),
        ("RPID913^CT Lower Extremity wo and w IV contrast^RADLEX", MASS, "CT_BEFORE_MRI"),
        ("^^^^CT FEMUR LT W/CONTRAST", MASS, "CT_BEFORE_MRI"),
        ("IMG123^CT THIGH LEFT WITHOUT CONTRAST^EAP", MASS, "CT_BEFORE_MRI"),
        ("20206^BIOPSY MUSCLE PERCUTANEOUS^CPT4", MASS, "BIOPSY_BEFORE_MRI"),
        ("^^^^US guided core bx L thigh", MASS, "BIOPSY_BEFORE_MRI"),
        ("27324^BIOPSY SOFT TISSUE THIGH DEEP^CPT4", MASS, "BIOPSY_BEFORE_MRI"),
        ("77012^CT GUIDANCE^CPT4", "^CT guided core biopsy left thigh mass", "BIOPSY_BEFORE_MRI"),
        ("78815^PET/CT SKULL BASE TO MID THIGH^CPT4", MASS, "PET_INITIAL"),
    ],
)
def test_flags_name_mri_without_and_with_contrast(
    checker: Checker, procedure: str, reason: str, flag: str
) -> None:
    r = check(checker, procedure=procedure, reason=reason)
    assert r.verdict == "not-appropriate"
    assert codes(r)[0] == {flag}
    assert r.preferred_procedure is not None and r.preferred_procedure.code == "73720"
    assert all(f.citations for f in r.flags)


@pytest.mark.parametrize(
    ("note", "exception"),
    [
        ("Permanent pacemaker, not MR conditional", "MRI_CONTRAINDICATED"),
        ("Z95.0 pacemaker in situ", "MRI_CONTRAINDICATED"),
        ("Weight exceeds MRI table limit", "MRI_CONTRAINDICATED"),
        ("Intramedullary nail left femur", "MRI_CONTRAINDICATED"),
        (
            "CT to characterise the calcification pattern, ?myositis ossificans",
            "CT_FOR_MINERALISATION",
        ),
    ],
)
def test_ct_exceptions_are_not_flagged(checker: Checker, note: str, exception: str) -> None:
    r = check(checker, procedure=CT, reason=MASS, notes=(note,))
    assert r.verdict == "appropriate"
    assert exception in codes(r)[1]
    if exception == "MRI_CONTRAINDICATED":
        assert r.preferred_procedure is not None and r.preferred_procedure.code == "73701"


def test_mr_conditional_pacemaker_is_no_exception(checker: Checker) -> None:
    r = check(checker, procedure=CT, reason=MASS, notes=("MR conditional pacemaker",))
    assert r.verdict == "not-appropriate"


def test_a_no_answer_to_the_device_question_is_no_exception(checker: Checker) -> None:
    r = check(checker, procedure=CT, reason=MASS, obx=(("Pacemaker or implanted device?", "N"),))
    assert r.verdict == "not-appropriate"
    r = check(
        checker,
        procedure=CT,
        reason=MASS,
        obx=(("Pacemaker?", "Y"),),
        control_id="Y1",
        patient_id="Y1^^^H",
    )
    assert r.verdict == "appropriate"


@pytest.mark.parametrize(
    ("procedure", "reason", "notes", "advice", "absent"),
    [
        ("73718^MRI LE WO^CPT4", MASS, (), "MRI_ADD_CONTRAST", "CONTRAST_CAUTION"),
        ("73719^MRI LE W^CPT4", MASS, (), "MRI_NO_PRECONTRAST", "MRI_ADD_CONTRAST"),
        (MRI_WWO, "^Left thigh mass 3 cm", (), "RADIOGRAPH_FIRST", "MRI_ADD_CONTRAST"),
        (MRI_WWO, MASS, ("eGFR 24 mL/min",), "CONTRAST_CAUTION", "RADIOGRAPH_FIRST"),
        (MRI_WWO, MASS, ("on haemodialysis",), "CONTRAST_CAUTION", "MRI_ADD_CONTRAST"),
        (MRI_WWO, MASS, ("pregnant, 20 weeks",), "CONTRAST_CAUTION", "MRI_ADD_CONTRAST"),
        (
            "73721^MRI KNEE JOINT WO^CPT4",
            "^Mass distal left thigh",
            (),
            "CODING_JOINT_CODE",
            "MRI_NO_PRECONTRAST",
        ),
        (
            "76881^US KNEE COMPLETE^CPT4",
            "^lump left thigh",
            (),
            "CODING_JOINT_CODE",
            "CT_BEFORE_MRI",
        ),
        (MRI_WWO, MASS, (), "REFER_SARCOMA_CENTRE", "RADIOGRAPH_FIRST"),
    ],
)
def test_advice_keeps_the_verdict(
    checker: Checker, procedure: str, reason: str, notes: tuple[str, ...], advice: str, absent: str
) -> None:
    r = check(checker, procedure=procedure, reason=reason, notes=notes)
    assert r.verdict == "appropriate"
    assert advice in codes(r)[1]
    assert absent not in codes(r)[1]


def test_contrast_caution_suppresses_add_contrast(checker: Checker) -> None:
    r = check(checker, procedure="73718^MRI LE WO^CPT4", reason=MASS, notes=("eGFR 22",))
    assert "MRI_ADD_CONTRAST" not in codes(r)[1]
    r = check(
        checker,
        procedure="73718^MRI LE WO^CPT4",
        reason=MASS,
        notes=("eGFR 62",),
        control_id="E2",
        patient_id="E2^^^H",
    )
    assert "MRI_ADD_CONTRAST" in codes(r)[1]


def test_sarcoma_team_on_site_turns_referral_off(knowledge: Knowledge) -> None:
    from worker.history import InMemoryHistory

    checker = Checker(knowledge, InMemoryHistory(), SiteSettings(sarcoma_team_on_site=True))
    r = check(checker, procedure=MRI_WWO, reason=MASS)
    assert "REFER_SARCOMA_CENTRE" not in codes(r)[1]


@pytest.mark.parametrize(
    ("procedure", "reason", "kw"),
    [
        ("71260^CT CHEST W CONTRAST^CPT4", "^lung nodule", {}),
        ("73700^CT LOWER EXTREMITY WO^CPT4", "^Fall, fracture of the left femur", {}),
        ("^^^^CT FEMUR LEFT WO", "^swelling after a fall, ?fracture", {}),
        (CT, MASS, {"birth": "20140101"}),
        (CT, MASS, {"order_control": "SC"}),
        (CT, MASS, {"order_control": "CA"}),
        (CT, MASS, {"order_control": "RP"}),  # the order being replaced
        (CT, MASS, {"order_status": "CM"}),
        (CT, "^no mass, no swelling; knee pain", {}),
        (CT, "^lytic lesion of the left femur", {}),
        ("73721^MRI KNEE WO^CPT4", "^meniscal tear", {}),
    ],
)
def test_out_of_scope_is_no_criteria_apply(
    checker: Checker, procedure: str, reason: str, kw: dict[str, str]
) -> None:
    r = check(checker, procedure=procedure, reason=reason, **kw)
    assert r.verdict == "no-criteria-apply"
    assert r.flags == [] and r.preferred_procedure is None
    assert r.reason.startswith("Not evaluated")


def test_a_replacement_order_is_judged_like_a_new_one(checker: Checker) -> None:
    r = check(checker, procedure=CT, reason=MASS, order_control="RO")
    assert r.verdict == "not-appropriate" and codes(r)[0] == {"CT_BEFORE_MRI"}


def test_history_across_messages_per_side(checker: Checker) -> None:
    mri = order_message(
        control_id="H1",
        msg_type="ORU^R01",
        patient_id="H^^^A^MR",
        procedure="73720^MRI LE WO W LEFT^CPT4",
        reason="^left thigh mass",
    )
    checker.check_message(mri)
    left = check(
        checker,
        control_id="H2",
        patient_id="H^^^A^MR",
        procedure="20206^BIOPSY^CPT4",
        reason="^biopsy left thigh mass 6 cm",
    )
    right = check(
        checker,
        control_id="H3",
        patient_id="H^^^A^MR",
        procedure="20206^BIOPSY^CPT4",
        reason="^biopsy right thigh mass 6 cm",
    )
    other_authority = check(
        checker,
        control_id="H4",
        patient_id="H^^^B^MR",
        procedure="20206^BIOPSY^CPT4",
        reason="^biopsy left thigh mass",
    )
    assert left.verdict == "appropriate"
    assert right.verdict == "not-appropriate"
    assert other_authority.verdict == "not-appropriate"


def test_documented_mri_counts(checker: Checker) -> None:
    r = check(
        checker,
        procedure="20206^BIOPSY^CPT4",
        reason=MASS,
        notes=("MRI 2026-10-02 showed a 6 cm intramuscular mass",),
    )
    assert r.verdict == "appropriate"
    r = check(
        checker,
        procedure=CT,
        reason=MASS,
        notes=("No prior MRI.",),
        control_id="D2",
        patient_id="D2^^^H",
    )
    assert r.verdict == "not-appropriate"


def test_multi_order_message_judges_each(checker: Checker) -> None:
    data = (
        b"MSH|^~\\&|RIS|H|OC|OC|20261120||ORM^O01|M1|P|2.3\rPID|1||M1^^^H||T^P||19700101\r"
        b"ORC|NW|A\rOBR|1|A||73701^CT LE W^CPT4|||||||||||||||||||||||||||^left thigh mass\r"
        b"ORC|NW|B\rOBR|1|B||73552^XR FEMUR 2 VIEWS^CPT4|||||||||||||||||||||||||||"
        b"^left thigh mass\r"
    )
    results = checker.check_message(data).results
    assert [(r.placer_order_number, r.verdict) for r in results] == [
        ("A", "not-appropriate"),
        ("B", "appropriate"),
    ]
    assert "RADIOGRAPH_FIRST" not in codes(results[0])[1]  # the XR is ordered alongside


@pytest.mark.parametrize(
    ("text", "fact", "value"),
    [
        ("5cm", "size_cm", 5.0),
        ("5.2 x 3.1 cm", "size_cm", 5.2),
        ("52 mm", "size_cm", 5.2),
        ("mass 6.5cm x 4cm", "size_cm", 6.5),
        ("no calcification", "calcification", False),
        ("without bony involvement", "bony_involvement", False),
        ("cortical erosion of the femur", "bony_involvement", True),
        ("deep to fascia", "deep", True),
        ("subcutaneous", "superficial", True),
        ("T1 bright, ?haematoma", "haemorrhage", True),
        ("encasing the femoral vessels", "vascular", True),
        ("calcification: none", "calcification", False),
    ],
)
def test_facts(checker: Checker, text: str, fact: str, value: object) -> None:
    r = check(checker, procedure=MRI_WWO, reason=f"^left thigh mass, {text}")
    assert r.facts is not None
    assert getattr(r.facts, fact) == value


def test_protocol_adds_subtraction_and_mra_only_when_needed(checker: Checker) -> None:
    plain = check(checker, procedure=MRI_WWO, reason=MASS)
    both = check(
        checker,
        procedure=MRI_WWO,
        control_id="P2",
        patient_id="P2^^^H",
        reason="^left thigh mass, T1 bright haematoma-like, encasing the vessels",
    )
    assert not any("Subtraction" in s or "angiography" in s for s in plain.protocol)
    assert any("Subtraction" in s for s in both.protocol)
    assert any("angiography" in s for s in both.protocol)
    assert plain.protocol[1].startswith("Pre-contrast")


def test_rules_are_pure_functions(knowledge: Knowledge) -> None:
    facts = OrderFacts(
        procedure_class="ct", contrast="with", region="thigh", mass=True, thigh_site=True
    )
    history = [HistoryEntry(procedure_class="mri", region="thigh", laterality="unknown")]
    ctx = RuleContext(facts=facts, history=[], site=SiteSettings(), knowledge=knowledge)
    assert [f.rule_id for f in RULES["CT_BEFORE_MRI"](ctx)] == ["CT_BEFORE_MRI"]
    ctx2 = RuleContext(facts=facts, history=history, site=SiteSettings(), knowledge=knowledge)
    assert RULES["CT_BEFORE_MRI"](ctx2) == []


def test_a_broken_guideline_file_fails_at_load_naming_it(tmp_path: object) -> None:
    import shutil
    from pathlib import Path

    from worker.errors import GuidelineError

    src = Path(__file__).resolve().parent.parent / "worker" / "data"
    dst = Path(str(tmp_path))
    for f in src.glob("*.toml"):
        shutil.copy(f, dst / f.name)
    text = (dst / "guideline.toml").read_text()
    text = text.replace('kind = "flag"\nseverity', 'kind = "flagg"\nseverity', 1)
    (dst / "guideline.toml").write_text(text)
    with pytest.raises(GuidelineError, match=r"guideline.toml: entry rules.CT_BEFORE_MRI.kind"):
        load_knowledge(data_dir=dst)
    bad_map = dst / "site.toml"
    bad_map.write_text('[[code]]\ncode = "X1"\nclass = "scan"\n')
    with pytest.raises(GuidelineError, match=r"site\.toml"):
        load_knowledge(code_map=bad_map)


def test_site_code_map(tmp_path: object, knowledge: Knowledge) -> None:
    from pathlib import Path

    from worker.history import InMemoryHistory

    path = Path(str(tmp_path)) / "map.toml"
    path.write_text(
        '[[code]]\nsystem = "EAP"\ncode = "IMG9"\nclass = "ct"\n'
        'contrast = "with"\nregion = "thigh"\n'
    )
    checker = Checker(load_knowledge(code_map=path), InMemoryHistory())
    r = check(checker, procedure="IMG9^XYZ PROTOCOL 9^EAP", reason="^left thigh mass")
    assert r.verdict == "not-appropriate"


def test_free_text_in_the_code_component_is_read(checker: Checker) -> None:
    """Feeds that put text in OBR-4.1 and OBR-31.1 ("CT FEMUR LT W/CONTRAST", "Left thigh mass")."""
    r = check(checker, procedure="CT FEMUR LT W/CONTRAST", reason="Left thigh mass 6 cm")
    assert r.verdict == "not-appropriate"
    assert r.facts is not None and r.facts.contrast == "with" and r.facts.laterality == "left"
