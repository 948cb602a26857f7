"""Our negation and plan reader (worker/text.py is_negated / is_planned) against medspaCy's
ConText and negspacy (NegEx), side by side: accuracy per gold category, and CPU time.

    .venv/bin/pip install medspacy negspacy     # bench only: not a dependency of ordercheck
    .venv/bin/python -m bench.negation_compare [--rounds 3] [--show-wins]

Sentences: bench/data/negation_sentences.txt, English, one target term each in [brackets], gold
label negated / affirmed / planned / historical (sub-labels :family and :possible). Each reader
says for the target one of: negated, planned, present (affirmed or historical: the term counts).

- ours: negated when is_negated (read as a study when the target names one, as the checker does);
  planned when is_planned (studies only); else present.
- medspaCy ConText (medspacy.load(): a blank English pipeline with PyRuSH sentences and the
  default ConText rules; no model download): negated when is_negated or is_family; planned when
  is_hypothetical; else present (is_uncertain and is_historical are present).
- negspacy (blank English, sentencizer, en_clinical termset): negated or present.

"product" is the decision the checker needs: does the term count (present) or not (negated or
planned)? CPU: per sentence (target given), and per order: every order text of seeds/*.hl7 read
for the same 24 target terms (ours: find_terms with is_negated; theirs: the whole pipeline).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.facts import classify_text, procedure_text
from worker.guideline import compile_terms, default_knowledge, fold
from worker.hl7.parse import parse_message, split_messages
from worker.hl7.read import read_message
from worker.text import find_terms, is_negated, is_planned

ROOT = Path(__file__).resolve().parent.parent

try:
    import medspacy
    import spacy
    from loguru import logger
    from medspacy.target_matcher import TargetRule
    from negspacy.negation import Negex  # noqa: F401 - registers the "negex" factory
    from negspacy.termsets import termset
except ImportError:
    sys.exit(
        "bench/negation_compare.py needs medspacy and negspacy (not ordercheck dependencies):\n"
        "    .venv/bin/pip install medspacy negspacy"
    )

logger.remove()  # PyRuSH logs every sentence split at DEBUG: not part of the reader's cost

SENTENCES = ROOT / "bench" / "data" / "negation_sentences.txt"
TARGETS = [
    "mass", "lump", "swelling", "tumor", "sarcoma", "lesion", "calcification", "mineralization",
    "periosteal reaction", "cortical erosion", "pacemaker", "icd", "defibrillator", "metal",
    "pregnant", "dialysis", "pain", "claustrophobia", "mri", "ct", "biopsy", "ultrasound",
    "radiograph", "x-ray",
]  # fmt: skip
_TARGET = re.compile(r"\[([^\]]+)\]")


class Sentence:
    def __init__(self, gold: str, sub: str, text: str, start: int, end: int) -> None:
        self.gold, self.sub, self.text, self.start, self.end = gold, sub, text, start, end

    @property
    def target(self) -> str:
        return self.text[self.start : self.end]

    @property
    def category(self) -> str:
        return f"{self.gold}:{self.sub}" if self.sub else self.gold


def load_sentences() -> list[Sentence]:
    out = []
    for line in SENTENCES.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        label, raw = line.split("\t", 1)
        gold, _, sub = label.partition(":")
        m = _TARGET.search(raw)
        assert m is not None, line
        text = raw[: m.start()] + m.group(1) + raw[m.end() :]
        out.append(Sentence(gold, sub, text, m.start(), m.start() + len(m.group(1))))
    return out


def expected(s: Sentence) -> str:
    return "present" if s.gold in ("affirmed", "historical") else s.gold


# -- the readers ---------------------------------------------------------------------------
KN = default_knowledge()


def ours(s: Sentence) -> str:
    low = fold(s.text)
    study = classify_text(s.target, KN) not in (None, "guidance")
    if is_negated(low, s.start, s.end, KN, study=study):
        return "negated"
    if study and is_planned(low, s.start, s.end, KN):
        return "planned"
    return "present"


def _with_target(nlp: Any, s: Sentence) -> Any:
    doc = nlp.make_doc(s.text)
    span = doc.char_span(s.start, s.end, label="TARGET", alignment_mode="expand")
    doc.ents = [span]
    for _, proc in nlp.pipeline:
        doc = proc(doc)
    return doc


MEDSPACY = medspacy.load(enable=["medspacy_pyrush", "medspacy_context"])
NEGSPACY = spacy.blank("en")
NEGSPACY.add_pipe("sentencizer")
NEGSPACY.add_pipe(
    "negex",
    config={"ent_types": ["TARGET"], "neg_termset": termset("en_clinical").get_patterns()},
)


def context(s: Sentence) -> str:
    ent = _with_target(MEDSPACY, s).ents[0]
    if ent._.is_negated or ent._.is_family:
        return "negated"
    if ent._.is_hypothetical:
        return "planned"
    return "present"


def context_historical(s: Sentence) -> bool:
    return bool(_with_target(MEDSPACY, s).ents[0]._.is_historical)


def negex(s: Sentence) -> str:
    return "negated" if _with_target(NEGSPACY, s).ents[0]._.negex else "present"


READERS: dict[str, Callable[[Sentence], str]] = {
    "ours": ours,
    "medspaCy ConText": context,
    "negspacy": negex,
}


# -- CPU per order --------------------------------------------------------------------------
def order_texts() -> list[str]:
    texts = []
    for path in sorted((ROOT / "seeds").glob("*.hl7")):
        for line, raw in split_messages(path.read_bytes()):
            try:
                parsed = read_message(parse_message(raw, line))
            except Exception:
                continue
            for order in parsed.orders:
                parts = [procedure_text(order), *(t.text for t in order.texts)]
                parts += [t.text for t in parsed.context]
                texts.append(". ".join(p for p in parts if p))
    return texts


def cpu_per_order(rounds: int) -> dict[str, float]:
    texts = order_texts()
    ours_pattern = compile_terms([rf"\b{re.escape(t)}\b" for t in TARGETS], "bench targets")
    med = medspacy.load()
    med.get_pipe("medspacy_target_matcher").add(
        [TargetRule(t, "TARGET", pattern=[{"LOWER": w} for w in t.split()]) for t in TARGETS]
    )
    neg = spacy.blank("en")
    neg.add_pipe("sentencizer")
    ruler = neg.add_pipe("entity_ruler")
    ruler.add_patterns(
        [{"label": "TARGET", "pattern": [{"LOWER": w} for w in t.split()]} for t in TARGETS]
    )
    neg.add_pipe(
        "negex",
        config={"ent_types": ["TARGET"], "neg_termset": termset("en_clinical").get_patterns()},
    )
    runs: dict[str, Callable[[str], object]] = {
        "ours": lambda text: find_terms(ours_pattern, text, KN),
        "medspaCy ConText": lambda text: [e._.is_negated for e in med(text).ents],
        "negspacy": lambda text: [e._.negex for e in neg(text).ents],
    }
    out: dict[str, float] = {}
    for name, run in runs.items():
        times = []
        for _ in range(rounds):
            for text in texts:
                t0 = time.process_time_ns()
                run(text)
                times.append((time.process_time_ns() - t0) / 1000)
        out[name] = statistics.median(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--show-wins", action="store_true", help="list where ConText is right, ours wrong"
    )
    ap.add_argument(
        "--show-misses", action="store_true", help="list every sentence ours gets wrong"
    )
    args = ap.parse_args()
    sentences = load_sentences()
    predictions: dict[str, list[str]] = {}
    cpu_sentence: dict[str, float] = {}
    for name, reader in READERS.items():
        times: list[float] = []
        preds: list[str] = []
        for _ in range(args.rounds):
            preds = []
            for s in sentences:
                t0 = time.process_time_ns()
                preds.append(reader(s))
                times.append((time.process_time_ns() - t0) / 1000)
        predictions[name] = preds
        cpu_sentence[name] = statistics.median(times)

    cats = sorted({s.category for s in sentences})
    names = list(READERS)
    print(f"{len(sentences)} sentences, {args.rounds} rounds\n")
    print(f"{'gold category':22}{'n':>5}" + "".join(f"{n:>18}" for n in names))
    for cat in cats:
        idx = [i for i, s in enumerate(sentences) if s.category == cat]
        row = f"{cat:22}{len(idx):>5}"
        for n in names:
            right = sum(predictions[n][i] == expected(sentences[i]) for i in idx)
            row += f"{100 * right / len(idx):>17.1f}%"
        print(row)
    row = f"{'all (3-way)':22}{len(sentences):>5}"
    for n in names:
        right = sum(p == expected(s) for p, s in zip(predictions[n], sentences, strict=True))
        row += f"{100 * right / len(sentences):>17.1f}%"
    print(row)
    row = f"{'product (counts?)':22}{len(sentences):>5}"
    for n in names:
        right = sum(
            (p == "present") == (expected(s) == "present")
            for p, s in zip(predictions[n], sentences, strict=True)
        )
        row += f"{100 * right / len(sentences):>17.1f}%"
    print(row)
    hist = [s for s in sentences if s.gold == "historical"]
    aff = [s for s in sentences if s.gold == "affirmed"]
    print(
        f"\nConText is_historical: {sum(map(context_historical, hist))}/{len(hist)} historical,"
        f" {sum(map(context_historical, aff))}/{len(aff)} affirmed (wrongly)"
    )
    print("\nCPU, microseconds (median)")
    per_order = cpu_per_order(args.rounds)
    print(f"{'reader':18}{'per sentence':>14}{'per order':>12}")
    for n in names:
        print(f"{n:18}{cpu_sentence[n]:>14.1f}{per_order[n]:>12.1f}")

    wins: dict[str, list[str]] = defaultdict(list)
    losses = 0
    for i, s in enumerate(sentences):
        gold = expected(s)
        ctx, our = predictions["medspaCy ConText"][i], predictions["ours"][i]
        if ctx == gold and our != gold:
            wins[f"{s.category} (ours: {our})"].append(s.text)
        elif our == gold and ctx != gold:
            losses += 1
    total = sum(len(v) for v in wins.values())
    print(f"\nConText right, ours wrong: {total}; ours right, ConText wrong: {losses}")
    if args.show_wins:
        for group, texts in sorted(wins.items()):
            print(f"\n{group}: {len(texts)}")
            for t in texts:
                print(f"  - {t}")
    if args.show_misses:
        misses: dict[str, list[str]] = defaultdict(list)
        for i, s in enumerate(sentences):
            our = predictions["ours"][i]
            if our != expected(s):
                misses[f"{s.category} (ours: {our})"].append(f"{s.text}  [{s.target}]")
        print(f"\nOurs wrong: {sum(len(v) for v in misses.values())}")
        for group, texts in sorted(misses.items()):
            print(f"\n{group}: {len(texts)}")
            for t in texts:
                print(f"  - {t}")


if __name__ == "__main__":
    main()
