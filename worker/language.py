"""Which language an order is written in, and the knowledge that reads it.

MSH-19 (principal language of message, ISO 639: "de", "es^Spanish^ISO639", "ger") decides when
it names a language we have a file for (English included). Otherwise the language is detected
from the first DETECT_CHARS characters of the order's texts: the language whose typical words
(vocabulary.<code>.toml language.detect) appear most, at least `min_words` different ones and
more than English's. A tie, or a character set (MSH-18) that cannot write these languages'
words, keeps English. English always applies: a German order is read with the German terms
added to the English ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from worker.guideline import Knowledge, fold
from worker.models import Order, ParsedMessage

DETECT_CHARS = 2000
"""Characters of an order's text read to detect its language: a language shows in its first
sentence, and the cost stays bounded whatever the text's length."""

# MSH-18 character sets (HL7 table 0211) that write no Latin-script European language.
_OTHER_SCRIPTS = (
    "ISO IR87",
    "ISO IR159",
    "ISO IR149",
    "ISO IR 58",
    "KS X 1001",
    "GB 18030-2000",
    "BIG-5",
    "CNS 11643-1992",
    "8859/5",
    "8859/6",
    "8859/7",
    "8859/8",
)


@dataclass(frozen=True, slots=True)
class Language:
    """The language an order is read in, and how it was found."""

    code: str  # ISO 639-1
    how: str  # "MSH-19", "detected", "default"


def declared(message: ParsedMessage, kn: Knowledge) -> str | None:
    """The language MSH-19 names, when we have a file for it ("de-DE" is "de")."""
    raw = message.header.language.strip().lower()
    if not raw:
        return None
    code = kn.language_alias.get(raw)
    if code is None:
        code = kn.language_alias.get(raw.replace("_", "-").split("-")[0])
    return code


def detect(texts: list[str], kn: Knowledge) -> str | None:
    """The language of *texts* read from its words, or None (English or unsure)."""
    parts: list[str] = []
    budget = DETECT_CHARS
    for t in texts:
        if budget <= 0:
            break
        parts.append(t[:budget])
        budget -= len(parts[-1]) + 1
    found: dict[str, set[str]] = {code: set() for code in kn.detectors}
    for m in kn.detect_words.finditer(fold(" ".join(parts))):
        word = m.group(0)
        for code in _languages_of(word, kn):
            found[code].add(word)
    english = len(found.pop("en", ()))
    scores = {
        code: len(words) for code, words in found.items() if len(words) >= kn.detectors[code][1]
    }
    if not scores:
        return None
    best = max(scores.values())
    leaders = [code for code, n in scores.items() if n == best]
    if len(leaders) != 1 or best <= english:
        return None
    return leaders[0]


@lru_cache(maxsize=4096)
def _languages_of(word: str, kn: Knowledge) -> tuple[str, ...]:
    """The languages whose typical words include *word* (a match of kn.detect_words)."""
    return tuple(code for code, (pattern, _) in kn.detectors.items() if pattern.fullmatch(word))


def order_language(order: Order, message: ParsedMessage, kn: Knowledge) -> Language:
    """The language *order* is read in."""
    code = declared(message, kn)
    if code is not None:
        return Language(code, "MSH-19")
    if message.header.charset.strip().upper() in _OTHER_SCRIPTS:
        return Language("en", "default")
    texts = [p.text for p in order.procedures]
    texts += [t.text for t in order.texts]
    texts += [t.text for t in message.context]
    code = detect(texts, kn)
    return Language(code, "detected") if code is not None else Language("en", "default")


def reading(order: Order, message: ParsedMessage, kn: Knowledge) -> tuple[Knowledge, Language]:
    """The knowledge that reads *order* (English plus the order's language) and the language."""
    lang = order_language(order, message, kn)
    return kn.in_language(lang.code), lang
