"""Protocol pre-selection for the RIS: the guideline's protocol variants and a site's codes.

The advisory recommends a protocol (guideline.md section 5): the MRI protocol, with subtraction
when haemorrhage is suspected and with MR angiography when the mass is vascular, or CT with
contrast (dual-energy CT with metal at the site) when MRI is contraindicated. A RIS protocols
with its own codes, so a site maps each variant to one of them in `protocols.toml` (the packaged
default under worker/data/, a site file through ORDERCHECK_PROTOCOLS_FILE). The advisory then
carries the code in an OBX, and the `order-echo` format in IPC-6 (Protocol Code) of an OMI echo,
so the RIS can pre-select it. The file is validated by pydantic when loaded: a bad file stops
start-up with one line naming the file and the entry (GuidelineError).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from worker.models import CheckResult, OrderFacts, Procedure

ProtocolKind = Literal["mri", "ct"]
Variant = Literal[
    "mri_standard",
    "mri_subtraction",
    "mri_mra",
    "mri_subtraction_mra",
    "ct_contrast",
    "ct_dual_energy",
]
# The variant of each modality every other variant of it falls back to.
BASE: dict[ProtocolKind, Variant] = {"mri": "mri_standard", "ct": "ct_contrast"}
# Codes tried in turn for each variant: a site whose RIS has no separate subtraction protocol
# leaves it out and gets its standard MRI code (the protocol steps still say "subtraction").
# With haemorrhage and a vascular mass, MR angiography (an added acquisition) goes first.
FALLBACK: dict[Variant, tuple[Variant, ...]] = {
    "mri_standard": ("mri_standard",),
    "mri_subtraction": ("mri_subtraction", "mri_standard"),
    "mri_mra": ("mri_mra", "mri_standard"),
    "mri_subtraction_mra": ("mri_subtraction_mra", "mri_mra", "mri_subtraction", "mri_standard"),
    "ct_contrast": ("ct_contrast",),
    "ct_dual_energy": ("ct_dual_energy", "ct_contrast"),
}
# Ordered procedure classes that a protocol of each kind is the order's own protocol for.
ORDER_CLASSES: dict[ProtocolKind, tuple[str, ...]] = {"mri": ("mri", "mra"), "ct": ("ct", "cta")}
KIND_NAME: dict[ProtocolKind, str] = {"mri": "MRI", "ct": "CT"}

# HL7 v2.5.1 CWE-1 (ST, 20), CWE-2 (ST, 199), CWE-3 (ID, 20); no control characters.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def kind_of(procedure_key: str) -> ProtocolKind:
    """The protocol list (guideline.toml `protocol.mri` or `.ct`) of a preferred procedure key."""
    return "ct" if procedure_key.startswith("CT") else "mri"


def conditions(facts: OrderFacts) -> set[str]:
    """The `when` values of guideline protocol steps that apply to an order with *facts*."""
    active = {"always"}
    if facts.haemorrhage:
        active.add("haemorrhage")
    if facts.vascular:
        active.add("vascular")
    if "metal" in facts.mri_contraindications:
        active.add("metal")
    return active


def variant_of(kind: ProtocolKind, facts: OrderFacts) -> Variant:
    """The protocol variant of *kind* the facts call for."""
    active = conditions(facts)
    if kind == "ct":
        return "ct_dual_energy" if "metal" in active else "ct_contrast"
    sub, mra = "haemorrhage" in active, "vascular" in active
    if sub and mra:
        return "mri_subtraction_mra"
    return "mri_subtraction" if sub else "mri_mra" if mra else "mri_standard"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProtocolCodeDef(_Strict):
    """One site protocol: the code the RIS knows it by, its name, and its coding system."""

    code: str = Field(min_length=1, max_length=20)
    text: str = Field(default="", max_length=199)
    system: str = Field(default="", max_length=20)  # "" = the file's `system`

    @field_validator("code", "text", "system")
    @classmethod
    def _printable(cls, value: str) -> str:
        if _CONTROL.search(value):
            raise ValueError("control characters are not allowed")
        if value != value.strip():
            raise ValueError("no leading or trailing spaces")
        return value


class ProtocolMapFile(_Strict):
    """protocols.toml: `version`, a default `system`, and `[protocols.<variant>]` tables."""

    version: str = ""
    system: str = Field(default="L", min_length=1, max_length=20)
    protocols: dict[Variant, ProtocolCodeDef] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bases(self) -> ProtocolMapFile:
        for kind, base in BASE.items():
            others = sorted(v for v in self.protocols if v.startswith(f"{kind}_") and v != base)
            if others and base not in self.protocols:
                raise ValueError(
                    f"protocols.{others[0]} is set but protocols.{base} is not: every {kind} "
                    f"variant falls back to {base}"
                )
        return self


@dataclass(frozen=True, slots=True)
class ProtocolChoice:
    """The protocol an advisory recommends and the site code for it."""

    kind: ProtocolKind
    variant: Variant
    code: Procedure | None  # None: the site map has no code for it
    for_order: bool  # a protocol of the ordered modality (IPC-6 is set only then)
    note: str  # "" or what the protocol applies to when it is not the ordered modality's


class ProtocolMap:
    """A validated protocols.toml, ready to look codes up."""

    def __init__(self, data: ProtocolMapFile) -> None:
        self.data = data

    def code(self, variant: Variant) -> Procedure | None:
        for name in FALLBACK[variant]:
            found = self.data.protocols.get(name)
            if found is not None:
                return Procedure(
                    code=found.code, text=found.text, system=found.system or self.data.system
                )
        return None

    def choose(self, result: CheckResult, kind: ProtocolKind | None) -> ProtocolChoice | None:
        """The protocol of *result* (kind: the protocol list it was built from), or None when
        the advisory recommends none (out of scope, no facts)."""
        facts = result.facts
        if kind is None or facts is None or not result.protocol:
            return None
        variant = variant_of(kind, facts)
        for_order = facts.procedure_class in ORDER_CLASSES[kind]
        note = ""
        if not for_order:
            name = KIND_NAME[kind]
            pp = result.preferred_procedure
            target = f"{name} ({pp.system} {pp.code})" if pp else name
            ordered = facts.procedure_class.upper()
            note = (
                f"{ordered} order: the {name} protocol applies once the order is converted "
                f"to {target}."
                if facts.procedure_class in ("ct", "cta", "mri", "mra")
                else f"{ordered} order: the {name} protocol is for the preferred procedure, "
                f"{target}."
            )
        return ProtocolChoice(kind, variant, self.code(variant), for_order, note)
