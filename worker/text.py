"""Finding guideline terms in order text, with negation ("no calcification" is not calcification).

A NegEx-style reader kept small: a term is negated when a negation word (vocabulary.toml
[negation].before) stands within `window` words before it in the same clause, when it is
prefixed "non-", or when a negating phrase (e.g. "not seen", ": none") follows it in its clause.
Clauses end at sentence punctuation, commas, semicolons and terminators such as "but".

Terms are matched on the text folded to lower case (guideline.fold, same length, so spans are
valid in the original text); the words reported are taken from the original text.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice

from worker.guideline import Knowledge, fold

folded = lru_cache(maxsize=1024)(fold)
"""fold(), remembered: one order's texts are matched by many terms."""

_CLAUSE_END = re.compile(r"[.;!?\n,()]|\s-\s")
_WORD = re.compile(r"[\w/+-]+")
_WORD_REACH = 40
"""Characters looked at per word of a negation's or a plan's window of words."""


@dataclass(frozen=True, slots=True)
class Hit:
    """A term found in a text: the words matched, whether negated, and the match span."""

    words: str
    negated: bool
    start: int
    end: int


CLAUSE_REACH = 400
"""Characters a clause reaches on each side of a term at most. Real clauses are far shorter; the
bound keeps reading linear in the text's length when a sender writes pages with no punctuation."""


@dataclass(frozen=True, slots=True)
class _Boundaries:
    """Where clauses end in one folded text: sentence punctuation and terminators, found once
    per text (not once per term) so that reading a text stays linear in its length."""

    end_starts: list[int]  # clause-end marks (_CLAUSE_END), by position
    end_ends: list[int]
    stop_starts: list[int]  # negation terminators ("but", "however"), by position
    stop_ends: list[int]


@lru_cache(maxsize=64)
def _boundaries(text: str, kn: Knowledge) -> _Boundaries:
    ends = [(m.start(), m.end()) for m in _CLAUSE_END.finditer(text)]
    stops = [(m.start(), m.end()) for m in kn.negation_stop.finditer(text)]
    return _Boundaries(
        [a for a, _ in ends], [b for _, b in ends], [a for a, _ in stops], [b for _, b in stops]
    )


def _last_end_before(starts: list[int], ends: list[int], lo: int, pos: int) -> int:
    """The end of the last mark lying in text[lo:pos], or *lo*."""
    i = bisect_right(ends, pos) - 1
    return ends[i] if i >= 0 and starts[i] >= lo else lo


def _first_start_after(starts: list[int], ends: list[int], pos: int, hi: int) -> int:
    """The start of the first mark lying in text[pos:hi], or *hi*."""
    i = bisect_left(starts, pos)
    return starts[i] if i < len(starts) and ends[i] <= hi else hi


def clause_bounds(text: str, start: int, end: int, kn: Knowledge) -> tuple[int, int]:
    """The clause around text[start:end] (*text* folded): sentence punctuation, commas and
    terminators end it, and it reaches at most CLAUSE_REACH characters each side."""
    b = _boundaries(text, kn)
    left = _last_end_before(b.end_starts, b.end_ends, 0, start)
    left = _last_end_before(b.stop_starts, b.stop_ends, left, start)
    right = _first_start_after(b.end_starts, b.end_ends, end, len(text))
    right = _first_start_after(b.stop_starts, b.stop_ends, end, right)
    return max(left, start - CLAUSE_REACH), min(right, end + CLAUSE_REACH)


def _next_clause_end(text: str, pos: int, kn: Knowledge) -> int:
    """Where the clause that starts at *pos* ends (*text* folded)."""
    b = _boundaries(text, kn)
    end = _first_start_after(b.end_starts, b.end_ends, pos, len(text))
    return min(end, pos + CLAUSE_REACH)


def is_negated(text: str, start: int, end: int, kn: Knowledge, study: bool = False) -> bool:
    """Whether the term at text[start:end] (*text* folded) is negated in its clause.

    study: the term names a study (a radiograph, an MRI). A result word is then no negation
    ("XR negative", "unremarkable radiographs": the study was done), nor is a negation whose
    reach passes a preposition ("no fracture on XR": the fracture is negated, not the XR).
    """
    if text[max(0, start - 4) : start].lower() in ("non-", "non "):
        return True
    left, right = clause_bounds(text, start, end, kn)
    pseudo: list[tuple[int, int]] | None = None

    def real(cue_start: int, cue_end: int) -> bool:
        """Not part of a pseudo-negation ("not excluded"); looked up only when a cue is found."""
        nonlocal pseudo
        if pseudo is None:
            pseudo = [(m.start(), m.end()) for m in kn.negation_pseudo.finditer(text, left, right)]
        return not any(a <= cue_start and cue_end <= b for a, b in pseudo)

    window = kn.vocab.negation.window
    lo = max(left, start - _WORD_REACH * window)  # the window's words, not the whole clause
    before = text[lo:start]
    words = list(_WORD.finditer(before))
    if words:
        from_pos = words[-window].start() if len(words) >= window else words[0].start()
        for cue in kn.negation_before.finditer(before, from_pos):
            if not real(lo + cue.start(), lo + cue.end()):
                continue
            if not study:
                return True
            if kn.negation_result.search(cue.group(0)) or kn.negation_scope_break.search(
                text, lo + cue.end(), end
            ):
                continue
            return True
    after = text[end:right]
    if text.startswith("?", right):  # "Pacemaker? no": the answer follows the question mark
        answer = kn.negation_answer.match(text[end : _next_clause_end(text, right + 1, kn)])
    elif text.startswith(" - ", right):  # "Palpable mass - none": the answer follows the dash
        rest = text[right + 3 : _next_clause_end(text, right + 3, kn)]
        answer = kn.negation_answer.match(f"{after}: {rest}")
        if answer is None and not after.strip():  # "Mass - not felt"
            answer = kn.negation_after.match(rest.lstrip())
    else:
        answer = kn.negation_answer.match(after)
    if answer and not (study and kn.negation_result.search(answer.group(0))):
        return True
    after_words = list(islice(_WORD.finditer(after), 4))
    limit = after_words[-1].end() if after_words else len(after)
    for cue in kn.negation_after.finditer(after[: max(limit, 0) + 1]):
        if real(end + cue.start(), end + cue.end()) and not (
            study and kn.negation_result.search(cue.group(0))
        ):
            return True
    return False


def is_planned(text: str, start: int, end: int, kn: Knowledge) -> bool:
    """Whether the study named at text[start:end] (*text* folded) is only planned ("awaiting
    MRI", "MRI booked for 12/03"): a planned-study word within three words of it, in its
    clause, or inside it."""
    left, right = clause_bounds(text, start, end, kn)
    near = max(left, start - 3 * _WORD_REACH)
    words_before = list(_WORD.finditer(text, near, start))
    lo = words_before[-3].start() if len(words_before) >= 3 else near
    after = list(islice(_WORD.finditer(text, end, right), 3))
    hi = after[-1].end() if after else end
    return kn.negation_planned.search(text, lo, hi) is not None


def find_terms(pattern: re.Pattern[str], text: str, kn: Knowledge) -> list[Hit]:
    """Every match of *pattern* in *text*, each with its negation."""
    low = folded(text)
    return [
        Hit(text[m.start() : m.end()], is_negated(low, m.start(), m.end(), kn), m.start(), m.end())
        for m in pattern.finditer(low)
        if m.group(0).strip()
    ]


def affirmed(pattern: re.Pattern[str], text: str, kn: Knowledge) -> Hit | None:
    """The first match of *pattern* in *text* that is not negated, or None."""
    low = folded(text)
    for m in pattern.finditer(low):
        if m.group(0).strip() and not is_negated(low, m.start(), m.end(), kn):
            return Hit(text[m.start() : m.end()], False, m.start(), m.end())
    return None


def affirmed_hits(
    pattern: re.Pattern[str], text: str, kn: Knowledge, study: bool = False, planned: bool = False
) -> Iterator[Hit]:
    """Each match of *pattern* in *text* that is not negated (read as a study when *study*;
    without the ones only planned when *planned*), found as the caller asks for the next."""
    low = folded(text)
    return (
        Hit(text[m.start() : m.end()], False, m.start(), m.end())
        for m in pattern.finditer(low)
        if m.group(0).strip()
        and not is_negated(low, m.start(), m.end(), kn, study)
        and not (planned and is_planned(low, m.start(), m.end(), kn))
    )


_NUM = r"(\d{1,3}(?:[.,]\d{1,2})?)"
# cm, mm (not "mm Hg"), inches ("2.5 inches", "2.5in", '2.5"': "in" and '"' only attached).
_UNIT = (
    r"(cms?|mms?(?!\s*hg\b)|centimet(?:er|re)s?|millimet(?:er|re)s?|inch(?:es)?"
    r"|(?<=\d)in\b|(?<=\d)\")"
)
_SIZE = re.compile(
    rf"(?<![\w.]){_NUM}\s*-?\s*{_UNIT}?(?:\s*(?:x|×|\*|by)\s*{_NUM}\s*-?\s*{_UNIT}?)?"
    rf"(?:\s*(?:x|×|\*|by)\s*{_NUM}\s*-?\s*{_UNIT}?)?(?![\w])",
    re.IGNORECASE,
)
# "> 5 cm", "more than 5 cm": the size is above the number written.
_ABOVE = re.compile(
    r"(?:>|\bmore\s+than|\bgreater\s+than|\bover|\blarger\s+than"
    r"|\bbigger\s+than|\bexceed(?:s|ing)?)\s*$",
    re.IGNORECASE,
)


# A distance from a landmark, not a size: "10 cm above the knee", "7 cm proximal to the patella",
# "12cm from the greater trochanter"; or the size of a scar or a bruise. Read right after the
# number and its unit.
_DISTANCE = re.compile(
    r"\s*(?:(?:located|situated)\s+)?(?:above|below|proximal(?:ly)?|distal(?:ly)?|superior(?:ly)?"
    r"|inferior(?:ly)?|cranial(?:ly)?|caudal(?:ly)?|medial(?:ly)?|lateral(?:ly)?|(?:away\s+)?from"
    r"|up\s+from|down\s+from|short\s+of"
    # the size of something else than the mass: a scar, an incision, a bruise
    r"|(?:long\s+|old\s+|healed\s+|surgical\s+)?(?:scars?|incisions?|wounds?|lacerations?"
    r"|bruis\w*|ecchymos\w*|erythema|redness|margins?))\b",
    re.IGNORECASE,
)


def _to_cm(value: float, unit: str) -> float:
    u = unit.lower()
    if u.startswith("m"):
        return value / 10
    if u.startswith("i") or u == '"':
        return value * 2.54
    return value


def largest_size_cm(text: str) -> tuple[float, str] | None:
    """The largest mass dimension written in *text*, in cm ("5cm", "5.2 x 3.1 cm", "52 mm",
    "2.5in"), with the words it was read from ("> 5 cm" keeps its ">").

    A number counts only with a unit, its own or the next one in the same "a x b x c" group;
    a distance from a landmark ("10 cm above the knee") is no size.
    """
    best: tuple[float, str] | None = None
    for m in _SIZE.finditer(text):
        if _DISTANCE.match(text, m.end(), min(len(text), m.end() + 40)):
            continue  # a distance from a landmark, not the mass
        groups = m.groups()
        nums = [groups[i] for i in (0, 2, 4)]
        units = [groups[i] for i in (1, 3, 5)]
        for i, num in enumerate(nums):
            if num is None:
                continue
            unit = next((u for u in units[i:] if u), None)
            if unit is None:
                continue
            cm = _to_cm(float(num.replace(",", ".")), unit)
            if 0.1 <= cm <= 100 and (best is None or cm > best[0]):
                words = m.group(0).strip()
                above = _ABOVE.search(text, max(0, m.start() - 16), m.start())
                best = (round(cm, 2), f"{above.group(0).strip()} {words}" if above else words)
    return best
