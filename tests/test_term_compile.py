"""compile_terms arranges each term list for Python's regex engine (one word boundary per run,
alternatives grouped by first letter, a boundary moved before leading lookbehinds): the
compiled list must match exactly as the plain alternation of its patterns, in every language."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import worker.guideline as guideline
from tests import languagecases, wordings


def _term_lists() -> list[tuple[str, tuple[str, ...]]]:
    seen: dict[tuple[str, ...], str] = {}
    compile_terms = guideline.compile_terms

    def record(patterns: list[str], where: str) -> re.Pattern[str]:
        seen.setdefault(tuple(patterns), where)
        return compile_terms(patterns, where)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(guideline, "compile_terms", record)
        kn = guideline.load_knowledge()
        for code in ("es", "de", "fr", "it"):
            kn.in_language(code)
    return [(where, patterns) for patterns, where in seen.items() if patterns]


def _texts() -> list[str]:
    strings: set[str] = set()
    for module in (wordings, languagecases):
        source = Path(module.__file__ or "").read_text(encoding="utf-8")
        strings.update(m.group(1) for m in re.finditer(r'"((?:[^"\\\n]|\\.){3,300})"', source))
    words = sorted({w for s in strings for w in re.findall(r"\w+|[^\w\s]", s)})
    rng = random.Random(16)
    soup = {" ".join(rng.choice(words) for _ in range(rng.randint(1, 20))) for _ in range(1500)}
    return [guideline.fold(t) for t in sorted(strings | soup)]


TEXTS = _texts()


def _spans(pattern: re.Pattern[str], text: str) -> Iterator[tuple[int, int]]:
    return ((m.start(), m.end()) for m in pattern.finditer(text))


@pytest.mark.parametrize(("where", "patterns"), _term_lists())
def test_a_compiled_term_list_matches_as_its_plain_alternation(
    where: str, patterns: tuple[str, ...]
) -> None:
    compiled = guideline.compile_terms(list(patterns), where)
    plain = re.compile("|".join(f"(?:{guideline._lower_pattern(p)})" for p in patterns))
    for text in TEXTS:
        assert list(_spans(compiled, text)) == list(_spans(plain, text)), (where, text)


def test_alternatives_share_their_first_letter_and_keep_their_order() -> None:
    assert guideline._by_first_letter(["ab", "c", "ad"]) == "a(?:(?:b)|(?:d))|c(?:(?:))"
    # a class (or group) at the start stays in its place: letters grouped on each side of it
    grouped = guideline._by_first_letter(["ab", "[xy]z", "ac"])
    assert grouped == "a(?:(?:b))|(?:[xy]z)|a(?:(?:c))"
    assert guideline._by_first_letter(["a?b", "a{2}", "ab"]) == "(?:a?b)|(?:a{2})|a(?:(?:b))"


def test_a_boundary_after_lookbehinds_moves_before_them() -> None:
    assert guideline._boundary_first(r"(?<!\d )(?<!\d)\bmo\s") == r"\b(?<!\d )(?<!\d)mo\s"
    assert guideline._boundary_first(r"(?<!x)abc") == r"(?<!x)abc"
    assert guideline._boundary_first(r"(?<=a)\bb|c") == r"(?<=a)\bb|c"  # a top-level bar
