"""Clinical wording read the way guideline.md means it: each case is an order text that was
misread once (negation scope, hedges, sizes, sides, contraindications, out-of-scope causes)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.hl7build import order_message
from worker.check import Checker
from worker.models import CheckResult
from worker.text import largest_size_cm

CT = "73701^CT LOWER EXTREMITY W CONTRAST^CPT4"
MRI_WO = "73718^MRI LOWER EXTREMITY WO^CPT4"
MRI_WWO = "73720^MRI LOWER EXTREMITY WO+W^CPT4"
BIOPSY = "20206^BIOPSY MUSCLE PERCUTANEOUS^CPT4"
PET = "78815^PET/CT SKULL BASE TO MID THIGH^CPT4"


def check(checker: Checker, procedure: str, reason: str, *notes: str, **kw: Any) -> CheckResult:
    data = order_message(procedure=procedure, reason=f"^{reason}", notes=notes, **kw)
    return checker.check_message(data).results[0]


def flags(r: CheckResult) -> set[str]:
    return {f.code for f in r.flags}


def advice(r: CheckResult) -> set[str]:
    return {a.code for a in r.advice}


# -- MRI contraindications: what the guideline counts, and what it does not -------------------


@pytest.mark.parametrize(
    "note",
    [
        "Claustrophobic, requests CT",
        "Unable to tolerate MRI due to claustrophobia",
        "Severe claustrophobia, will need sedation for MRI",
        "Pacemaker removed 2021",
        "Right total knee replacement 2018",  # metal in the other limb, not at the site
        "s/p ORIF R femur 2012",
        "Type 1 diabetic on insulin pump",  # taken off for the scan
        "MRI conditional pacemaker (Azure)",
    ],
)
def test_no_mri_contraindication_ct_is_flagged(checker: Checker, note: str) -> None:
    r = check(checker, CT, "left thigh mass 6 cm, deep", note)
    assert r.verdict == "not-appropriate"
    assert flags(r) == {"CT_BEFORE_MRI"}


@pytest.mark.parametrize(
    "note",
    [
        "PPM in situ (2019), not MR conditional",
        "AICD",
        "Bilateral cochlear implants",
        "IM nail L femur 2015",
        "L THR 2015, metal artifact expected",
        "Retained shrapnel left thigh (military)",
        "Body habitus exceeds bore diameter",
        "Cannot have MRI",
    ],
)
def test_mri_contraindication_accepts_ct(checker: Checker, note: str) -> None:
    r = check(checker, CT, "left thigh mass 6 cm, deep", note)
    assert r.verdict == "appropriate"
    assert "MRI_CONTRAINDICATED" in advice(r)


def test_metal_at_the_site_wins_over_a_denied_device(checker: Checker) -> None:
    r = check(checker, CT, "R thigh mass 6 cm", "No pacemaker. IM nail R femur.")
    assert r.verdict == "appropriate"
    assert any("Dual-energy" in step for step in r.protocol)


# -- Mineralisation: myositis ossificans is a soft-tissue question ------------------------------


def test_myositis_ossificans_vs_osteosarcoma_is_a_soft_tissue_mass(checker: Checker) -> None:
    r = check(
        checker,
        "73700^CT LOWER EXTREMITY WO CONTRAST^CPT4",
        "L thigh mass with calcifications on XR; myositis ossificans vs osteosarcoma",
    )
    assert r.verdict == "appropriate"
    assert "CT_FOR_MINERALISATION" in advice(r)


# -- Radiographs: a done study with a normal result is done -----------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "lump L thigh, XR: negative",
        "lump L thigh, x-ray 11/2026 unremarkable",
        "lump L thigh. No fracture on XR.",
        "lump L thigh, without calcification on XR",
        "lump L thigh, xray neg",
    ],
)
def test_a_normal_radiograph_is_a_radiograph(checker: Checker, text: str) -> None:
    r = check(checker, MRI_WWO, text)
    assert "RADIOGRAPH_FIRST" not in advice(r)


@pytest.mark.parametrize(
    "text",
    ["lump L thigh, no XR yet", "lump L thigh, x-ray not done", "lump L thigh. Radiographs: none"],
)
def test_a_missing_radiograph_is_missing(checker: Checker, text: str) -> None:
    assert "RADIOGRAPH_FIRST" in advice(check(checker, MRI_WWO, text))


# -- Prior MRI: done, not planned, of this thigh ------------------------------------------------


@pytest.mark.parametrize(
    "note",
    [
        "MRI booked for 12/03/2026",
        "Awaiting MRI",
        "MRI not done",
        "MRI: not done",
        "MRI pending",
        "Never had an MRI",
        "MRI right thigh 2025 showed lipoma; left thigh not imaged",
    ],
)
def test_biopsy_without_a_done_mri_of_this_thigh_is_flagged(checker: Checker, note: str) -> None:
    r = check(checker, BIOPSY, "new left thigh mass 7 cm", note)
    assert flags(r) == {"BIOPSY_BEFORE_MRI"}


@pytest.mark.parametrize(
    "note",
    [
        "Prior MRI 10/2026 indeterminate",
        "Outside MR showed 5 cm heterogeneous mass",
        "MRI c/w sarcoma",
        "MRI thigh done at outside hospital 10/2026",
        "MRI left thigh 10/2026: 7 cm intramuscular mass",
    ],
)
def test_biopsy_after_a_documented_mri_is_not_flagged(checker: Checker, note: str) -> None:
    r = check(checker, BIOPSY, "left thigh mass 7 cm", note)
    assert r.verdict == "appropriate"
    assert "REFER_SARCOMA_CENTRE" in advice(r)


def test_a_one_letter_side_before_a_site_word_is_read(checker: Checker) -> None:
    mri = order_message(
        control_id="S1",
        msg_type="ORU^R01",
        patient_id="S^^^A^MR",
        procedure="73720^MRI LOWER EXTREMITY RIGHT WO W^CPT4",
        reason="^R thigh mass",
    )
    checker.check_message(mri)
    left = check(checker, BIOPSY, "L thigh mass", control_id="S2", patient_id="S^^^A^MR")
    right = check(checker, BIOPSY, "R. thigh mass", control_id="S3", patient_id="S^^^A^MR")
    assert left.facts is not None and left.facts.laterality == "left"
    assert flags(left) == {"BIOPSY_BEFORE_MRI"}
    assert right.verdict == "appropriate"


# -- PET/CT -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "staging, biopsy-proven high grade liposarcoma L thigh",
        "new L thigh mass 8 cm, ? sarcoma, for staging",
        "L thigh mass, MRI indeterminate",
    ],
)
def test_pet_as_an_adjunct_is_not_flagged(checker: Checker, text: str) -> None:
    r = check(checker, PET, text)
    assert r.verdict == "appropriate"


def test_pet_field_of_view_is_not_the_site_of_the_mass(checker: Checker) -> None:
    r = check(checker, PET, "RUL lung mass 3 cm")
    assert r.verdict == "no-criteria-apply"


def test_a_bone_scan_is_no_pet(checker: Checker) -> None:
    r = check(checker, "^^^^NM BONE SCAN WHOLE BODY", "thigh mass ? mets", modality="NM")
    assert r.verdict == "no-criteria-apply"


# -- Out of scope: other causes of a swollen thigh, and sites that only sound like the thigh ---


@pytest.mark.parametrize(
    ("procedure", "text"),
    [
        ("^^^^US VENOUS DUPLEX LEFT LOWER EXTREMITY", "L thigh swelling, r/o DVT"),
        ("^^^^US SOFT TISSUE THIGH LEFT", "red hot swollen thigh, cellulitis ? abscess"),
        ("^^^^US LEFT GROIN", "groin lump ? femoral hernia"),
        ("^^^^MRI THIGH LEFT WO", "hamstring tear with swelling after sprint"),
        (MRI_WWO, "Thigh swelling L, no discrete mass on US"),
        ("^^^^US THIGH LEFT", "thigh abscess ? collection"),
    ],
)
def test_not_a_soft_tissue_mass_of_the_thigh(checker: Checker, procedure: str, text: str) -> None:
    assert check(checker, procedure, text).verdict == "no-criteria-apply"


@pytest.mark.parametrize(
    "text",
    [
        "L thigh: sarcoma cannot be excluded",
        "L thigh: sarcoma not ruled out",
        "Rt thigh STM 4cm",
        "L thigh - ? mass",
        "L thigh: rule out mass",
    ],
)
def test_hedges_keep_the_mass(checker: Checker, text: str) -> None:
    assert flags(check(checker, CT, text)) == {"CT_BEFORE_MRI"}


# -- Contrast words -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("procedure", "contrast"),
    [
        ("^^^^MRI THIGH LEFT (NO GAD)", "without"),
        ("^^^^MRI THIGH LEFT +/- CONTRAST", "without_and_with"),
        ("^^^^MRI THIGH C-/C+", "without_and_with"),
        ("^^^^MRI femur w+w/o gad", "without_and_with"),
        ("^^^^MRI L thigh pre and post contrast", "without_and_with"),
        ("^^^^MRI THIGH LEFT POST GAD ONLY", "with"),
        ("^^^^CT LE WO", "without"),
        ("^^^^CT FEMUR RT W IV", "with"),
    ],
)
def test_contrast_wording(checker: Checker, procedure: str, contrast: str) -> None:
    r = check(checker, procedure, "L thigh mass 4 cm, XR done")
    assert r.facts is not None and r.facts.contrast == contrast


# -- Contrast cautions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "note",
    [
        "Pregnancy test negative. eGFR 75.",
        "Pregnancy status: not pregnant",
        "Allergy: iodinated contrast (hives)",
        "eGFR >60",
    ],
)
def test_no_contrast_caution(checker: Checker, note: str) -> None:
    r = check(checker, MRI_WWO, "L thigh mass 3 cm, XR done", note)
    assert "CONTRAST_CAUTION" not in advice(r)


@pytest.mark.parametrize(
    "note",
    [
        "eGFR 25",
        "CKD 4",
        "On haemodialysis MWF",
        "Pregnant 20 weeks",
        "Prior gad reaction (urticaria) 2022",
        "eGFR: 28 mL/min/1.73m2",
    ],
)
def test_contrast_caution(checker: Checker, note: str) -> None:
    r = check(checker, MRI_WWO, "L thigh mass 3 cm, XR done", note)
    assert "CONTRAST_CAUTION" in advice(r)


# -- Red flags ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cm"),
    [
        ("2.5in lump", 6.35),
        ("2.5 inches", 6.35),
        ('3" mass', 7.62),
        ("mass 2 in the thigh", None),
        ("BP 140/80 mm Hg, 3cm", 3.0),
        ("60x40x30mm", 6.0),
        ("6,5 cm", 6.5),
        ("5-6 cm", 6.0),
        ("3 x 4 x 7 cm", 7.0),
        ("65 mm", 6.5),
        (">5 cm", 5.0),
    ],
)
def test_sizes(text: str, cm: float | None) -> None:
    size = largest_size_cm(text)
    assert (size[0] if size else None) == cm


@pytest.mark.parametrize(
    ("text", "refer"),
    [
        ("5 cm subcutaneous lump, painless, XR normal", False),
        ("5.1 cm subcutaneous lump, painless, XR done", True),
        ("subcutaneous lump >5 cm, XR done", True),
        ("subcutaneous lump more than 5cm, XR done", True),
        ("painful 3 cm lump, subcutaneous, XR done", True),
        ("3cm lump, XR done; hx deep vein thrombosis 2019, superficial, mobile", False),
        ("soft tissue swelling getting bigger, XR done", True),
        ("3 cm lump superficial. No pain or growth. XR done", False),
    ],
)
def test_red_flags_for_referral(checker: Checker, text: str, refer: bool) -> None:
    r = check(checker, MRI_WWO, f"L thigh {text}")
    assert ("REFER_SARCOMA_CENTRE" in advice(r)) == refer


def test_pain_alone_asks_for_referral_not_contrast(checker: Checker) -> None:
    r = check(checker, MRI_WO, "painful 3 cm subcutaneous lump L thigh, XR done")
    assert "REFER_SARCOMA_CENTRE" in advice(r)
    assert "MRI_ADD_CONTRAST" not in advice(r)
    r = check(checker, MRI_WO, "L thigh lump >5 cm, XR done", control_id="M2", patient_id="M2^^^H")
    assert "MRI_ADD_CONTRAST" in advice(r)


def test_protocol_steps_from_new_wordings(checker: Checker) -> None:
    bleed = check(checker, MRI_WWO, "R thigh swelling, haematoma vs tumour, on apixaban")
    vessel = check(
        checker, MRI_WWO, "L thigh mass 3cm abutting the SFA", control_id="V2", patient_id="V2^^^H"
    )
    none = check(
        checker,
        MRI_WWO,
        "L thigh mass 3cm, no vascular involvement suspected",
        control_id="V3",
        patient_id="V3^^^H",
    )
    assert any("Subtraction" in s for s in bleed.protocol)
    assert any("angiography" in s for s in vessel.protocol)
    assert not any("angiography" in s for s in none.protocol)


# -- Words that only look like a device, metal at the site, or another cause -------------------


@pytest.mark.parametrize(
    "note",
    ["ICD-10: R22.42", "Prosthetic heart valve", "Metal plate in skull", "L ankle ORIF 2010"],
)
def test_no_device_and_no_metal_at_the_site(checker: Checker, note: str) -> None:
    r = check(checker, CT, "Left thigh mass 6 cm", note)
    assert flags(r) == {"CT_BEFORE_MRI"}


def test_oedema_around_a_lesion_is_no_other_cause(checker: Checker) -> None:
    r = check(checker, MRI_WWO, "L thigh intramuscular lesion with surrounding oedema on US")
    assert r.verdict == "appropriate"
    r = check(
        checker,
        "^^^^US THIGH LEFT",
        "L thigh swelling after liposuction ? seroma",
        control_id="O2",
        patient_id="O2^^^H",
    )
    assert r.verdict == "no-criteria-apply"


@pytest.mark.parametrize("procedure", ["73701-LT^^CPT4", "73701 RT^^CPT4", "73701-26-LT^^C4"])
def test_cpt_codes_with_modifiers(checker: Checker, procedure: str) -> None:
    r = check(checker, procedure, "Left thigh mass 6 cm")
    assert flags(r) == {"CT_BEFORE_MRI"}


def test_icd10_oid_as_coding_system(checker: Checker) -> None:
    data = order_message(
        procedure="^^^^CT FEMUR LEFT W CONTRAST", dg1=("R22.42^^2.16.840.1.113883.6.90",)
    )
    assert flags(checker.check_message(data).results[0]) == {"CT_BEFORE_MRI"}


@pytest.mark.parametrize(
    "text",
    ["Hx: lipoma excised 2019. Now new lump same site L thigh", "new lump L thigh at the old scar"],
)
def test_recurrence_at_the_site_is_a_red_flag(checker: Checker, text: str) -> None:
    r = check(checker, MRI_WWO, f"{text}. XR done")
    assert r.facts is not None and r.facts.recurrence
    assert "REFER_SARCOMA_CENTRE" in advice(r)


def test_x_ray_written_apart_is_a_radiograph(checker: Checker) -> None:
    r = check(checker, MRI_WO, "L thigh mass 4 cm superficial with calcification on x ray")
    assert "RADIOGRAPH_FIRST" not in advice(r)
    assert "MRI_ADD_CONTRAST" in advice(r)


@pytest.mark.parametrize(
    "obx",
    [
        ("33914-3^Glomerular filtration rate/1.73 sq M.predicted^LN", "25"),
        ("33914-3^^LN", "25"),
    ],
)
def test_egfr_sent_as_a_loinc_result(checker: Checker, obx: tuple[str, str]) -> None:
    data = order_message(procedure=MRI_WWO, reason="^L thigh mass 3cm, XR done", obx=(obx,))
    assert "CONTRAST_CAUTION" in advice(checker.check_message(data).results[0])


def test_ct_angiography_worded_at_the_end_is_no_ct(checker: Checker) -> None:
    r = check(checker, "^^^^CT LOWER EXTREMITY ANGIO LEFT", "L thigh pulsatile mass 6cm")
    assert r.facts is not None and r.facts.procedure_class == "cta"
    assert r.verdict == "appropriate"


@pytest.mark.parametrize(
    ("note", "exception"),
    [
        ("CT to assess cortical involvement", True),
        ("CT to look for zonal pattern of ossification", True),
        ("? heterotopic ossification after hip surgery", True),
        ("calcified mass", False),
        ("Occupation: metal worker, no orbital foreign body on XR", False),
        ("Too big for MRI scanner (weight 230 kg)", True),
        ("Gunshot wound L thigh 2009, retained bullet fragments", True),
        ("R THR 2016", False),
        ("Dental fillings only", False),
    ],
)
def test_ct_exception_wordings(checker: Checker, note: str, exception: bool) -> None:
    r = check(checker, "73700^CT LOWER EXTREMITY WO CONTRAST^CPT4", "L thigh mass 6cm", note)
    assert (r.verdict == "appropriate") == exception


def test_mri_dye_reaction_is_a_gadolinium_reaction(checker: Checker) -> None:
    r = check(checker, MRI_WWO, "L thigh mass 3cm, XR done", "Previous reaction to MRI dye (rash)")
    assert "CONTRAST_CAUTION" in advice(r)


@pytest.mark.parametrize(
    ("text", "radiograph"),
    [
        ("XR not yet done", False),
        ("hasn't had an x-ray", False),
        ("XR normal", True),
    ],
)
def test_radiograph_negation_forms(checker: Checker, text: str, radiograph: bool) -> None:
    r = check(checker, MRI_WWO, f"L thigh lump 3cm superficial, {text}")
    assert ("RADIOGRAPH_FIRST" not in advice(r)) == radiograph


def test_intact_cortex_and_deep_ache_are_no_red_flags(checker: Checker) -> None:
    r = check(
        checker,
        MRI_WWO,
        "L thigh lump 3cm superficial, XR: soft tissue mass, cortex "
        "intact. Deep aching in the thigh at night",
    )
    assert r.facts is not None and not r.facts.bony_involvement and not r.facts.deep


def test_contracted_negation(checker: Checker) -> None:
    r = check(checker, CT, "L thigh lump 3cm superficial, doesn't have a pacemaker, XR done")
    assert flags(r) == {"CT_BEFORE_MRI"}


def test_folding_keeps_spans_and_original_words(checker: Checker) -> None:
    r = check(checker, CT, "İLKER-TEST: Left THIGH Lump, no calcification")
    assert r.facts is not None and r.facts.mass and not r.facts.calcification
    assert any(e.fact == "mass" and e.value == "Lump" for e in r.facts.evidence)


@pytest.mark.parametrize(
    ("notes", "exception"),
    [
        (("Pacemaker? no", "Metal? no", "Claustrophobic? yes"), False),
        (("Pacemaker?: no",), False),
        (("Father has a pacemaker",), False),
        (("Pacemaker? yes",), True),
    ],
)
def test_questions_and_other_people(
    checker: Checker, notes: tuple[str, ...], exception: bool
) -> None:
    r = check(checker, CT, "L thigh mass 6cm", *notes)
    assert (r.verdict == "appropriate") == exception


def test_family_history_is_not_the_patients_mass(checker: Checker) -> None:
    r = check(checker, "^^^^CT THIGH LEFT W", "Thigh pain. Family history of sarcoma")
    assert r.verdict == "no-criteria-apply"


def test_mri_reviewed_at_mdt_is_documented(checker: Checker) -> None:
    r = check(checker, BIOPSY, "L thigh mass 8cm", "MRI reviewed at sarcoma MDT, biopsy advised")
    assert r.verdict == "appropriate"
    r = check(
        checker,
        BIOPSY,
        "L thigh mass 8cm",
        "MRI not available, biopsy requested",
        control_id="R2",
        patient_id="R2^^^H",
    )
    assert flags(r) == {"BIOPSY_BEFORE_MRI"}


@pytest.mark.parametrize(
    ("text", "deep"),
    [
        ("Swollen L thigh, firm", False),
        ("L thigh myxofibrosarcoma recurrence ?", False),
        ("L thigh angiolipoma ?", False),
        ("neurofibroma L thigh ?", False),
        ("L thigh mass below the fascia, 3cm", True),
        ("L thigh lump arising from the vastus lateralis, 3cm", True),
        ("L thigh lump involving the adductor muscles, 3cm", True),
    ],
)
def test_more_mass_and_depth_words(checker: Checker, text: str, deep: bool) -> None:
    r = check(checker, MRI_WWO, f"{text}, XR done")
    assert r.verdict == "appropriate"
    assert r.facts is not None and r.facts.deep == deep


def test_icd10_code_written_in_the_text(checker: Checker) -> None:
    r = check(checker, "^^^^CT FEMUR LEFT W CONTRAST", "Dx R22.42")
    assert flags(r) == {"CT_BEFORE_MRI"}
    r = check(checker, CT, "Left thigh mass", "PMH: Z95.0", control_id="I2", patient_id="I2^^^H")
    assert "MRI_CONTRAINDICATED" in advice(r)


@pytest.mark.parametrize("note", ["Pacemaker check normal", "IM nail L femur in situ, intact"])
def test_a_normal_or_intact_device_is_still_there(checker: Checker, note: str) -> None:
    r = check(checker, CT, "L thigh mass 6cm", note)
    assert "MRI_CONTRAINDICATED" in advice(r)


def test_cortical_outline_preserved_is_no_bony_involvement(checker: Checker) -> None:
    r = check(checker, MRI_WWO, "L thigh lump 3cm, XR: cortical outline preserved")
    assert r.facts is not None and not r.facts.bony_involvement
