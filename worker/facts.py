"""Extracts the facts of guideline.md section 3 from one order, with where each came from.

Sources are read in order of trust: OBR-4 (codes, then text), OBR-24 / IPC-5 modality, OBR-13,
OBR-31, ORC-16, DG1-3/4, OBX-3/5, NTE, then patient-level notes and allergies. Codes go through
the site code map, then the standard code tables; unknown codes fall back to the text.
"""

from __future__ import annotations

import re
from datetime import date

from worker.guideline import CodeMapEntry, DiagnosisDef, Knowledge, ProcedureCodeDef
from worker.imaging import lexicon as context_lexicon
from worker.imaging import mri_mentions
from worker.language import reading
from worker.models import (
    Coded,
    Contrast,
    Evidence,
    Laterality,
    Order,
    OrderFacts,
    ParsedMessage,
    ProcedureClass,
    Region,
    TextSource,
)
from worker.text import affirmed, affirmed_hits, clause_bounds, folded, largest_size_cm

_CLASS_ORDER: tuple[ProcedureClass, ...] = (
    "lab",
    "biopsy",
    "excision",
    "pet",
    "other",
    "mra",
    "cta",
    "mri",
    "ct",
    "us",
    "radiograph",
    "guidance",
)
_REGION_ORDER: tuple[Region, ...] = (
    "whole_body",
    "thigh",
    "knee",
    "hip",
    "ankle",
    "lower_extremity",
    "chest",
    "abdomen",
    "pelvis",
    "spine",
    "head",
    "upper_extremity",
)
_LIMB_REGIONS = {"thigh", "lower_extremity", "knee", "hip", "ankle", "unknown"}
_ONE_LETTER = re.compile(r"^\W*\w\W*$")
_ICD10_IN_TEXT = re.compile(r"(?<![\w.])[A-TV-Z]\d{2}\.\d{1,4}[A-Z]?(?![\w.])")


# A size written as a lower bound: "> 5 cm", "more than 5 cm" (at the threshold, a red flag).
_ABOVE_WORDS = (">", "more", "greater", "over", "larger", "bigger", "exceed")


def procedure_text(order: Order) -> str:
    """The ordered procedure's text (OBR-4.2/.5, OBR-44); free text sent in the code component
    ("CT FEMUR LT W/CONTRAST" in OBR-4.1) counts as text."""
    seen: list[str] = []
    for p in order.procedures:
        text = p.text or (p.code if any(ch.isspace() for ch in p.code) else "")
        if text and text not in seen:
            seen.append(text)
    return " ".join(seen)


def classify_text(text: str, kn: Knowledge) -> ProcedureClass | None:
    text = folded(text)
    for cls in _CLASS_ORDER:
        pattern = kn.procedure_class.get(cls)
        if pattern is not None and pattern.search(text):
            return cls
    return None


def contrast_from_text(text: str, kn: Knowledge) -> Contrast:
    """Contrast of a procedure text: "MRI THIGH WO/W", "CT FEMUR LT W/CONTRAST", ..."""
    text = folded(text)
    if kn.contrast["without_and_with"].search(text):
        return "without_and_with"
    without = list(kn.contrast["without"].finditer(text))
    blanked = text
    for m in without:
        blanked = blanked[: m.start()] + " " * (m.end() - m.start()) + blanked[m.end() :]
    strong = kn.contrast["with"].search(blanked)
    if without and strong:
        return "without_and_with"
    if without:
        return "without"
    if strong or kn.contrast["with_weak"].search(blanked):
        return "with"
    return "unspecified"


def region_from_text(text: str, kn: Knowledge) -> Region | None:
    text = folded(text)
    for region in _REGION_ORDER:
        pattern = kn.region.get(region)
        if pattern is not None and pattern.search(text):
            return region
    return None


def laterality_from_text(text: str, kn: Knowledge, allow_letters: bool) -> Laterality | None:
    """The side a text names. One-letter sides ("L", "R") count in a procedure text
    (*allow_letters*), elsewhere only right before a site word ("L thigh", "R. leg")."""
    found = set()
    text = folded(text)
    letter_site = kn.laterality["letter_site"]
    for side in ("bilateral", "left", "right"):
        for m in kn.laterality[side].finditer(text):
            if (
                allow_letters
                or not _ONE_LETTER.match(m.group(0))
                or letter_site.match(text, m.start() + len(m.group(0).rstrip()))
            ):
                found.add(side)
                break
    if "bilateral" in found or {"left", "right"} <= found:
        return "bilateral"
    if found:
        side = found.pop()
        return "left" if side == "left" else "right"
    return None


def age_on(birth: date | None, on: date) -> int | None:
    if birth is None:
        return None
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


class _Collector:
    """Collects facts and their evidence."""

    def __init__(self) -> None:
        self.evidence: list[Evidence] = []

    def note(self, fact: str, value: str, source: str) -> None:
        self.evidence.append(Evidence(fact=fact, value=value[:120], source=source))

    def first_affirmed(
        self, fact: str, pattern: re.Pattern[str], texts: list[TextSource], kn: Knowledge
    ) -> bool:
        for src in texts:
            if src.negated:
                continue
            hit = affirmed(pattern, src.text, kn)
            if hit is not None:
                self.note(fact, hit.words, src.source)
                return True
        return False

    def first_study(
        self,
        fact: str,
        pattern: re.Pattern[str],
        texts: list[TextSource],
        kn: Knowledge,
        planned: bool = False,
        side: Laterality = "unknown",
        study: bool = True,
        elsewhere: re.Pattern[str] | None = None,
    ) -> bool:
        """Like first_affirmed, for a study or an object that must concern this thigh: read as
        a study (*study*: "XR negative" is a done XR), without the planned ones (*planned*),
        and not when its clause names the side opposite *side* or a body part *elsewhere*."""
        other = _opposite(side)
        for src in texts:
            if src.negated:
                continue
            for hit in affirmed_hits(pattern, src.text, kn, study=study, planned=planned):
                low = folded(src.text)
                left, right = clause_bounds(low, hit.start, hit.end, kn)
                clause = low[left:right]
                if other is not None and laterality_from_text(clause, kn, False) == other:
                    continue
                if elsewhere is not None and elsewhere.search(clause):
                    continue
                self.note(fact, hit.words, src.source)
                return True
        return False


_SENTENCE = re.compile(r"[;!?\n]|\.(?!\d)|\s[-–—]\s")


_PAST_MASS = re.compile(
    r"\b(?:hx|h/o|history\s+of|prior|previous|past|old|excised|resected|removed|s/p|status\s+post)\b"
)
_NEW_MASS = re.compile(
    r"\b(?:new|newly|now|current(?:ly)?|presents?|presenting|enlarging|growing|increasing)\b"
)
_MASS_HITS = 8
"""Mass words looked at for the side of the mass, at most."""


def _mass_side(text: str, kn: Knowledge) -> Laterality | None:
    """The side named in the sentence of the mass of *text*: of the first mass words that are
    not negated, one said to be new, else the first not about a past one, else the first ("Hx R
    thigh lipoma. New L thigh lump": left; "MRI right thigh 2024 normal. New mass of the left
    thigh": left), or None."""
    low = folded(text)
    first: Laterality | None = None
    current: Laterality | None = None
    for i, hit in enumerate(affirmed_hits(kn.terms["mass_strong"], text, kn)):
        if i >= _MASS_HITS:
            break
        lo = max(0, hit.start - 200)
        start = lo
        for m in _SENTENCE.finditer(low, lo, hit.start):
            start = m.end()
        end_m = _SENTENCE.search(low, hit.end, min(len(low), hit.end + 200))
        end = end_m.start() if end_m else min(len(low), hit.end + 200)
        side = laterality_from_text(low[start:end], kn, allow_letters=False)
        if side is None:
            continue
        if _NEW_MASS.search(low, start, end):
            return side
        if not _PAST_MASS.search(low, start, end):
            current = current or side
        first = first or side
    return current or first


def _opposite(side: Laterality) -> Laterality | None:
    return "right" if side == "left" else "left" if side == "right" else None


def _code_meaning(
    order: Order, kn: Knowledge
) -> tuple[ProcedureCodeDef | CodeMapEntry | None, Coded | None]:
    """The most specific coded meaning of the ordered procedure (biopsy codes win)."""
    hits = []
    for p in order.procedures:
        meaning = kn.lookup_procedure(p.code, p.system)
        if meaning is not None:
            hits.append((meaning, p))
    if not hits:
        return None, None
    for meaning, p in hits:
        if meaning.class_ == "biopsy":
            return meaning, p
    for meaning, p in hits:
        if meaning.class_ != "guidance":
            return meaning, p
    return hits[0]


MAX_TEXT_CHARS = 32_000
"""Characters of text read per order by default (ORDERCHECK_MAX_TEXT_CHARS): the procedure text,
then the order's texts and the message's notes in order of trust. Real orders hold a few hundred;
the rest of a larger one is not read (the order is judged on its codes and the first part)."""


def _within(sources: list[TextSource], budget: int) -> tuple[list[TextSource], int]:
    """*sources* cut to *budget* characters in all, in order, and the characters left out."""
    kept: list[TextSource] = []
    left_out = 0
    for src in sources:
        if len(src.text) <= budget:
            kept.append(src)
            budget -= len(src.text)
            continue
        left_out += len(src.text) - budget
        if budget:
            kept.append(src.model_copy(update={"text": src.text[:budget]}))
        budget = 0
    return kept, left_out


Diagnoses = list[tuple[Coded, DiagnosisDef]]


def extract(
    order: Order,
    message: ParsedMessage,
    kn: Knowledge,
    today: date,
    siblings: list[Order] | None = None,
    max_text_chars: int = MAX_TEXT_CHARS,
) -> OrderFacts:
    """The facts of one order. Pure: reads only its arguments. *today* is the day the order is
    read, for an order and message without a date. At most *max_text_chars* of text are read;
    facts.text_left_out counts the characters that were not."""
    kn, lang = reading(order, message, kn)  # English plus the order's language (MSH-19 or text)
    col = _Collector()
    if lang.code != "en":
        col.note("language", lang.code, "MSH-19" if lang.how == "MSH-19" else "order text")
    facts = OrderFacts()
    proc_text = procedure_text(order)[:max_text_chars]
    facts.procedure_text = proc_text
    _procedure(facts, order, proc_text, kn, col)
    indication, facts.text_left_out = _within(
        [*order.texts, *message.context], max_text_chars - len(proc_text)
    )
    with_proc = ([TextSource(source="OBR-4", text=proc_text)] if proc_text else []) + indication
    diagnoses = _diagnoses(indication, kn)
    facts.laterality = _laterality(proc_text, diagnoses, indication, kn)
    _indication(facts, with_proc, indication, diagnoses, kn, col)
    _red_flags(facts, with_proc, indication, diagnoses, kn, col)
    ref = order.ordered_at or message.header.timestamp
    on = ref.date() if ref is not None else today
    _studies(facts, order, siblings or [], indication, on, kn, col)
    if facts.procedure_class == "pet":  # staging or a known diagnosis: evidence PET_INITIAL reads
        col.first_affirmed("known_diagnosis", kn.terms["known_diagnosis"], indication, kn)
    facts.mri_contraindications = _contraindications(  # type: ignore[assignment]
        indication, diagnoses, facts.laterality, kn, col
    )
    facts.contrast_cautions = _cautions(indication, diagnoses, kn, col)  # type: ignore[assignment]
    # Patient and provider.
    age = age_on(message.patient.birth_date, on)
    if age is not None and age < 0:
        age = age_on(message.patient.birth_date, today)
    facts.age_years = age
    facts.adult = age is None or age >= kn.guideline.guideline.adult_age_years
    facts.ordering_provider = order.ordering_provider
    facts.evidence = col.evidence
    return facts


def _procedure(
    facts: OrderFacts, order: Order, proc_text: str, kn: Knowledge, col: _Collector
) -> None:
    """The procedure's class, contrast, region and joint code (facts), from its code, then its
    text, then its modality."""
    meaning, coded = _code_meaning(order, kn)
    text_class = classify_text(proc_text, kn) if proc_text else None
    guided = (
        bool(proc_text) and kn.procedure_class["guidance"].search(folded(proc_text)) is not None
    )
    cls: ProcedureClass | None = None
    if meaning is not None and coded is not None:
        facts.procedure_code = f"{coded.system or '?'} {coded.code}".strip()
        col.note(
            "procedure_class",
            f"{coded.code} {coded.text}".strip(),
            f"OBR-4 code ({coded.system or 'no system'})",
        )
        cls = meaning.class_
        facts.contrast = meaning.contrast
        facts.region = meaning.region
        facts.joint_code = meaning.joint
    if cls is None or cls in ("other", "unknown"):
        if text_class is not None:
            cls = text_class
            col.note("procedure_class", proc_text, "OBR-4 text")
        elif order.modality and order.modality in kn.vocab.modality:
            cls = kn.vocab.modality[order.modality]
            col.note("procedure_class", order.modality, "OBR-24/IPC-5 modality")
    if cls in ("ct", "us", "mri", "radiograph", "guidance") and (guided or cls == "guidance"):
        # Image guidance (a guidance code, or "CT guided ..." text) is a procedure: a biopsy
        # when a biopsy word stands in the order, else not an imaging study.
        texts = [proc_text, *(t.text for t in order.texts)]
        if any(kn.procedure_class["biopsy"].search(folded(t)) for t in texts):
            cls = "biopsy"
            col.note("procedure_class", "image-guided biopsy", "OBR-4 and indication text")
        else:
            cls = "guidance"
    facts.procedure_class = cls or "unknown"
    if facts.contrast == "unspecified" and facts.procedure_class in ("ct", "mri", "cta", "mra"):
        facts.contrast = contrast_from_text(proc_text, kn)
    elif facts.procedure_class in ("radiograph", "us", "biopsy", "excision", "pet"):
        facts.contrast = "none" if facts.contrast == "unspecified" else facts.contrast
    text_region = region_from_text(proc_text, kn)
    if text_region is not None and (
        facts.region == "unknown" or (facts.region == "lower_extremity" and text_region == "thigh")
    ):
        facts.region = text_region
    if (
        facts.region in ("knee", "hip", "ankle")
        and facts.procedure_class in ("mri", "us")
        and meaning is None
    ):
        facts.joint_code = True  # a joint examination ordered by text


def _diagnoses(indication: list[TextSource], kn: Knowledge) -> Diagnoses:
    """The ICD-10-CM diagnoses of the indication: its codes, and codes written in its text
    ("Dx R22.42 left thigh mass", with their dot only)."""
    codes = [c for src in indication for c in src.codes]
    codes += [
        Coded(code=m.group(0), system="I10")
        for src in indication
        if not src.negated
        for m in _ICD10_IN_TEXT.finditer(src.text)
    ]
    return [
        (c, d)
        for c in codes
        for d in kn.lookup_diagnosis(c.code)
        if c.system.upper() in ("", *kn.codes.systems.get("I10", []), "I10")
        or kn.system_alias.get(c.system.upper()) == "I10"
    ]


def _laterality(
    proc_text: str, diagnoses: Diagnoses, indication: list[TextSource], kn: Knowledge
) -> Laterality:
    """The side: procedure text, diagnosis codes, then indication text."""
    side = laterality_from_text(proc_text, kn, allow_letters=True) if proc_text else None
    if side is None:
        sides = {d.laterality for _, d in diagnoses if d.laterality != "unknown"}
        if sides:
            side = "bilateral" if len(sides) > 1 else sides.pop()
    if side is None:
        for src in indication:
            side = laterality_from_text(src.text, kn, allow_letters=False)
            if side == "bilateral":  # both sides named: the side of the mass, when it has one
                side = _mass_side(src.text, kn) or side
            if side:
                break
    return side or "unknown"


def _indication(
    facts: OrderFacts,
    with_proc: list[TextSource],
    indication: list[TextSource],
    diagnoses: Diagnoses,
    kn: Knowledge,
    col: _Collector,
) -> None:
    """The indication: a soft-tissue mass (not a trauma, not a bone lesion) of the thigh."""
    facts.trauma = col.first_affirmed("trauma", kn.terms["trauma"], with_proc, kn) or any(
        d.meaning == "trauma" for _, d in diagnoses
    )
    strong = col.first_affirmed("mass", kn.terms["mass_strong"], with_proc, kn)
    # A weak word (swelling, lesion) is no mass next to a trauma, another cause of swelling,
    # or a mass word negated ("thigh swelling, no discrete mass on US").
    weak = (
        not strong
        and not facts.trauma
        and not col.first_affirmed("other_cause", kn.terms["other_cause"], with_proc, kn)
        and not any(kn.terms["mass_strong"].search(folded(src.text)) for src in with_proc)
        and col.first_affirmed("mass", kn.terms["mass_weak"], with_proc, kn)
    )
    coded_mass = [c for c, d in diagnoses if d.meaning == "mass"]
    if coded_mass:
        col.note("mass", coded_mass[0].code, "ICD-10-CM code")
    text_mass = strong or weak
    facts.mass = (
        text_mass
        or bool(coded_mass)
        or (any(d.meaning == "mass_if_text" for _, d in diagnoses) and text_mass)
    )
    facts.bone_lesion = col.first_affirmed(
        "bone_lesion", kn.terms["bone_lesion"], with_proc, kn
    ) and not any(kn.terms["soft_tissue"].search(folded(s.text)) for s in with_proc)
    # "PET/CT skull base to mid-thigh" names the field of view, not the site of the mass.
    site_texts = indication if facts.region == "whole_body" else with_proc
    thigh_hit = next(
        ((s, m) for s in site_texts if (m := kn.terms["thigh_site"].search(folded(s.text)))), None
    )
    if thigh_hit is not None:
        src, m = thigh_hit
        col.note("thigh_site", src.text[m.start() : m.end()], src.source)
    facts.thigh_site = (
        thigh_hit is not None
        or facts.region == "thigh"
        or any(d.site == "thigh" for _, d in diagnoses)
    )


_FLAG_FACTS = (
    "deep",
    "superficial",
    "calcification",
    "bony_involvement",
    "growing",
    "painful",
    "recurrence",
    "haemorrhage",
    "vascular",
    "mineralisation_request",
)
"""Facts read as a term of the same name in the indication, not negated."""


def _red_flags(
    facts: OrderFacts,
    with_proc: list[TextSource],
    indication: list[TextSource],
    diagnoses: Diagnoses,
    kn: Knowledge,
    col: _Collector,
) -> None:
    """Size, depth, the red flags and the protocol's findings (haemorrhage, vessels)."""
    for src in with_proc:
        size = largest_size_cm(src.text)
        if size is not None and (facts.size_cm is None or size[0] > facts.size_cm):
            facts.size_cm = size[0]
            facts.size_stated_above = size[1].lower().startswith(_ABOVE_WORDS)
            col.note("size_cm", size[1], src.source)
    for fact in _FLAG_FACTS:
        setattr(facts, fact, col.first_affirmed(fact, kn.terms[fact], indication, kn))
    if not facts.haemorrhage and any(d.meaning == "haemorrhage" for _, d in diagnoses):
        facts.haemorrhage = True
        col.note("haemorrhage", "M79.81", "ICD-10-CM code")


def _studies(
    facts: OrderFacts,
    order: Order,
    siblings: list[Order],
    indication: list[TextSource],
    on: date,
    kn: Knowledge,
    col: _Collector,
) -> None:
    """The studies done before: radiographs, and prior imaging as structured studies (an MRI
    documented in the order is one that covers this thigh: done or of unknown status, same side
    or none). *on*: the order's date, for dates written without a year or relative to it."""
    facts.radiograph_documented = col.first_study(
        "radiograph_documented", kn.terms["radiograph_done"], indication, kn
    )
    for sib in siblings:
        if sib is not order and classify_text(procedure_text(sib), kn) == "radiograph":
            facts.radiograph_documented = True
            col.note("radiograph_documented", procedure_text(sib), "OBR-4 of another order")
    facts.prior_imaging = [
        s for src in indication for s in mri_mentions(src, kn, on, facts.laterality)
    ]
    covering = next((s for s in facts.prior_imaging if s.covers(facts.laterality)), None)
    if covering is not None:
        facts.prior_mri_documented = True
        col.note("prior_mri_documented", covering.words, covering.source)
        return
    # Texts with no English MRI word at all: the vocabulary's prior_mri terms (other
    # languages' words for a done MRI) still document one, done and not of the other side.
    lex = context_lexicon()
    others = [s for s in indication if lex.mri.search(folded(s.text)) is None]
    facts.prior_mri_documented = bool(others) and col.first_study(
        "prior_mri_documented",
        kn.terms["prior_mri"],
        others,
        kn,
        planned=True,
        side=facts.laterality,
    )


def _contraindications(
    indication: list[TextSource],
    diagnoses: Diagnoses,
    side: Laterality,
    kn: Knowledge,
    col: _Collector,
) -> list[str]:
    """MRI contraindications: a device not said to be MR conditional, habitus, metal at the
    site (not in the other limb, not in the skull), or MRI said not possible for another
    reason (not claustrophobia)."""
    contra: list[str] = []
    device_hit = col.first_affirmed("mri_contraindication", kn.terms["device"], indication, kn)
    if device_hit and not _conditional_device(indication, kn):
        contra.append("device")
    elif any(d.meaning == "device" for _, d in diagnoses) and not _conditional_device(
        indication, kn
    ):
        contra.append("device")
        col.note("mri_contraindication", "Z95", "ICD-10-CM code")
    if col.first_affirmed("mri_contraindication", kn.terms["habitus"], indication, kn):
        contra.append("habitus")
    if col.first_study(
        "mri_contraindication",
        kn.terms["metal"],
        indication,
        kn,
        side=side,
        study=False,
        elsewhere=kn.terms["metal_elsewhere"],
    ):
        contra.append("metal")
    if not contra and any(
        affirmed(kn.terms["general"], src.text, kn) is not None
        and affirmed(kn.terms["not_contraindication"], src.text, kn) is None
        for src in indication
        if not src.negated
    ):
        contra.append("other")
        col.note("mri_contraindication", "MRI contraindicated", "order text")
    return contra


def _cautions(
    indication: list[TextSource], diagnoses: Diagnoses, kn: Knowledge, col: _Collector
) -> list[str]:
    """Contrast cautions: a low eGFR, dialysis, pregnancy, a reaction to gadolinium."""
    cautions: list[str] = []
    threshold = kn.vocab.caution.egfr_threshold
    for src in indication:
        for m in kn.egfr.finditer(folded(src.text)):
            groups = [g for g in m.groups() if g]
            value = next((g for g in groups if g[0].isdigit()), None)
            below = any(g.strip() == "<" for g in groups)
            if value is not None and (
                float(value) < threshold or (below and float(value) <= threshold)
            ):
                cautions.append("egfr")
                col.note("contrast_caution", m.group(0), src.source)
                break
        if cautions:
            break
    for key in ("dialysis", "pregnancy", "gadolinium_reaction"):
        coded_hit = any(d.meaning == key for _, d in diagnoses)
        if col.first_affirmed("contrast_caution", kn.terms[key], indication, kn) or coded_hit:
            cautions.append(key)
    return cautions


_NOT_CONDITIONAL = re.compile(r"\b(?:non|not)[\s-]+(?:mri?[\s-]+)?(?:conditional|safe|compatible)")


def _conditional_device(texts: list[TextSource], kn: Knowledge) -> bool:
    """A device said to be MR conditional (and not "non-conditional") is no contraindication."""
    for src in texts:
        if (
            kn.terms["device"].search(folded(src.text))
            and affirmed(kn.terms["device_conditional"], src.text, kn)
            and not _NOT_CONDITIONAL.search(folded(src.text))
        ):
            return True
    return False


def limb_region(region: Region) -> bool:
    return region in _LIMB_REGIONS
