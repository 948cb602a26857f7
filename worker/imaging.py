"""Prior imaging as a structured fact: each study named in the order's text or held in the
patient's history, with its modality, body site, side, contrast, status and date.

Text is read the ConText way (Harkema et al., J Biomed Inform 2009): a study word's modifiers
(negated, planned / hypothetical, done / historical, other experiencer) act only within its own
phrase and sentence, and a phrase ends at terminators (sentence punctuation, ": " before a
finding, " - ", a comma outside brackets). The phrase gives the study's site, side, contrast and
date; a date after the order date makes it planned. Every scan is bounded per study word (a
phrase reaches at most PHRASE_REACH characters), and at most MAX_MENTIONS study words are read per
text, so reading stays linear in the text's length.

Whether a study covers the order ("an MRI of this thigh") is decided from those fields alone:
an MRI, done or of unknown status (never planned or future-dated), of the thigh, the lower limb,
the whole body or an unnamed site, on the same side or with no side or both sides. An MRI of
another body part, or of the other thigh against a one-sided mass, never covers.
"""

from __future__ import annotations

import re
import tomllib
from datetime import date, timedelta
from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict

from worker.guideline import Knowledge, compile_terms
from worker.models import HistoryEntry, Laterality, PriorStudy, Region, StudyStatus, TextSource
from worker.text import folded, is_negated

PHRASE_REACH = 120
"""Characters a study's phrase reaches after its word at most (and half of it before)."""
MAX_MENTIONS = 16
"""Study words read per text at most: real orders name a few."""


class _ContextTerms(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    mri: list[str]
    not_study_after: list[str]
    not_study_before: list[str]
    planned: list[str]
    report_pending: list[str]
    other_person: list[str]
    result: list[str]
    answer_yes: list[str]
    not_done: list[str]
    done: list[str]
    elsewhere: list[str]
    other_side: list[str]


class ContextLexicon:
    """The compiled terms of worker/data/context.toml."""

    def __init__(self, terms: _ContextTerms) -> None:
        self.version = terms.version
        self.mri = compile_terms(terms.mri, "context.mri")
        self.not_study_after = compile_terms(terms.not_study_after, "context.not_study_after")
        self.not_study_before = compile_terms(terms.not_study_before, "context.not_study_before")
        self.planned = compile_terms(terms.planned, "context.planned")
        self.report_pending = compile_terms(terms.report_pending, "context.report_pending")
        self.other_person = compile_terms(terms.other_person, "context.other_person")
        self.result = compile_terms(terms.result, "context.result")
        self.answer_yes = compile_terms(terms.answer_yes, "context.answer_yes")
        self.not_done = compile_terms(terms.not_done, "context.not_done")
        self.done = compile_terms(terms.done, "context.done")
        self.elsewhere = compile_terms(terms.elsewhere, "context.elsewhere")
        self.other_side = compile_terms(terms.other_side, "context.other_side")


@cache
def lexicon() -> ContextLexicon:
    text = (resources.files("worker") / "data" / "context.toml").read_text(encoding="utf-8")
    return ContextLexicon(_ContextTerms.model_validate(tomllib.loads(text)))


# -- phrases -----------------------------------------------------------------------------------

# A phrase also ends at ": " before a finding, " - ", and a comma outside brackets.
_PHRASE_END_BEFORE = re.compile(r"[;!?\n,]|\.(?!\d)|:\s|\s[-–—]\s")


def _head_end(low: str, pos: int) -> int:
    """Where the phrase that follows a study word at *pos* ends (bounded by PHRASE_REACH)."""
    hi = min(len(low), pos + PHRASE_REACH)
    depth = 0
    i = pos
    # A colon right after the study word is a heading ("MRI: left thigh mass"): skip it.
    j = i
    while j < hi and low[j] == " ":
        j += 1
    if j < hi and low[j] == ":":
        i = j + 1
    while i < hi:
        c = low[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth = max(0, depth - 1)
        elif _ends_phrase(low, i, c, depth):
            return i
        i += 1
    return hi


def _ends_phrase(low: str, i: int, c: str, depth: int) -> bool:
    """Whether the character *c* at *i* ends a study's phrase (outside brackets for , : -)."""
    if c in ";!?\n":
        return True
    if c == ".":
        return not (i + 1 < len(low) and low[i + 1].isdigit())
    if depth:
        return False
    if c == ",":
        return True
    if c == ":":
        return low[i + 1 : i + 2] in (" ", "\t")
    return c in "-–—" and low[i - 1 : i] == " " and low[i + 1 : i + 2] == " "


def _head_start(low: str, pos: int) -> int:
    """Where the phrase that holds a study word at *pos* begins (bounded)."""
    lo = max(0, pos - PHRASE_REACH // 2)
    start = lo
    for m in _PHRASE_END_BEFORE.finditer(low, lo, pos):
        start = m.end()
    return start


# -- dates -------------------------------------------------------------------------------------

_MONTHS = {
    m: i + 1
    for i, names in enumerate(
        (
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        )
    )
    for m in names
}
_MONTH_WORD = (
    r"(?P<mon>jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sept?(?:ember)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
# Dates as written in orders: 2026-10-15; 10/28, 10/28/2026, 3/14/25 (month first unless the
# first number exceeds 12); 11.11.2026 and 11-11-2026 (day first; a year is required, so that
# "6.5 cm" and "5-6 cm" are no dates); 09/2026; Oct 2026, Oct 28, Oct 28, 2026; 2024.
_DATE = re.compile(
    r"(?<![\w/.-])(?:"
    r"(?P<iso>(?P<iy>(?:19|20)\d{2})-(?P<im>\d{1,2})-(?P<id>\d{1,2}))"
    r"|(?P<us>(?P<a>\d{1,2})/(?P<b>\d{1,2})(?:/(?P<y>(?:19|20)?\d{2}))?)"
    r"|(?P<eu>(?P<ed>\d{1,2})(?P<sep>[.-])(?P<em>\d{1,2})(?P=sep)(?P<ey>(?:19|20)?\d{2}))"
    r"|(?P<my>(?P<mm>\d{1,2})/(?P<myy>(?:19|20)\d{2}))"
    rf"|(?P<dm>(?P<dd>\d{{1,2}})(?:st|nd|rd|th)?\s+{_MONTH_WORD.replace('mon>', 'dmon>')}"
    r"(?:,?\s*(?P<dy>(?:19|20)\d{2}))?(?![\w/]))"
    rf"|(?P<wm>{_MONTH_WORD}\s+(?:(?P<wd>\d{{1,2}})(?:st|nd|rd|th)?,?\s*)?(?P<wy>(?:19|20)\d{{2}})?)"
    r"|(?P<year>(?:19|20)\d{2})"
    r")(?![\w/])"
)
_RELATIVE_PAST = re.compile(
    r"\b(?:\d+|a|one|two|three|four|five|six|several|few)\s+"
    r"(?:days?|wks?|weeks?|mos?|months?|yrs?|years?)\s+ago\b"
    r"|\blast\s+(?:week|month|year)\b|\byesterday\b"
    r"|\bearlier\s+(?:this|in\s+the)\s+(?:week|month|year)\b"
)
_RELATIVE_FUTURE = re.compile(
    r"\bnext\s+(?:week|month|year|\w+day)\b|\btomorrow\b"
    r"|\bin\s+(?:\d+|a|one|two|three|few)\s+(?:days?|weeks?|months?)\b"
    r"|\blater\s+this\s+(?:week|month)\b"
)


def _safe_date(y: int, m: int, d: int) -> date | None:
    try:
        return date(y, m, d)
    except ValueError:
        return None


def _year(two_or_four: str) -> int:
    y = int(two_or_four)
    return y + 2000 if y < 100 else y


def find_date(phrase: str, ref: date) -> tuple[date | None, bool | None]:
    """The first date written in *phrase* (folded), resolved against the order date *ref*, and
    whether it lies after it (None when no date is written). A month or year alone stands for
    its first day, and is after *ref* only when the whole month or year is."""
    if _RELATIVE_FUTURE.search(phrase):
        return None, True
    if _RELATIVE_PAST.search(phrase):
        return None, False
    for m in _DATE.finditer(phrase):
        g = m.groupdict()
        if g["iso"]:
            d = _safe_date(int(g["iy"]), int(g["im"]), int(g["id"]))
            if d:
                return d, d > ref
        elif g["eu"]:
            d = _safe_date(_year(g["ey"]), int(g["em"]), int(g["ed"]))
            if d:
                return d, d > ref
        elif g["us"]:
            a, b = int(g["a"]), int(g["b"])
            month, day = (b, a) if a > 12 else (a, b)
            if g["y"]:
                d = _safe_date(_year(g["y"]), month, day)
                if d:
                    return d, d > ref
                continue
            d = _safe_date(ref.year, month, day)
            if d is None:
                continue
            if d > ref + timedelta(days=183):  # "12/18" written in January: last December
                d = _safe_date(ref.year - 1, month, day) or d
            return d, d > ref
        elif g["my"]:
            month, year = int(g["mm"]), int(g["myy"])
            if 1 <= month <= 12:
                d = date(year, month, 1)
                return d, (year, month) > (ref.year, ref.month)
        elif g["wm"]:
            month = _MONTHS[g["mon"]]
            if g["wy"]:
                year = int(g["wy"])
                if g["wd"]:
                    d = _safe_date(year, month, int(g["wd"]))
                    if d:
                        return d, d > ref
                return date(year, month, 1), (year, month) > (ref.year, ref.month)
            if g["wd"]:
                d = _safe_date(ref.year, month, int(g["wd"]))
                if d is None:
                    continue
                if d > ref + timedelta(days=183):
                    d = _safe_date(ref.year - 1, month, int(g["wd"])) or d
                return d, d > ref
        elif g["dm"]:
            month, day = _MONTHS[g["dmon"]], int(g["dd"])
            year = int(g["dy"]) if g["dy"] else ref.year
            d = _safe_date(year, month, day)
            if d is None:
                continue
            if not g["dy"] and d > ref + timedelta(days=183):
                d = _safe_date(ref.year - 1, month, day) or d
            return d, d > ref
        elif g["year"]:
            year = int(g["year"])
            return date(year, 1, 1), year > ref.year
    return None, None


# -- reading -----------------------------------------------------------------------------------


_NEIGHBOURS: tuple[Region, ...] = ("unknown", "hip", "pelvis", "knee", "lower_extremity")
"""Sites next to the thigh: an MRI of one whose findings name the thigh imaged the mass."""
_OTHER_SITES: tuple[Region, ...] = (
    "whole_body",
    "knee",
    "hip",
    "ankle",
    "chest",
    "abdomen",
    "pelvis",
    "spine",
    "head",
    "upper_extremity",
)


def _site(phrase: str, kn: Knowledge, lex: ContextLexicon) -> Region:
    """The body site a study's phrase names: the thigh wins when it is among them."""
    if kn.terms["thigh_site"].search(phrase) or kn.region["thigh"].search(phrase):
        return "thigh"
    if kn.region["hip"].search(phrase) and kn.region["knee"].search(phrase):
        return "thigh"  # "MRI hip to knee" spans the thigh
    for region in _OTHER_SITES:
        if kn.region[region].search(phrase):
            return region
    if lex.elsewhere.search(phrase):
        return "other"
    if kn.region["lower_extremity"].search(phrase):
        return "lower_extremity"
    return "unknown"


_WEEKDAY = re.compile(r"(?<!last )(?<!past )\b(?:mon|tues|wednes|thurs|fri|satur|sun)day\b")

# Words about the contrast or the sedation, not the study: "refused gad", "declined contrast".
_CONTRAST_NEXT = re.compile(
    r"\W*(?:\w+\W+)?(?:contrast|gad\w*|dye|iv|sedation|injection|cannula\w*|medication)\b"
)


def _about_the_study(pattern: re.Pattern[str], text: str) -> bool:
    """Whether *pattern* is found in *text* other than right before a contrast word."""
    return any(not _CONTRAST_NEXT.match(text, m.end()) for m in pattern.finditer(text))


_TITLE_NAME = re.compile(r"\.?\s+[A-Z][a-z]")


def _is_title(text: str, start: int, end: int) -> bool:
    """ "Mr Smith", "Mr. Jones": a title before a name, not an MR study."""
    return text[start:end] == "Mr" and _TITLE_NAME.match(text, end) is not None


def _study_side(
    phrase: str, kn: Knowledge, lex: ContextLexicon, mass_side: Laterality
) -> Laterality:
    """The side a study's phrase names; "the other thigh" is the side opposite the mass."""
    from worker.facts import laterality_from_text

    if lex.other_side.search(phrase) and mass_side in ("left", "right"):
        return "right" if mass_side == "left" else "left"
    return laterality_from_text(phrase, kn, allow_letters=False) or "unknown"


def mri_mentions(
    src: TextSource, kn: Knowledge, ref: date, side: Laterality = "unknown"
) -> list[PriorStudy]:
    """Every MRI named in one text (up to MAX_MENTIONS), with what its phrase says of it; *ref*
    is the order date, *side* the side of the mass ("the other thigh" is the opposite one).
    Negated mentions ("no prior MRI", "MRI: none"), MRIs not done ("MRI cancelled") and mentions
    that are no study of the patient ("MR conditional", "cannot have MRI") are left out."""
    from worker.facts import contrast_from_text

    if src.negated:
        return []
    lex = lexicon()
    low = folded(src.text)
    out: list[PriorStudy] = []
    for n, m in enumerate(lex.mri.finditer(low)):
        if n >= MAX_MENTIONS:
            break
        if lex.not_study_after.match(low, m.end(), min(len(low), m.end() + 40)):
            continue
        if _is_title(src.text, m.start(), m.end()):
            continue
        start = _head_start(low, m.start())
        end = _head_end(low, m.end())
        # A heading just before the phrase ("Plan: MRI thigh", "Imaging: MRI ...") modifies it.
        heading = low[max(0, start - 24) : start] if low.startswith(": ", start - 2) else ""
        heading = heading[max(heading.rfind(c) for c in ".;!?\n,") + 1 :] if heading else ""
        before = low[start : m.start()]
        # A question answered yes ("Prior MRI?: Yes 10/28") goes on into its answer.
        answered = lex.answer_yes.match(low, end, min(len(low), end + 20))
        if answered:
            end = _head_end(low, answered.end())
        after = low[m.end() : end]
        # The study's own words, then its findings: modifiers of the study act in its words.
        r = lex.result.search(after)
        own = after[: r.start()] if r else after
        findings = after[r.start() :] if r else ""
        described = low[start : m.end()] + own
        # Only its report is awaited: the study is done ("MRI done, awaiting report").
        reported = lex.report_pending.search(f"{described}{findings}") is not None
        if lex.other_person.search(before):
            continue  # someone else's study
        if not reported and (
            _about_the_study(lex.not_study_before, before) or _about_the_study(lex.not_done, own)
        ):
            continue
        if is_negated(low, m.start(), m.end(), kn, study=True):
            continue
        when, future = find_date(own, ref) if own.strip() else (None, None)
        if when is None and future is None:
            when, future = find_date(before, ref)
        if when is None and future is None and findings:
            when, future = find_date(findings, ref)
            if future:  # a date in the findings is no appointment of this study
                when, future = None, None
        # A question ("?MRI", "MRI?") is a thought, not a record, unless answered yes.
        asked = not answered and (before.rstrip().endswith("?") or low.startswith("?", end))
        # A weekday alone ("MRI Friday") is an appointment, unless results follow.
        weekday = r is None and _WEEKDAY.search(own) is not None
        if reported:
            status: StudyStatus = "done"
        elif (
            future
            or asked
            or weekday
            or lex.planned.search(described)
            or lex.planned.search(heading)
        ):
            status = "planned"
        elif (
            future is False
            or answered
            or r is not None
            or lex.done.search(described)
            or lex.done.search(before)  # "seen on MRI": anchored at the study word
            or lex.done.search(heading)
            or low.startswith(":", end)  # "MRI L thigh w/wo 10/28: 6 cm mass" reports a finding
            or low[end : end + 3] in (" - ", " – ", " — ")
        ):
            status = "done"
        else:
            status = "unknown"
        site = _site(described, kn, lex)
        if site == "unknown" and heading:  # "Left knee: MRI 2024 normal"
            site = _site(heading, kn, lex)
        if low[end : end + 1] == ":" or low[end : end + 3] in (" - ", " – ", " — "):
            findings += low[end : _head_end(low, end + 2)]  # "MRI hip 10/28: mass in the thigh"
        if site in _NEIGHBOURS and findings and _site(findings, kn, lex) == "thigh":
            site = "thigh"  # "MRI pelvis showed a mass in the adductors": the mass was imaged
        study_side = _study_side(described, kn, lex, side)
        if study_side == "unknown" and heading:
            study_side = _study_side(heading, kn, lex, side)
        if study_side == "unknown" and findings:
            study_side = _study_side(findings, kn, lex, side)
        out.append(
            PriorStudy(
                modality="mri",
                site=site,
                side=study_side,
                contrast=contrast_from_text(own, kn) if own.strip() else "unspecified",
                status=status,
                on=when,
                source=src.source,
                words=src.text[start:end].strip()[:120],
            )
        )
    return out


def _entry_study(entry: HistoryEntry) -> PriorStudy:
    return PriorStudy(
        modality=entry.procedure_class,
        site=entry.region,
        side=entry.laterality,
        status="done",
        on=entry.at.date() if entry.at is not None else None,
        source=f"history ({entry.source})",
    )


def from_history(entries: list[HistoryEntry]) -> list[PriorStudy]:
    """The patient's recorded studies as prior studies (done, with their recorded date)."""
    return [_entry_study(e) for e in entries]
