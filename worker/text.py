"""Finding guideline terms in order text, with negation ("no calcification" is not calcification).

A NegEx-style reader kept small: a term is negated when a negation word (vocabulary.toml
[negation].before) stands within `window` words before it in the same clause, when it is
prefixed "non-", or when a negating phrase (e.g. "not seen", ": none") follows it in its clause.
Clauses end at sentence punctuation, commas, semicolons and terminators such as "but".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from worker.guideline import Knowledge

_CLAUSE_END = re.compile(r"[.;!?\n,()]|\s-\s")
_WORD = re.compile(r"[\w/+-]+")


@dataclass(frozen=True, slots=True)
class Hit:
    """A term found in a text: the words matched, whether negated, and the match span."""

    words: str
    negated: bool
    start: int
    end: int


def _clause_bounds(text: str, start: int, end: int, kn: Knowledge) -> tuple[int, int]:
    left = 0
    for m in _CLAUSE_END.finditer(text, 0, start):
        left = m.end()
    for m in kn.negation_stop.finditer(text, left, start):
        left = m.end()
    right_m = _CLAUSE_END.search(text, end)
    right = right_m.start() if right_m else len(text)
    stop = kn.negation_stop.search(text, end, right)
    if stop:
        right = stop.start()
    return left, right


def is_negated(text: str, start: int, end: int, kn: Knowledge) -> bool:
    """Whether the term at text[start:end] is negated in its clause."""
    if text[max(0, start - 4):start].lower() in ("non-", "non "):
        return True
    left, right = _clause_bounds(text, start, end, kn)
    before = text[left:start]
    words = list(_WORD.finditer(before))
    window = kn.vocab.negation.window
    if words:
        from_pos = words[-window].start() if len(words) >= window else words[0].start()
        if kn.negation_before.search(before, from_pos):
            return True
    after = text[end:right]
    if kn.negation_answer.match(after):
        return True
    after_words = list(_WORD.finditer(after))
    limit = after_words[min(3, len(after_words) - 1)].end() if after_words else len(after)
    return bool(kn.negation_after.search(after[:max(limit, 0) + 1]))


def find_terms(pattern: re.Pattern[str], text: str, kn: Knowledge) -> list[Hit]:
    """Every match of *pattern* in *text*, each with its negation."""
    return [Hit(m.group(0), is_negated(text, m.start(), m.end(), kn), m.start(), m.end())
            for m in pattern.finditer(text) if m.group(0).strip()]


def affirmed(pattern: re.Pattern[str], text: str, kn: Knowledge) -> Hit | None:
    """The first match of *pattern* in *text* that is not negated, or None."""
    for m in pattern.finditer(text):
        if m.group(0).strip() and not is_negated(text, m.start(), m.end(), kn):
            return Hit(m.group(0), False, m.start(), m.end())
    return None


_NUM = r"(\d{1,3}(?:[.,]\d{1,2})?)"
_UNIT = r"(cms?|mms?|centimet(?:er|re)s?|millimet(?:er|re)s?)"
_SIZE = re.compile(
    rf"(?<![\w.]){_NUM}\s*-?\s*{_UNIT}?(?:\s*(?:x|×|\*|by)\s*{_NUM}\s*-?\s*{_UNIT}?)?"
    rf"(?:\s*(?:x|×|\*|by)\s*{_NUM}\s*-?\s*{_UNIT}?)?(?![\w])",
    re.IGNORECASE)


def largest_size_cm(text: str) -> tuple[float, str] | None:
    """The largest mass dimension written in *text*, in cm ("5cm", "5.2 x 3.1 cm", "52 mm").

    A number counts only with a unit, its own or the next one in the same "a x b x c" group.
    """
    best: tuple[float, str] | None = None
    for m in _SIZE.finditer(text):
        groups = m.groups()
        nums = [groups[i] for i in (0, 2, 4)]
        units = [groups[i] for i in (1, 3, 5)]
        for i, num in enumerate(nums):
            if num is None:
                continue
            unit = next((u for u in units[i:] if u), None)
            if unit is None:
                continue
            value = float(num.replace(",", "."))
            cm = value / 10 if unit.lower().startswith("m") else value
            if 0.1 <= cm <= 100 and (best is None or cm > best[0]):
                best = (cm, m.group(0).strip())
    return best
