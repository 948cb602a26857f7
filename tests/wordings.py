"""Generated order wordings with the outcome guideline.md expects (issue 12's classes).

Each wording is a template crossed with variants (procedures coded in CPT / LOINC or as text,
sides, dates before and after the order date, contrast spellings, abbreviations, case and
punctuation), sampled with a fixed seed so the set is the same on every run. The expected verdict
and flag codes are written from guideline.md section 4, not from what the code answers:

- mri_documented: an MRI of this thigh (or with no side) done before the order is documented in
  the text: CT, biopsy and PET/CT are not flagged (their rules need "no MRI yet").
- mri_elsewhere: the MRI documented is of another body part or of the other thigh: it does not
  cover this thigh, so the CT / biopsy / PET/CT is flagged.
- mri_planned: the MRI is only planned, booked or prepared for (forms, clearance, a date after the
  order date): no MRI is done, so the order is flagged.
- negation: a negated mass is no mass (out of scope); negated findings are no red flags; a negated
  MRI is no MRI.
- abbreviation: "r/o MO" and its kin ask CT to characterise mineralisation (the exception);
  abbreviated masses, sides and contrast are read.
- size_distance: a distance ("10 cm above the knee") is not the size of the mass.
- coded_procedure: a coded OBR-4 is classified by its code (a LOINC or CPT lab test is no
  biopsy); text is read only when there is no usable code; the history's coded MRIs count by side
  and body part.

The order date of every message is 2026-11-20 (tests/hl7build.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from itertools import product

from tests.hl7build import order_message

CATEGORIES = (
    "mri_documented",
    "mri_elsewhere",
    "mri_planned",
    "negation",
    "abbreviation",
    "size_distance",
    "coded_procedure",
)

APPROPRIATE = "appropriate"
FLAGGED = "not-appropriate"
OUT = "no-criteria-apply"


@dataclass(frozen=True)
class Wording:
    """One order: its OBR-4, its indication text (OBR-31) and notes (NTE), the studies in the
    patient's history before it (ORU^R01 OBR-4 values), and the expected outcome."""

    category: str
    procedure: str
    reason: str
    verdict: str
    flags: frozenset[str] = frozenset()
    notes: tuple[str, ...] = ()
    advice_in: frozenset[str] = frozenset()  # advice codes that must be given
    advice_out: frozenset[str] = frozenset()  # advice codes that must not be given
    history: tuple[str, ...] = ()
    obx: tuple[tuple[str, str], ...] = ()  # ask-at-order-entry questions and answers
    key: str = field(default="", compare=False)

    @property
    def label(self) -> str:
        return f"{self.category}:{self.key}"


# -- variants --------------------------------------------------------------------------------

SIDES = {
    "left": ("left", "L", "Lt", "LT", "lt", "Left", "LEFT", "(L)"),
    "right": ("right", "R", "Rt", "RT", "rt", "Right", "RIGHT", "(R)"),
}
OTHER = {"left": "right", "right": "left"}
PAST_DATES = (
    "10/28",
    "11/02",
    "10/30/2026",
    "2026-10-15",
    "Oct 2026",
    "09/2026",
    "2024",
    "3/14/25",
    "11.11.2026",
    "last week",
    "2 weeks ago",
    "28 Oct",
    "1st November 2026",
)
FUTURE_DATES: tuple[str, ...] = (
    "12/18",
    "12/03/2026",
    "2026-12-01",
    "Dec 4",
    "11/27",
    "1/15/2027",
    "next week",
)
FUTURE_DATES += ("3 Dec", "15th December", "in 2 weeks")
WWO: tuple[str, ...] = (
    "w/wo",
    "W+WO",
    "WWO",
    "w/ & w/o",
    "wo/w",
    "with and without contrast",
    "w/o & w/",
)
WWO += ("W/WO CONTRAST", "w+w/o", "pre and post contrast", "+/- gad", "with/without", "w wo")
ANY_CONTRAST = (*WWO, "(no contrast)", "without contrast", "w/ contrast", "with gadolinium", "")

CT = (
    "73701^CT LOWER EXTREMITY W CONTRAST^CPT4",
    "73700^CT LOWER EXTREMITY WO CONTRAST^CPT4",
    "73702^CT LOWER EXTREMITY WO+W^C4",
    "36172-5^CT Thigh W contrast IV^LN",
    "^^^^CT FEMUR {S} W/CONTRAST",
    "^^^^CT {side} thigh without contrast",
    "RPID913^CT Lower Extremity wo and w IV contrast^RADLEX",
)
BIOPSY = (
    "20206^BIOPSY MUSCLE PERCUTANEOUS^CPT4",
    "27324^BIOPSY SOFT TISSUE THIGH DEEP^CPT4",
    "^^^^US guided core bx {S} thigh",
    "^^^^CT GUIDED CORE NEEDLE BIOPSY {S} THIGH",
    "10005^FNA BIOPSY US GUIDED FIRST LESION^CPT4",
    "^^^^Ultrasound guided biopsy {side} thigh mass",
    "^^^^US GUIDED BX THIGH R/O SARCOMA",
)
PET = ("78815^PET/CT SKULL BASE TO MID THIGH^CPT4", "78816^PET CT WHOLE BODY^CPT4")
ORDERS = {"ct": CT, "biopsy": BIOPSY, "pet": PET}
FLAG = {"ct": "CT_BEFORE_MRI", "biopsy": "BIOPSY_BEFORE_MRI", "pet": "PET_INITIAL"}
MRI_WO = (
    "73718^MRI LOWER EXTREMITY WO^CPT4",
    "^^^^MRI {S} THIGH WITHOUT CONTRAST",
    "24702-3^MR Thigh^LN",
)

MASS = (
    "{Side} thigh mass 6 cm",
    "{S} thigh mass, 6 cm, deep",
    "mass {side} thigh",
    "soft tissue mass of the {side} thigh",
    "{S} thigh lump",
    "{Side} thigh swelling, palpable firm mass",
    "enlarging mass {side} anterior thigh",
    "{S} quadriceps mass",
    "{side} thigh soft tissue tumour",
    "{S} posterior thigh mass, ? sarcoma",
)


def _side_words(side: str, rng: random.Random) -> dict[str, str]:
    word = rng.choice(("left", "right")) if side == "any" else side
    short = rng.choice(SIDES[word][1:5])
    long = rng.choice((word, word.capitalize(), word.upper()))
    return {"side": word, "Side": long, "S": short}


def _fill(template: str, words: dict[str, str]) -> str:
    out = template
    for k, v in words.items():
        out = out.replace("{" + k + "}", v)
    return out


def _styled(text: str, rng: random.Random) -> str:
    """Case and punctuation as people type them."""
    style = rng.randrange(6)
    if style == 1:
        text = text.upper()
    elif style == 2:
        text = text.lower()
    elif style == 3:
        text = text.replace(". ", "; ")
    elif style == 4:
        text = text.replace(". ", ".  ")
    return text


def _join(rng: random.Random, *parts: str) -> str:
    sep = rng.choice((". ", ". ", "; ", " - ", ". "))
    return sep.join(p for p in parts if p)


# -- categories ------------------------------------------------------------------------------

MRI_DONE = (
    "MRI {S} thigh {wwo} {date}: 6 cm enhancing mass",
    "MRI THIGH {wwo} {date}: 6 CM MASS",
    "MRI {S} thigh {wwo} {date}: 7 cm deep mass. CT for surgical planning",
    "MRI {side} thigh {wwo} done {date}",
    "MRI thigh {wwo} completed",
    "MRI {wwo} {date} showed a 6 cm lesion",
    "s/p MR {S} femur {wwo}",
    "S/P MRI {wwo} {date}",
    "MRI {wwo} reviewed at sarcoma MDT",
    "MRI of the thigh on {date} showed a deep mass",
    "MR {side} thigh {wwo} {date}: indeterminate mass",
    "{date} MRI {side} thigh {wwo}: heterogeneous mass",
    "Outside MRI {wwo} shows a 6 cm mass",
    "Prior MRI ({wwo}, {date}) suspicious for sarcoma",
    "MRI {side} thigh performed at outside hospital {date}",
    "MRI: {side} thigh mass 6 x 4 cm, {date}",
    "Had MRI {wwo} {date}",
    "MRI completed {date} - 6cm mass",
    "Recent MR imaging of the {side} thigh {wwo}: 6 cm mass",
    "MRI {S} femur {wwo} ({date}) reviewed at MDT: biopsy recommended",
    "Imaging: MRI {side} thigh {wwo} {date} - lipomatous mass with thick septa",
    "MRI thigh ({date}) {wwo}: 8 cm intramuscular lesion",
    "Known {side} thigh mass on MRI {date}",
    "MRI {wwo} of the {side} thigh dated {date}: 6 cm mass",
    "MRI {S} THIGH {wwo} ON {date} REVIEWED AT MDT",
    "MRI {date} {S} thigh: 9 cm heterogeneous intramuscular mass, sarcoma not excluded",
    "Seen in sarcoma clinic; MRI reviewed - 8cm lesion vastus lateralis",
    "Referred with MRI from outside (done {date}) showing deep mass",
    "MRI thigh {wwo} was performed on {date} and demonstrated a 6 cm lesion",
    "Prior MR imaging demonstrates a 5.5 cm lesion in the adductor compartment",
    "MRI findings: enhancing mass {side} thigh",
    "MRI result: 7 cm lipomatous lesion",
    "Per MRI, mass abuts the femoral vessels",
    "Mass characterized on MRI {date}",
    "MRI ({date}): 5 cm mass",
    "Pt had MRI at St Mary's {date}",
    "MRI obtained {date} shows 6cm mass",
    "MRI thigh: large mass",
    "MRI report attached",
    "MRI done. US core biopsy please",
    "Following MRI ({date}) which showed a deep lesion",
    "After MRI showing 8cm mass, referred for biopsy",
    "MRI confirmed intramuscular lipoma-like lesion",
    "Recent MRI c/w liposarcoma",
    "Mass measuring 7 cm on MRI",
    "US and MRI done at OSH",
    "MRI and XR reviewed",
    "Status post MRI {side} thigh {wwo} {date}",
    "Outside MRI (St Mary's, {date})",
    "MRI: 6.2 x 4 cm mass in vastus medialis",
    "MRI images on PACS",
    "MRI demonstrated a 7 cm mass",
    "{Side} thigh MRI {date} reviewed",
    "{Side} thigh mass on MRI",
    "MRI-confirmed 7 cm deep mass",
    "MRI (outside) {date} - suspicious",
    "MRI {side} femur {wwo} {date}: 6 cm mass abutting cortex",
    "MRI shows mass",
    "MRI {date} showed a mass which should be biopsied",
    "MRI showed possible liposarcoma",
    "MRI from {date} showed probable lipoma",
    "MRI showed mass extending to the knee",
    "MRI {date}: mass, biopsy recommended",
    "MRI {side} hip to knee {date}: 8 cm mass",
    "MRI showed a lesion that will need biopsy",
    "MRI {date} demonstrated a mass near the hip, plan biopsy",
    "MRI {date} (no contrast, pt refused gad): 6cm mass",
    "Patient declined contrast for MRI {date}: mass",
    "MRI {S} thigh {date} \u2013 6 cm mass",
    "MRI {side} thigh {wwo} has been performed",
    "Patient has had an MRI which showed a lipoma-like lesion",
    "MRI done {date} at Mercy, report to follow",
    "MRI report to follow",
    "MDT: MRI reviewed, proceed to biopsy",
    "Imaging reviewed at MDT (MRI + XR)",
    "MRI pending read",
    "awaiting MRI report",
    "MRI completed, report pending",
    "mri=lipoma",
    "MRI-> 6cm deep mass",
    "MRI ({date})",
    "Previous imaging: US and MRI ({date})",
    "{Side} thigh sarcoma on MRI",
    "MRI pelvis {date} showed a mass in the {side} adductor compartment",
    "MRI {S} hip {date}: mass extends into the proximal thigh",
)


OBX_DONE = (
    ("Prior MRI?", "Yes {date}"),
    ("Has the patient had an MRI of this area?", "Y"),
    ("Prior imaging", "MRI {S} thigh {date}"),
    ("Relevant prior studies", "MRI {wwo} {date} - 6 cm mass"),
    ("Previous MRI of the thigh", "Yes, {date}"),
)
OBX_NONE = (
    ("Has the patient had an MRI of this area?", "N"),
    ("Prior imaging", "none"),
    ("Prior MRI?", "No"),
    ("Previous MRI", "Not done"),
)


# The MRI's report is the only place the mass is named: a contrast word is no negation.
MRI_ONLY = (
    "MRI {S} thigh {wwo}: 6 cm enhancing mass. US core bx",
    "MRI THIGH {wwo} {date}: 6 CM MASS",
    "MRI {side} thigh {wwo} {date} - deep mass",
    "MRI {wwo} {date}: {side} thigh mass 7 cm",
    "{side} thigh MRI {wwo}: heterogeneous mass, CT for surgical planning",
)


def mri_documented(rng: random.Random) -> list[Wording]:
    out: list[Wording] = []
    for i, (template, kind) in enumerate(
        product(MRI_ONLY, ("ct", "biopsy", "pet", "ct", "biopsy"))
    ):
        words = _side_words("any", rng)
        words["wwo"] = rng.choice(
            ("w/wo", "w/o", "WO/W", "w/o contrast", "wo & w", "without and with")
        )
        words["date"] = rng.choice(PAST_DATES)
        proc = _fill(rng.choice(ORDERS[kind]), words)
        text = _styled(_fill(template, words), rng)
        out.append(Wording("mri_documented", proc, text, APPROPRIATE, key=f"only{i}"))
    for i, ((q, a), kind) in enumerate(product(OBX_DONE, ("ct", "biopsy", "pet", "biopsy"))):
        words = _side_words("any", rng)
        words["wwo"] = rng.choice(WWO)
        words["date"] = rng.choice(PAST_DATES)
        proc = _fill(rng.choice(ORDERS[kind]), words)
        mass = _fill(rng.choice(MASS), words)
        obx = ((q, _fill(a, words)),)
        out.append(Wording("mri_documented", proc, mass, APPROPRIATE, obx=obx, key=f"obx{i}"))
    for i, (template, kind) in enumerate(
        product(MRI_DONE, ("ct", "biopsy", "pet", "ct", "biopsy"))
    ):
        words = _side_words("any", rng)
        words["wwo"] = rng.choice(ANY_CONTRAST)
        words["date"] = rng.choice(PAST_DATES)
        proc = _fill(rng.choice(ORDERS[kind]), words)
        mass = _fill(rng.choice(MASS), words)
        mri = _fill(template, words).replace("  ", " ").replace(" :", ":")
        text = _styled(_join(rng, mass, mri) if i % 3 else _join(rng, mri, mass), rng)
        if i % 4 == 3:
            out.append(Wording("mri_documented", proc, mass, APPROPRIATE, notes=(mri,), key=str(i)))
        else:
            out.append(Wording("mri_documented", proc, text, APPROPRIATE, key=str(i)))
    return out


MRI_ELSEWHERE = (
    "Cardiac MRI {date} normal EF",
    "MRI brain {date} unremarkable",
    "MRI {other} thigh {date} unremarkable",
    "MRI {other} thigh {date} for hamstring tear was normal",
    "MRI lumbar spine {date}: disc bulge",
    "MRI {side} knee {date}: meniscal tear",
    "MRI of the {other} femur {wwo} {date}: normal",
    "Breast MRI {date} benign",
    "MRI pelvis {wwo} {date} normal",
    "MR {other} thigh {wwo} ({date}) negative",
    "MRI C-spine {date}",
    "MRI {side} shoulder {date} rotator cuff tear",
    "prior MRI of the {other} thigh {date}",
    "MRI abdomen {wwo} {date}: liver cyst",
    "MRI {Other} THIGH {wwo} {date}: NO MASS",
    "Cardiac MR {wwo} {date}: normal",
    "MRI head {date}",
    "Had an MRI of the {other} leg {date}",
    "MRI lumbar spine {date} for back pain",
    "MRI brain {wwo} {date} (migraine)",
    "Hx: knee MRI {date} (ACL tear)",
    "MRI of {other} hip {date}: normal",
    "MRI pelvis {date} showed fibroids",
    "Cardiac MRI showed normal LV function",
    "MRCP {date}",
    "MRI abd/pelvis for liver lesion {date}",
    "MRI {S} knee done {date}",
    "MR enterography {date}",
    "MRI of the contralateral thigh {date} normal",
    "MRI {other} femur {date} for stress fracture: healed",
    "Had MRI of lower back {date}",
    "Prostate MRI {date} PIRADS 2",
    "{Other} thigh: MRI {date} normal",
    "Wife had MRI {date}",
    "Hx {other} thigh lipoma; MRI {other} thigh {date} showed lipoma",
    "Knee: MRI {date} normal",
)


def mri_elsewhere(rng: random.Random) -> list[Wording]:
    out: list[Wording] = []
    for i, (template, kind) in enumerate(product(MRI_ELSEWHERE, ("ct", "biopsy", "pet", "biopsy"))):
        words = _side_words("any", rng)
        words["other"] = OTHER[words["side"]]
        words["Other"] = words["other"].upper()
        words["wwo"] = rng.choice(ANY_CONTRAST)
        words["date"] = rng.choice(PAST_DATES)
        # The order names this side in its procedure text, or carries it in the mass text only.
        proc = _fill(rng.choice(ORDERS[kind]), words)
        mass = _fill(rng.choice(MASS), words)
        if "{other}" in template or "{Other}" in template:
            mass = "New " + mass
        mri = _fill(template, words).replace("  ", " ").replace(" :", ":")
        text = _styled(_join(rng, mri, mass) if i % 2 else _join(rng, mass, mri), rng)
        out.append(
            Wording("mri_elsewhere", proc, text, FLAGGED, frozenset({FLAG[kind]}), key=str(i))
        )
    return out


MRI_PLANNED = (
    "MRI appt {fdate}",
    "MRI {side} thigh booked for {fdate}",
    "MRI screening form completed, cleared for MRI",
    "MRI safety questionnaire done",
    "MRI scheduled {fdate}",
    "MRI {wwo} requested",
    "Pt cleared for MRI",
    "MRI ordered, pending",
    "awaiting MRI {wwo}",
    "MRI {fdate}",
    "MRI {wwo} on {fdate}",
    "Will get MRI {wwo} after biopsy",
    "MRI to follow",
    "Plan: MRI thigh {wwo}",
    "MRI thigh {wwo} next week",
    "MRI consent signed",
    "Insurance approved MRI {wwo}",
    "MRI slot {fdate} 14:00",
    "Needs MRI {wwo}",
    "MRI not yet done",
    "MRI pending insurance authorization",
    "MRI auth obtained, appt {fdate}",
    "MRI checklist completed",
    "MRI on waitlist",
    "MRI requested but not yet performed",
    "MRI to be done next week",
    "MRI safety screening done, no implants",
    "Will need MRI after",
    "MRI date TBC",
    "Referred for MRI",
    "MRI {wwo} ordered {fdate}",
    "Recommend MRI {wwo} prior to biopsy",
    "MRI in 2 weeks",
    "MRI (requested)",
    "MRI due {fdate}",
    "MRI to follow after biopsy",
    "MRI not yet available",
    "MRI - N/A",
    "MRI order placed",
    "MRI?",
    "Consider MRI",
    "MRI when available",
    "MRI cancelled",
    "MRI was cancelled (claustrophobia)",
    "MRI declined by patient",
    "MRI could not be completed due to claustrophobia",
    "MRI attempted but aborted",
    "MRI insurance denied",
    "Awaiting MRI slot",
    "Seen by Mr Smith in clinic",
    "Referred by Mr Jones, orthopaedics",
    "MR# 448812",
    "Echo: moderate MR",
    "For MRI {wwo}",
    "MRI Friday",
    "Get MRI",
    "MRI after biopsy",
    "MRI scheduled {fdate} but pt wants biopsy first",
    "Pt refused MRI",
    "MRI refused",
)


def mri_planned(rng: random.Random) -> list[Wording]:
    out: list[Wording] = []
    for i, (template, kind) in enumerate(product(MRI_PLANNED, ("ct", "biopsy", "pet", "biopsy"))):
        words = _side_words("any", rng)
        words["wwo"] = rng.choice(WWO)
        words["fdate"] = rng.choice(FUTURE_DATES)
        proc = _fill(rng.choice(ORDERS[kind]), words)
        mass = _fill(rng.choice(MASS), words)
        plan = _fill(template, words)
        text = _join(rng, mass, plan) if i % 3 else _join(rng, plan, mass)
        # "Mr Smith" is a title by its case alone ("MR" is a study): kept as typed.
        text = text if "Mr" in plan else _styled(text, rng)
        out.append(Wording("mri_planned", proc, text, FLAGGED, frozenset({FLAG[kind]}), key=str(i)))
    return out


NO_MASS = (
    "{Side} thigh pain, mass not palpable",
    "Palpable mass: none. {Side} thigh pain after running",
    "No mass. {S} thigh ache",
    "{Side} thigh pain; denies lump",
    "{Side} thigh discomfort, no palpable mass",
    "Mass? No. {Side} thigh pain",
    "{Side} thigh pain. Mass: none",
    "{S} thigh pain, no mass felt",
    "{Side} thigh pain. No lump or swelling",
    "{S} thigh ache, mass not present on exam",
    "Palpable mass - none. {S} thigh pain",
    "{Side} thigh pain without mass",
    "Thigh pain. Exam: no palpable mass",
    "{S} thigh pain; mass: not palpable",
    "Mass - not felt. {S} thigh pain",
    "{S} thigh tenderness, no lump palpated",
    "{S} thigh pain, negative for mass",
    "{S} thigh ache, no masses",
    "Lump? no. {S} thigh pain",
    "Pain {S} thigh, mass not appreciated",
    "{S} thigh pain, mass ruled out clinically",
    "{S} thigh pain w/o mass",
    "{S} thigh pain. MRI w/o contrast: no mass",
)
CALM_FINDINGS = (
    "3 cm superficial mass {side} thigh. No calcification. Not deep. Not painful",
    "2 cm subcutaneous lump {S} thigh, non-tender, no growth",
    "Small superficial mass {side} thigh 2.5 cm, no calcification on XR, not growing",
    "{S} thigh subcutaneous mass 3cm, mobile, no pain, no calcifications",
    "superficial {side} thigh lump 1.5 cm. Denies pain. XR: no calcification, cortex intact",
)
# A change of the mass is no absence of it: in scope, and CT before MRI is flagged.
MASS_CHANGED = (
    "No change in {S} thigh mass since 2024",
    "{Side} thigh mass, no interval growth of the mass",
    "No significant change of the {side} thigh lump",
)
NO_MRI = (
    "No prior MRI",
    "MRI not done",
    "Never had an MRI",
    "MRI: none",
    "no MRI of the thigh yet",
    "No MRI available",
    "MRI not performed",
    "Prior MRI: none",
    "MRI? no",
    "Has not had MRI",
)


def negation(rng: random.Random) -> list[Wording]:
    out: list[Wording] = []
    for i, (template, kind) in enumerate(product(NO_MASS, ("ct", "ct", "mri"))):
        words = _side_words("any", rng)
        proc = _fill(rng.choice(CT if kind == "ct" else MRI_WO), words)
        text = _styled(_fill(template, words), rng)
        out.append(Wording("negation", proc, text, OUT, key=f"mass{i}"))
    for i, template in enumerate(CALM_FINDINGS * 4):
        words = _side_words("any", rng)
        proc = _fill(rng.choice(MRI_WO), words)
        text = _styled(_fill(template, words) + ". XR femur done", rng)
        out.append(
            Wording(
                "negation",
                proc,
                text,
                APPROPRIATE,
                advice_out=frozenset({"MRI_ADD_CONTRAST", "REFER_SARCOMA_CENTRE"}),
                key=f"calm{i}",
            )
        )
    for i, template in enumerate(MASS_CHANGED * 3):
        words = _side_words("any", rng)
        proc = _fill(rng.choice(CT), words)
        text = _styled(_fill(template, words), rng)
        out.append(
            Wording("negation", proc, text, FLAGGED, frozenset({"CT_BEFORE_MRI"}), key=f"chg{i}")
        )
    for i, ((q, a), kind) in enumerate(product(OBX_NONE, ("ct", "biopsy", "pet"))):
        words = _side_words("any", rng)
        proc = _fill(rng.choice(ORDERS[kind]), words)
        mass = _fill(rng.choice(MASS), words)
        out.append(
            Wording(
                "negation",
                proc,
                mass,
                FLAGGED,
                frozenset({FLAG[kind]}),
                obx=((q, a),),
                key=f"obx{i}",
            )
        )
    for i, (template, kind) in enumerate(product(NO_MRI, ("ct", "biopsy", "pet"))):
        words = _side_words("any", rng)
        proc = _fill(rng.choice(ORDERS[kind]), words)
        mass = _fill(rng.choice(MASS), words)
        text = _styled(_join(rng, mass, template), rng)
        out.append(
            Wording("negation", proc, text, FLAGGED, frozenset({FLAG[kind]}), key=f"nomri{i}")
        )
    return out


MINERAL_ASK = (
    "r/o MO",
    "? MO",
    "R/O MO vs osteosarcoma",
    "MO vs extraskeletal osteosarcoma",
    "rule out myositis ossificans",
    "?myositis ossificans",
    "ddx MO",
    "eval for heterotopic ossification",
    "characterise calcification",
    "assess mineralisation pattern",
    "query MO",
    "r/o myositis ossificans vs sarcoma",
    "?MO. CT to assess calcification",
    "ddx myositis ossificans vs sarcoma",
    "calcified, query MO",
    "concern for MO after trauma",
    "likely MO, CT to characterise",
    "MO vs parosteal OS",
)
MASS_ABBREV = (
    "STM {S} thigh",
    "{S} thigh STM 4cm",
    "r/o sarcoma {S} thigh mass",
    "{S} thigh sts?",
    "{S} ant thigh lump x 3 mo",
    "mass {S} thigh, hx 6 mo",
    "{S} thigh mass ?lipoma",
    "{S} thigh mass (6cm), ? STS",
    "{S} thigh mass for 3 mo or longer",
    "{S} thigh lump, 2 mo vs 3 mo duration",
)


def abbreviation(rng: random.Random) -> list[Wording]:
    out: list[Wording] = []
    for i, template in enumerate(MINERAL_ASK * 4):
        words = _side_words("any", rng)
        proc = _fill(rng.choice(CT), words)
        mass = _fill(rng.choice(MASS), words)
        text = _styled(_join(rng, mass, "XR: calcification", _fill(template, words)), rng)
        out.append(
            Wording(
                "abbreviation",
                proc,
                text,
                APPROPRIATE,
                advice_in=frozenset({"CT_FOR_MINERALISATION"}),
                key=f"mo{i}",
            )
        )
    # An abbreviated mass and side: in scope, and a CT before MRI is flagged.
    for i, (template, kind) in enumerate(product(MASS_ABBREV, ("ct", "biopsy", "ct"))):
        words = _side_words("any", rng)
        proc = _fill(rng.choice(ORDERS[kind]), words)
        text = _styled(_fill(template, words), rng)
        out.append(
            Wording("abbreviation", proc, text, FLAGGED, frozenset({FLAG[kind]}), key=f"m{i}")
        )
    # "?MO" alone names the mass: CT asks the mineralisation question; a biopsy still needs MRI.
    for i, (template, kind) in enumerate(
        product(
            ("{S} thigh ?MO", "r/o MO {side} thigh", "{Side} thigh: query MO"), ("ct", "biopsy")
        )
    ):
        words = _side_words("any", rng)
        proc = _fill(rng.choice(ORDERS[kind]), words)
        text = _styled(_fill(template, words) + ". XR: calcification", rng)
        if kind == "ct":
            advice = frozenset({"CT_FOR_MINERALISATION"})
            out.append(
                Wording("abbreviation", proc, text, APPROPRIATE, advice_in=advice, key=f"mo_{i}")
            )
        else:
            flag = frozenset({FLAG[kind]})
            out.append(Wording("abbreviation", proc, text, FLAGGED, flag, key=f"mo_{i}"))
    # Contrast written every way on an MRI of the thigh: without and with needs no advice.
    for i, wwo in enumerate(WWO * 2):
        words = _side_words("any", rng)
        proc = _fill(f"^^^^MRI {{S}} THIGH {wwo}", words)
        mass = _fill(rng.choice(MASS), words)
        text = _styled(_join(rng, mass, "XR done"), rng)
        out.append(
            Wording(
                "abbreviation",
                proc.replace("&", "\\T\\"),
                text,
                APPROPRIATE,
                advice_out=frozenset({"MRI_ADD_CONTRAST", "MRI_NO_PRECONTRAST"}),
                key=f"c{i}",
            )
        )
    return out


DISTANCES = (
    "{d} cm above the knee",
    "{d} cm proximal to the patella",
    "{d}cm from the greater trochanter",
    "located {d} cm distal to the hip",
    "{d} cm below the ASIS",
    "{d} cm superior to the knee joint",
    "{d} cm above the popliteal fossa",
    "{d} cm from the knee",
    "centred {d} cm above the joint line",
    "{d} cm distal to the inguinal ligament",
    "{d} cm scar from prior excision nearby",
    "healed {d} cm incision",
)
SMALL: tuple[str, ...] = (
    "1.5 cm superficial mass",
    "superficial lump 2 cm",
    "2 x 1.5 cm subcutaneous nodule",
)
SMALL += ("small superficial mass (3 cm)", "25 mm subcutaneous lump")
BIG = ("7 cm mass", "mass 8 x 5 cm", "6.5cm lump", "deep mass 3 cm", "90 mm mass")


def size_distance(rng: random.Random) -> list[Wording]:
    out: list[Wording] = []
    for i, (template, small) in enumerate(
        product(DISTANCES, (True, True, False, True, False, True))
    ):
        words = _side_words("any", rng)
        words["d"] = str(rng.choice((6, 7, 8, 10, 12, 15, 20)))
        proc = _fill(rng.choice(MRI_WO), words)
        mass = rng.choice(SMALL if small else BIG)
        where = _fill(template, words)
        text = _styled(f"{mass}, {_fill('{side} thigh', words)}, {where}. XR done", rng)
        none: frozenset[str] = frozenset()
        advice_in = none if small else frozenset({"MRI_ADD_CONTRAST"})
        advice_out = frozenset({"MRI_ADD_CONTRAST", "REFER_SARCOMA_CENTRE"}) if small else none
        out.append(
            Wording(
                "size_distance",
                proc,
                text,
                APPROPRIATE,
                advice_in=advice_in,
                advice_out=advice_out,
                key=str(i),
            )
        )
    return out


LABS = (
    "13952-7^Hepatitis B virus core Ab [Presence] in Serum or Plasma^LN",
    "16933-4^Hepatitis B virus core Ab [Presence] in Serum^LN",
    "2160-0^Creatinine [Mass/volume] in Serum or Plasma^LN",
    "24467-3^CD3+CD4+ (T4 helper) cells [#/volume] in Blood^LN",
    "86704^HEPATITIS B CORE ANTIBODY TOTAL^CPT4",
    "85025^CBC WITH AUTO DIFF^CPT4",
    "80053^COMPREHENSIVE METABOLIC PANEL^CPT4",
    "86706^HEP B SURFACE ANTIBODY^CPT4",
    "88305^TISSUE EXAM BY PATHOLOGIST^CPT4",
    "13952-7^HBV core Ab^LN",
    "LAB123^HEP B CORE AB^LOCAL",
    "5196-1^Hepatitis B virus surface Ag [Presence] in Serum^LN",
    "^^^^Hepatitis B core antibody",
    "2951-2^Sodium [Moles/volume] in Serum or Plasma^LN",
    "36415^VENIPUNCTURE^CPT4",
    "87040^BLOOD CULTURE^CPT4",
    "^^^^CBC",
    "^^^^CT/NG PCR",
    "LAB77^Anti-HBc total^LOCAL",
    "88172^CYTOPATHOLOGY FNA EVALUATION^CPT4",
)
CODED_IMAGING = (
    ("73700^^CPT4", "ct"),
    ("73701-LT^^CPT", "ct"),
    ("73702^CT LOWER EXTREMITY W/O & W CONTRAST^C4", "ct"),
    ("20206^^CPT4", "biopsy"),
    ("27323^BIOPSY SOFT TISS THIGH/KNEE SUPERFICIAL^CPT4", "biopsy"),
    ("10005^^CPT", "biopsy"),
    ("78815^^CPT4", "pet"),
    ("36338-2^CT Thigh WO and W contrast IV^LN", "ct"),
    ("^^^^CT THIGH LT WO CONTRAST", "ct"),
    ("^^^^US GUIDED CORE NEEDLE BX {S} THIGH", "biopsy"),
    ("^^^^FNA {side} thigh lump under US", "biopsy"),
    ("^^^^TRU-CUT BIOPSY {S} THIGH", "biopsy"),
)
HISTORY_MRI = (
    ("73720^MRI LOWER EXTREMITY WO+W^CPT4", "same"),
    ("24703-1^MR Thigh WO and W contrast IV^LN", "same"),
    ("73718^MRI {SAME} LOWER EXTREMITY WO^CPT4", "same"),
    ("^^^^MRI {SAME} THIGH W/WO", "same"),
    ("^^^^MRI {OTHER} THIGH W/WO", "other"),
    ("73720^MRI {OTHER} LOWER EXTREMITY WO+W^CPT4", "other"),
    ("70553^MRI BRAIN WO+W^CPT4", "other"),
    ("75561^CARDIAC MRI W/WO^CPT4", "other"),
    ("73721^MRI {SAME} KNEE WO^CPT4", "other"),
    ("72148^MRI LUMBAR SPINE WO^CPT4", "other"),
    ("13952-7^Hepatitis B virus core Ab^LN", "other"),
)


def coded_procedure(rng: random.Random) -> list[Wording]:
    out: list[Wording] = []
    for i, lab in enumerate(LABS * 4):
        words = _side_words("any", rng)
        mass = _fill(rng.choice(MASS), words)
        out.append(Wording("coded_procedure", lab, _styled(mass, rng), OUT, key=f"lab{i}"))
    for i, (proc, kind) in enumerate(CODED_IMAGING * 3):
        words = _side_words("any", rng)
        if "LT" in proc:
            words = {"side": "left", "Side": "Left", "S": "L"}
        mass = _fill(rng.choice(MASS), words)
        out.append(
            Wording(
                "coded_procedure",
                _fill(proc, words).replace("&", "\\T\\"),
                _styled(mass, rng),
                FLAGGED,
                frozenset({FLAG[kind]}),
                key=f"img{i}",
            )
        )
    for i, ((prior, which), kind) in enumerate(product(HISTORY_MRI, ("ct", "biopsy", "biopsy"))):
        words = _side_words("any", rng)
        words["SAME"] = words["side"].upper()
        words["OTHER"] = OTHER[words["side"]].upper()
        proc = _fill(rng.choice(ORDERS[kind]), words)
        mass = _fill(rng.choice(MASS), words)
        covered = which == "same"
        out.append(
            Wording(
                "coded_procedure",
                proc,
                _styled(mass, rng),
                APPROPRIATE if covered else FLAGGED,
                frozenset() if covered else frozenset({FLAG[kind]}),
                history=(_fill(prior, words),),
                key=f"hist{i}",
            )
        )
    return out


def cases() -> list[Wording]:
    """Every generated wording, the same on every run."""
    out: list[Wording] = []
    for make in (
        mri_documented,
        mri_elsewhere,
        mri_planned,
        negation,
        abbreviation,
        size_distance,
        coded_procedure,
    ):
        out.extend(make(random.Random(f"wordings-{make.__name__}")))
    return out


def _escape(text: str) -> str:
    return text.replace("\\", "\\E\\").replace("&", "\\T\\").replace("|", "\\F\\")


def messages(w: Wording, n: int) -> list[bytes]:
    """The HL7 messages of one wording: its history (ORU^R01 final results), then the order."""
    patient = f"WORD{n:05d}^^^HOSP^MR"
    out = [
        order_message(
            control_id=f"H{n:05d}{i}",
            procedure=prior,
            reason="^thigh",
            msg_type="ORU^R01",
            patient_id=patient,
            placer=f"HP{n:05d}{i}",
        )
        for i, prior in enumerate(w.history)
    ]
    out.append(
        order_message(
            control_id=f"W{n:05d}",
            procedure=w.procedure,
            reason=f"^{_escape(w.reason)}",
            notes=tuple(_escape(x) for x in w.notes),
            obx=tuple((_escape(q), _escape(a)) for q, a in w.obx),
            patient_id=patient,
            placer=f"WP{n:05d}",
        )
    )
    return out


def problems(w: Wording, verdict: str, flags: set[str], advice: set[str]) -> list[str]:
    """How an outcome differs from the wording's expected one (empty: right)."""
    out = []
    if verdict != w.verdict:
        out.append(f"verdict {verdict}, expected {w.verdict}")
    if flags != set(w.flags):
        out.append(f"flags {sorted(flags)}, expected {sorted(w.flags)}")
    if not w.advice_in <= advice:
        out.append(f"advice {sorted(advice)} lacks {sorted(w.advice_in - advice)}")
    if w.advice_out & advice:
        out.append(f"advice {sorted(w.advice_out & advice)} not expected")
    return out


def false_flag(w: Wording, verdict: str) -> bool:
    """Flagged when the guideline does not call for a flag: the worst error."""
    return verdict == FLAGGED and w.verdict != FLAGGED
