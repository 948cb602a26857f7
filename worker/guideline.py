"""Loads and validates the guideline data files (worker/data/*.toml), a site code map and a site
protocol map (protocols.toml, worker/protocols.py).

Clinical knowledge is data: the rules' texts, citations and preferred procedures, the codes, the
vocabulary and the protocol steps. Every file is validated by pydantic when loaded, so a broken
entry fails at start-up with the file and the entry named (GuidelineError), never at 3 a.m.
"""

from __future__ import annotations

import re
import threading
import tomllib
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from worker.errors import GuidelineError
from worker.models import CheckResult, Contrast, Laterality, Procedure, ProcedureClass, Region
from worker.protocols import ProtocolChoice, ProtocolKind, ProtocolMap, ProtocolMapFile, kind_of

RULE_IDS = (
    "CT_BEFORE_MRI",
    "BIOPSY_BEFORE_MRI",
    "PET_INITIAL",
    "MRI_ADD_CONTRAST",
    "MRI_NO_PRECONTRAST",
    "RADIOGRAPH_FIRST",
    "REFER_SARCOMA_CENTRE",
    "CONTRAST_CAUTION",
    "CODING_JOINT_CODE",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Citation(_Strict):
    source: str
    detail: str = ""


class ProcedureDef(_Strict):
    code: str
    system: str
    text: str
    loinc: str = ""
    radlex: str = ""


class RuleException(_Strict):
    title: str
    advice: str
    preferred: str
    citations: list[Citation]


class RuleDef(_Strict):
    kind: Literal["flag", "advice"]
    severity: Literal["info", "warning", "critical"]
    title: str
    reason: str
    advice: str
    preferred: str | None = None
    citations: list[Citation] = Field(min_length=1)
    exceptions: dict[str, RuleException] = Field(default_factory=dict)


class ProtocolStep(_Strict):
    when: Literal["always", "haemorrhage", "vascular", "metal"]
    text: str
    citations: list[str] = Field(default_factory=list)


class GuidelineMeta(_Strict):
    id: str
    version: str
    title: str
    scale: str
    disclaimer: str
    adult_age_years: int = Field(ge=0, le=30)
    red_flag_size_cm: float = Field(gt=0)


class GuidelineFile(_Strict):
    guideline: GuidelineMeta
    sources: dict[str, str]
    procedures: dict[str, ProcedureDef]
    rules: dict[str, RuleDef]
    protocol: dict[Literal["mri", "ct"], list[ProtocolStep]]

    @model_validator(mode="after")
    def _references(self) -> GuidelineFile:
        missing = sorted(set(RULE_IDS) - set(self.rules))
        if missing:
            raise ValueError(f"rules missing: {', '.join(missing)}")
        unknown = sorted(set(self.rules) - set(RULE_IDS))
        if unknown:
            raise ValueError(f"rules not implemented by any validator: {', '.join(unknown)}")
        for rule_id, rule in self.rules.items():
            refs = [(f"rules.{rule_id}", rule.preferred, rule.citations)]
            refs += [
                (f"rules.{rule_id}.exceptions.{k}", e.preferred, e.citations)
                for k, e in rule.exceptions.items()
            ]
            for where, preferred, citations in refs:
                if preferred is not None and preferred not in self.procedures:
                    raise ValueError(f"{where}: unknown preferred procedure {preferred!r}")
                for c in citations:
                    if c.source not in self.sources:
                        raise ValueError(f"{where}: unknown citation source {c.source!r}")
            if rule.kind == "flag" and rule.preferred is None:
                raise ValueError(f"rules.{rule_id}: a flag must name a preferred procedure")
        for kind, steps in self.protocol.items():
            for i, step in enumerate(steps):
                for tag in step.citations:
                    if tag not in self.sources:
                        raise ValueError(f"protocol.{kind}[{i}]: unknown citation source {tag!r}")
        return self


def _expand(codes: list[str]) -> list[str]:
    out: list[str] = []
    for item in codes:
        lo, _, hi = item.partition("-")
        lo, hi = lo.strip(), hi.strip()
        if lo.isdigit() and hi.isdigit() and len(lo) == len(hi) > 1:  # a range, not LOINC 24702-3
            if int(hi) < int(lo) or int(hi) - int(lo) > 1000:
                raise ValueError(f"bad code range {item!r}")
            out.extend(str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1))
        else:
            out.append(item.strip().upper())
    return out


# A CPT code with modifiers (LT, RT, 50, 26, TC ...): "73701-LT", "73720 RT", "73718-26-LT".
_CPT_MODIFIERS = re.compile(r"^(\d{5})(?:\s*-\s*|\s+)[A-Z0-9]{2}(?:(?:\s*-\s*|\s+)[A-Z0-9]{2})*$")


class ProcedureCodeDef(_Strict):
    system: str
    codes: list[str] = Field(min_length=1)
    class_: ProcedureClass = Field(alias="class")
    contrast: Contrast
    region: Region
    joint: bool = False
    text: str = ""


class DiagnosisDef(_Strict):
    prefixes: list[str] = Field(min_length=1)
    meaning: Literal[
        "mass", "mass_if_text", "device", "dialysis", "pregnancy", "trauma", "haemorrhage"
    ]
    site: Literal["thigh", "lower_limb", "other"]
    laterality: Laterality = "unknown"


class CodesFile(_Strict):
    version: str
    systems: dict[str, list[str]]
    procedure: list[ProcedureCodeDef]
    diagnosis: list[DiagnosisDef]


class CodeMapEntry(_Strict):
    """A site's local procedure code (Epic EAP/IMG ids and the like)."""

    system: str = ""  # "" matches any coding system
    code: str
    class_: ProcedureClass = Field(alias="class")
    contrast: Contrast = "unspecified"
    region: Region = "unknown"
    joint: bool = False
    text: str = ""


class CodeMapFile(_Strict):
    version: str = ""
    code: list[CodeMapEntry] = Field(default_factory=list)


class NegationDef(_Strict):
    before: list[str]
    after: list[str]
    answer: list[str]
    terminators: list[str]
    window: int = Field(ge=1, le=20)
    result: list[str]
    scope_break: list[str]
    planned: list[str]
    pseudo: list[str]


class CautionDef(_Strict):
    egfr: list[str]
    egfr_threshold: float
    dialysis: list[str]
    pregnancy: list[str]
    gadolinium_reaction: list[str]


class VocabularyFile(_Strict):
    version: str
    negation: NegationDef
    procedure_class: dict[ProcedureClass, list[str]]
    modality: dict[str, ProcedureClass]
    contrast: dict[Literal["without_and_with", "without", "with", "with_weak"], list[str]]
    region: dict[Region, list[str]]
    laterality: dict[Literal["left", "right", "bilateral", "letter_site"], list[str]]
    indication: dict[
        Literal[
            "mass_strong",
            "mass_weak",
            "trauma",
            "other_cause",
            "bone_lesion",
            "soft_tissue",
            "thigh_site",
        ],
        list[str],
    ]
    findings: dict[
        Literal[
            "calcification",
            "bony_involvement",
            "radiograph_done",
            "prior_mri",
            "deep",
            "superficial",
            "growing",
            "painful",
            "recurrence",
            "haemorrhage",
            "vascular",
            "known_diagnosis",
        ],
        list[str],
    ]
    contraindication: dict[
        Literal[
            "device",
            "device_conditional",
            "general",
            "habitus",
            "metal",
            "metal_elsewhere",
            "not_contraindication",
            "mineralisation_request",
        ],
        list[str],
    ]
    caution: CautionDef


_TERM_SECTIONS = (
    "negation",
    "procedure_class",
    "contrast",
    "region",
    "laterality",
    "indication",
    "findings",
    "contraindication",
    "caution",
)


class LanguageDef(_Strict):
    """How a language is named in MSH-19 and recognised in text."""

    code: str = Field(pattern=r"^[a-z]{2}$")  # ISO 639-1
    name: str
    # MSH-19 identifiers and names that mean this language (ISO 639-1/-2, English and own name).
    aliases: list[str] = Field(default_factory=list)
    # Words typical of the language and rare in the others: the text is in this language when
    # it holds at least `min_words` different ones, more than any other language's.
    detect: list[str] = Field(min_length=1)
    min_words: int = Field(default=2, ge=1)
    citations: list[Citation] = Field(default_factory=list)


class LanguageFile(_Strict):
    """worker/data/vocabulary.<code>.toml: the terms of one more language, section by section
    as in vocabulary.toml. They are added to the English lists (English always applies: an
    order in German may use English abbreviations), and the result is validated again as a
    VocabularyFile. vocabulary.en.toml has no terms: it says how English text is recognised."""

    version: str
    language: LanguageDef
    negation: dict[str, list[str]] = Field(default_factory=dict)
    procedure_class: dict[str, list[str]] = Field(default_factory=dict)
    contrast: dict[str, list[str]] = Field(default_factory=dict)
    region: dict[str, list[str]] = Field(default_factory=dict)
    laterality: dict[str, list[str]] = Field(default_factory=dict)
    indication: dict[str, list[str]] = Field(default_factory=dict)
    findings: dict[str, list[str]] = Field(default_factory=dict)
    contraindication: dict[str, list[str]] = Field(default_factory=dict)
    caution: dict[str, list[str]] = Field(default_factory=dict)

    def merged_into(self, vocab: VocabularyFile) -> VocabularyFile:
        """*vocab* with this language's terms added after the English ones."""
        data = vocab.model_dump(by_alias=True)
        for section in _TERM_SECTIONS:
            for key, patterns in getattr(self, section).items():
                base = data[section].get(key)
                if not isinstance(base, list):
                    raise ValueError(
                        f"{self.language.code}: {section}.{key} is not a term list of"
                        " vocabulary.toml"
                    )
                data[section][key] = [*base, *patterns]
        merged: VocabularyFile = VocabularyFile.model_validate(data)
        return merged


_ESCAPE_OR_CHAR = re.compile(r"\\.|.", re.DOTALL)


def _lower_pattern(pattern: str) -> str:
    """*pattern* with its literal letters in lower case; escapes (\\B, \\S, \\W) are kept."""
    return "".join(t if t.startswith("\\") else t.lower() for t in _ESCAPE_OR_CHAR.findall(pattern))


def fold(text: str) -> str:
    """*text* in lower case, of the same length (indices stay valid): the text every compiled
    term is matched on. U+0130 (dotted capital I) is the one character whose lower case is two."""
    return text.replace("\u0130", "i").lower()


def compile_terms(patterns: list[str], where: str) -> re.Pattern[str]:
    """One regex matching any of *patterns* on folded text (see fold); names *where* on a bad
    pattern. Case-sensitive matching on folded text is several times faster than IGNORECASE."""
    lowered = [_lower_pattern(p) for p in patterns]
    for i, p in enumerate(lowered):
        try:
            re.compile(p)
        except re.error as exc:
            raise ValueError(f"{where}[{i}]: invalid pattern {patterns[i]!r}: {exc}") from None
    if not patterns:
        return re.compile(r"(?!x)x")
    return re.compile(_alternation(lowered))


def _alternation(patterns: list[str]) -> str:
    """*patterns* as one alternation, in their order, arranged so that Python's regex engine
    tries few of them at each position (same matches, the same one chosen at each position):

    - each run of patterns that start with a word boundary shares one: \\b(?:a|b) is exactly
      \\ba|\\bb (ordered choice, zero width), and mid-word positions are skipped once per run
      (a list with one unanchored pattern scanned about ten times slower);
    - in a run, patterns that begin with the same letter share it (_by_first_letter)."""

    def anchored(p: str) -> bool:
        return p.startswith("\\b") and _top_level_bar(p) is None

    patterns = [_boundary_first(p) for p in patterns]
    if not any(anchored(p) for p in patterns):
        return "|".join(f"(?:{p})" for p in patterns)
    parts: list[str] = []
    run: list[str] = []
    for p in [*patterns, ""]:
        if p and anchored(p):
            run.append(p[2:])
            continue
        if run:
            parts.append("\\b(?:" + _by_first_letter(run) + ")")
            run = []
        if p:
            parts.append(f"(?:{p})")
    return "|".join(parts)


# Lookbehinds (without groups inside) at the start of a pattern, then a word boundary.
_LOOKBEHINDS_THEN_BOUNDARY = re.compile(r"((?:\(\?<[!=](?:[^()\\]|\\.)*\))+)\\b")


def _boundary_first(pattern: str) -> str:
    """*pattern* with a word boundary that follows its leading lookbehinds moved before them:
    "(?<!\\d )\\bmo" is "\\b(?<!\\d )mo" (zero-width tests at one position, in any order),
    and the engine then tries it at word starts only."""
    m = _LOOKBEHINDS_THEN_BOUNDARY.match(pattern)
    if m is None or _top_level_bar(pattern) is not None:
        return pattern
    return "\\b" + m.group(1) + pattern[m.end() :]


def _by_first_letter(alternatives: list[str]) -> str:
    """*alternatives* (no top-level |) as one alternation where those that begin with the same
    literal letter share it: "ab|c|ad" becomes "a(?:b|d)|c". At a position, only the group of
    the letter there can match, and its members keep their order, so the first alternative
    that matches is the same; an alternative that begins otherwise (a class, a group, an
    escape) stays in its place and the letters are grouped on each side of it. The engine then
    checks one letter per group at a position instead of every alternative."""
    out: list[str] = []
    groups: dict[str, list[str]] = {}

    def flush() -> None:
        for letter, rests in groups.items():
            out.append(f"{letter}(?:" + "|".join(f"(?:{r})" for r in rests) + ")")
        groups.clear()

    for alt in alternatives:
        if alt[:1].isalnum() and alt[1:2] not in ("?", "*", "+", "{"):
            groups.setdefault(alt[0], []).append(alt[1:])
        else:
            flush()
            out.append(f"(?:{alt})")
    flush()
    return "|".join(out)


def _top_level_bar(pattern: str) -> int | None:
    """The position of the first | outside any group or class in *pattern*, or None."""
    depth = 0
    in_class = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if pattern.startswith("]", i + 1) or pattern.startswith("^]", i + 1):
                i += 2 if pattern[i + 1] == "]" else 3
                continue
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return i
        i += 1
    return None


class Knowledge:
    """Everything the extractor and the rules read, validated and indexed once."""

    def __init__(
        self,
        guideline: GuidelineFile,
        codes: CodesFile,
        vocab: VocabularyFile,
        code_map: CodeMapFile,
        protocols: ProtocolMapFile | None = None,
        languages: dict[str, LanguageFile] | None = None,
    ) -> None:
        self.guideline = guideline
        self.protocols = ProtocolMap(protocols or ProtocolMapFile())
        self.codes = codes
        self.vocab = vocab
        self.code_map = code_map
        self.language = "en"
        self.languages = dict(languages or {})
        """Every language file by ISO 639-1 code, English included when its file is there."""
        self.language_alias: dict[str, str] = {}
        self.detectors: dict[str, tuple[re.Pattern[str], int]] = {}
        for code, lf in self.languages.items():
            where = f"vocabulary.{code}.toml"
            if lf.language.code != code:
                raise ValueError(f"{where}: language.code is {lf.language.code!r}")
            for alias in [code, lf.language.name, *lf.language.aliases]:
                self.language_alias[alias.strip().lower()] = code
            self.detectors[code] = (
                compile_terms(lf.language.detect, f"{where} language.detect"),
                lf.language.min_words,
            )
            for section in _TERM_SECTIONS:  # a bad entry fails at start-up, not at first use
                base = getattr(vocab, section)
                for key, pats in getattr(lf, section).items():
                    known = base.get(key) if isinstance(base, dict) else getattr(base, key, None)
                    if not isinstance(known, list):
                        raise ValueError(f"{where}: {section}.{key} is not a term list")
                    compile_terms(pats, f"{where} {section}.{key}")
            for c in lf.language.citations:
                if c.source not in guideline.sources:
                    raise ValueError(f"{where}: unknown citation source {c.source!r}")
        words = list(dict.fromkeys(w for lf in self.languages.values() for w in lf.language.detect))
        self.detect_words = compile_terms(words, "language.detect")
        """Every language's typical words in one pattern: one scan of a text finds them all."""
        self._in_language: dict[str, Knowledge] = {"en": self}
        self._lock = threading.Lock()
        self.version = guideline.guideline.version
        self.system_alias: dict[str, str] = {}
        for canonical, aliases in codes.systems.items():
            for alias in [canonical, *aliases]:
                self.system_alias[alias.upper()] = canonical
        self.procedures: dict[tuple[str, str], ProcedureCodeDef | CodeMapEntry] = {}
        for i, entry in enumerate(codes.procedure):
            system = self.system_alias.get(entry.system.upper())
            if system is None:
                raise ValueError(f"procedure[{i}]: unknown system {entry.system!r}")
            for code in _expand(entry.codes):
                self.procedures[(system, code)] = entry
        self.local: dict[tuple[str, str], CodeMapEntry] = {}
        for local in code_map.code:
            self.local[(local.system.upper(), local.code.strip().upper())] = local
        self.diagnoses: list[tuple[str, DiagnosisDef]] = sorted(
            ((p.replace(".", "").upper(), d) for d in codes.diagnosis for p in d.prefixes),
            key=lambda item: -len(item[0]),
        )
        v = vocab
        self.negation_before = compile_terms(v.negation.before, "negation.before")
        self.negation_after = compile_terms(v.negation.after, "negation.after")
        self.negation_answer = compile_terms(v.negation.answer, "negation.answer")
        self.negation_stop = compile_terms(v.negation.terminators, "negation.terminators")
        self.negation_result = compile_terms(v.negation.result, "negation.result")
        self.negation_scope_break = compile_terms(v.negation.scope_break, "negation.scope_break")
        self.negation_planned = compile_terms(v.negation.planned, "negation.planned")
        self.negation_pseudo = compile_terms(v.negation.pseudo, "negation.pseudo")
        self.procedure_class = {
            k: compile_terms(p, f"procedure_class.{k}") for k, p in v.procedure_class.items()
        }
        self.contrast = {k: compile_terms(p, f"contrast.{k}") for k, p in v.contrast.items()}
        self.region = {k: compile_terms(p, f"region.{k}") for k, p in v.region.items()}
        self.laterality = {k: compile_terms(p, f"laterality.{k}") for k, p in v.laterality.items()}
        self.terms: dict[str, re.Pattern[str]] = {}
        for section in ("indication", "findings", "contraindication"):
            for key, pats in getattr(v, section).items():
                self.terms[key] = compile_terms(pats, f"{section}.{key}")
        caution = v.caution
        self.egfr = compile_terms(caution.egfr, "caution.egfr")
        for key in ("dialysis", "pregnancy", "gadolinium_reaction"):
            self.terms[key] = compile_terms(getattr(caution, key), f"caution.{key}")

    def rule(self, rule_id: str) -> RuleDef:
        return self.guideline.rules[rule_id]

    def in_language(self, code: str) -> Knowledge:
        """This knowledge reading *code* (ISO 639-1) as well as English: the language's terms
        added to every English list. Built on first use, once per process; English (or a
        language without a file) is this object itself."""
        kn = self._in_language.get(code)
        if kn is not None:
            return kn
        lf = self.languages.get(code)
        if lf is None or not any(getattr(lf, s) for s in _TERM_SECTIONS):
            return self
        with self._lock:
            kn = self._in_language.get(code)
            if kn is None:
                kn = Knowledge(
                    self.guideline, self.codes, lf.merged_into(self.vocab), self.code_map
                )
                kn.protocols = self.protocols
                kn.language = code
                kn.languages = self.languages
                kn.language_alias = self.language_alias
                kn.detectors = self.detectors
                kn.detect_words = self.detect_words
                kn._in_language = self._in_language
                self._in_language[code] = kn
        return kn

    def cite(self, citations: list[Citation]) -> list[str]:
        """Citation strings for output: "TAG: source text (detail)"."""
        out = []
        for c in citations:
            detail = f" ({c.detail})" if c.detail else ""
            out.append(f"{c.source}: {self.guideline.sources[c.source]}{detail}")
        return out

    def protocol_kind(self, preferred: Procedure | None) -> ProtocolKind | None:
        """The protocol list a result's preferred procedure was given (None: not ours)."""
        if preferred is None:
            return None
        for key, p in self.guideline.procedures.items():
            if (p.code, p.system) == (preferred.code, preferred.system):
                return kind_of(key)
        return None

    def protocol_choice(self, result: CheckResult) -> ProtocolChoice | None:
        """The protocol variant *result* recommends and the site's code for it, if any."""
        return self.protocols.choose(result, self.protocol_kind(result.preferred_procedure))

    def lookup_procedure(self, code: str, system: str) -> ProcedureCodeDef | CodeMapEntry | None:
        """A procedure code's meaning: site code map first, then standard codes."""
        code_u = code.strip().upper()
        system_u = system.strip().upper()
        if not code_u:
            return None
        local = self.local.get((system_u, code_u)) or self.local.get(("", code_u))
        if local is not None:
            return local
        canonical = self.system_alias.get(system_u)
        base = _CPT_MODIFIERS.match(code_u)
        if base is not None and canonical in (None, "CPT"):  # "73701-LT", "73720 RT"
            return self.lookup_procedure(base.group(1), system)
        if canonical is not None:
            return self.procedures.get((canonical, code_u))
        if not system_u:  # no system given: accept a code that is unambiguous in our tables
            for canonical in ("CPT", "LN", "RADLEX"):
                hit = self.procedures.get((canonical, code_u))
                if hit is not None:
                    return hit
        return None

    def lookup_diagnosis(self, code: str) -> list[DiagnosisDef]:
        norm = code.replace(".", "").strip().upper()
        if not norm:
            return []
        hits: list[DiagnosisDef] = []
        seen: set[str] = set()
        for prefix, d in self.diagnoses:
            if norm.startswith(prefix) and d.meaning not in seen:
                hits.append(d)
                seen.add(d.meaning)
        return hits


def _read_toml(path: Path | Any, label: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GuidelineError(f"{label}: cannot read: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GuidelineError(f"{label}: not valid TOML: {exc}") from None


def _validate(model: type[BaseModel], data: dict[str, Any], label: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise GuidelineError(
            f"{label}: entry {where}: {first['msg']} ({exc.error_count()} error(s))"
        ) from None


_LANGUAGE_FILE = re.compile(r"^vocabulary\.([a-z]{2})\.toml$")


def load_protocol_map(path: Path | None = None, data_dir: Path | None = None) -> ProtocolMapFile:
    """The site protocol map *path*, else the packaged protocols.toml. Raises GuidelineError."""
    base: Any = data_dir if data_dir is not None else resources.files("worker") / "data"
    source: Any = path if path is not None else base / "protocols.toml"
    label = str(path) if path is not None else "protocols.toml"
    data: ProtocolMapFile = _validate(ProtocolMapFile, _read_toml(source, label), label)
    return data


def load_knowledge(
    code_map: Path | None = None, data_dir: Path | None = None, protocols: Path | None = None
) -> Knowledge:
    """Read and validate the guideline files, a site code map and a site protocol map (the
    packaged defaults when None). Raises GuidelineError."""
    base: Any = data_dir if data_dir is not None else resources.files("worker") / "data"
    files = {}
    for name, model in (
        ("guideline.toml", GuidelineFile),
        ("codes.toml", CodesFile),
        ("vocabulary.toml", VocabularyFile),
    ):
        files[name] = _validate(model, _read_toml(base / name, name), name)
    languages: dict[str, LanguageFile] = {}
    for entry in sorted(base.iterdir(), key=lambda e: e.name):
        m = _LANGUAGE_FILE.match(entry.name)
        if m is not None:
            lf = _validate(LanguageFile, _read_toml(entry, entry.name), entry.name)
            languages[m.group(1)] = lf
    map_path: Any = code_map if code_map is not None else base / "codemap.toml"
    map_label = str(code_map) if code_map is not None else "codemap.toml"
    cmap = _validate(CodeMapFile, _read_toml(map_path, map_label), map_label)
    pmap = load_protocol_map(protocols, data_dir)
    try:
        return Knowledge(
            files["guideline.toml"],
            files["codes.toml"],
            files["vocabulary.toml"],
            cmap,
            pmap,
            languages,
        )
    except ValueError as exc:
        raise GuidelineError(f"guideline data: {exc}") from None


@cache
def default_knowledge() -> Knowledge:
    """The packaged guideline with the packaged (empty) site code map, loaded once."""
    return load_knowledge()
