"""Orders written in Spanish, German, French and Italian, generated from the wordings radiology
services of those languages use, each with the outcome guideline.md gives (not what the code
happens to do). Shared by tests/test_languages.py and bench/language_accuracy.py.

A case: language, category, procedure text (OBR-4.2), indication (OBR-31), notes (NTE), the
expected verdict, the flags expected (exactly), and advice codes that must be among the advice.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    language: str
    category: str
    procedure: str
    reason: str
    notes: tuple[str, ...] = ()
    verdict: str = "appropriate"
    flags: frozenset[str] = frozenset()
    advice: frozenset[str] = frozenset()
    msh19: str = ""
    id: str = field(default="", compare=False)


# Per language: sides, procedure wordings ({side} is filled), indications, notes.
LANGUAGES: dict[str, dict[str, object]] = {
    "es": {
        "sides": ("izquierdo", "derecho"),
        "ct": (
            "TC muslo {side} con contraste",
            "TAC de muslo {side} con contraste IV",
            "Tomografía computarizada de muslo {side}",
        ),
        "mri_wwo": ("RM muslo {side} con y sin contraste", "Resonancia magnética de muslo {side}"),
        "mri_wo": ("RM muslo {side} sin contraste", "RMN de muslo {side} sin gadolinio"),
        "biopsy": (
            "Biopsia con aguja gruesa ecoguiada de muslo {side}",
            "BAG guiada por ecografía muslo {side}",
            "PAAF de masa de muslo {side}",
        ),
        "mass": (
            "Masa de partes blandas en muslo {side}",
            "Tumoración en muslo {side}, sospecha de sarcoma",
            "Bulto palpable en cara anterior del muslo {side} de 4 cm",
        ),
        "red_flags": (
            "Masa de 8 cm en muslo {side}",
            "Masa profunda en muslo {side}",
            "Masa en muslo {side} con calcificaciones en la Rx",
        ),
        "pacemaker": (
            "Portador de marcapasos no compatible con RM",
            "Marcapasos desde 2019",
            "Desfibrilador automático implantable (DAI)",
        ),
        "prior_mri": (
            "RM previa del 12/10/2026: masa de 7 cm",
            "RM de muslo {side} realizada el 03/11/2026 muestra masa profunda",
            "Según la RM del 02/11/2026, masa intramuscular",
        ),
        "no_mri": ("RM programada para el 20/12/2026", "Sin RM previa", "Pendiente de RM"),
        "negated": (
            "Sin masa palpable en el muslo {side}, dolor tras ejercicio",
            "No se palpa masa en muslo {side}, dolor muscular",
            "Ausencia de masa; dolor en muslo {side}",
        ),
        "out_of_scope": (
            ("TC fémur izquierdo", "Fractura de fémur izquierdo tras caída"),
            ("RM rodilla derecha", "Rotura de menisco interno de la rodilla derecha"),
            ("TC tórax con contraste", "Masa pulmonar en lóbulo superior derecho"),
            (
                "Ecografía doppler pierna izquierda",
                "Hinchazón del muslo izquierdo, sospecha de TVP",
            ),
        ),
        "msh19": ("es", "spa^Spanish^ISO639-2", "es-ES"),
    },
    "de": {
        "sides": ("links", "rechts"),
        "ct": (
            "CT Oberschenkel {side} mit KM",
            "CT OS {side} nativ und mit KM",
            "Computertomographie Oberschenkel {side}",
        ),
        "mri_wwo": ("MRT Oberschenkel {side} nativ und mit KM", "MRT OS {side} nativ + KM"),
        "mri_wo": ("MRT Oberschenkel {side} nativ", "MRT Oberschenkel {side} ohne KM"),
        "biopsy": (
            "Sonographisch gesteuerte Stanzbiopsie Oberschenkel {side}",
            "CT-gesteuerte Biopsie Oberschenkel {side}",
            "Feinnadelpunktion Oberschenkel {side}",
        ),
        "mass": (
            "Raumforderung Oberschenkel {side}, V.a. Weichteilsarkom",
            "Weichteiltumor Oberschenkel {side}",
            "Tastbarer Knoten am Oberschenkel {side}, 4 cm",
        ),
        "red_flags": (
            "Raumforderung Oberschenkel {side}, 8 cm",
            "Tiefe Raumforderung Oberschenkel {side}",
            "Raumforderung Oberschenkel {side} mit Verkalkungen im Röntgen",
        ),
        "pacemaker": (
            "Herzschrittmacher, nicht MRT-tauglich",
            "Schrittmacher seit 2018",
            "Cochlea-Implantat beidseits",
        ),
        "prior_mri": (
            "MRT Oberschenkel {side} vom 03.11.2026: 7 cm Raumforderung",
            "MRT vom 12.10.2026 zeigt tiefe Raumforderung",
            "Laut MRT (extern) Raumforderung 6 cm",
        ),
        "no_mri": ("MRT geplant", "Bisher kein MRT", "MRT-Termin ausstehend"),
        "negated": (
            "Keine Raumforderung tastbar, Schmerzen Oberschenkel {side}",
            "Kein Hinweis auf eine Raumforderung, Oberschenkel {side} schmerzhaft",
            "Schmerzen Oberschenkel {side}, Raumforderung ausgeschlossen",
        ),
        "out_of_scope": (
            ("CT Oberschenkel links", "Oberschenkelfraktur links nach Sturz"),
            ("MRT Knie rechts", "Innenmeniskusriss rechts"),
            ("CT Thorax mit KM", "Raumforderung Lunge rechts"),
            ("Duplexsonographie Bein links", "Schwellung Oberschenkel links, V.a. TVT"),
        ),
        "msh19": ("de", "de^German^ISO639", "ger"),
    },
    "fr": {
        "sides": ("gauche", "droite"),
        "ct": (
            "TDM de la cuisse {side} avec injection",
            "Scanner de la cuisse {side}",
            "Tomodensitométrie cuisse {side} sans et avec injection",
        ),
        "mri_wwo": (
            "IRM de la cuisse {side} sans et avec injection",
            "IRM cuisse {side} avec et sans gadolinium",
        ),
        "mri_wo": ("IRM de la cuisse {side} sans injection", "IRM cuisse {side} sans gadolinium"),
        "biopsy": (
            "Biopsie échoguidée de la cuisse {side}",
            "Microbiopsie sous scanner de la cuisse {side}",
            "Ponction-biopsie de la cuisse {side}",
        ),
        "mass": (
            "masse des parties molles de la cuisse {side}",
            "tuméfaction de la cuisse {side}, suspicion de sarcome",
            "masse palpable de la face antérieure de la cuisse {side} de 4 cm",
        ),
        "red_flags": (
            "masse de 8 cm de la cuisse {side}",
            "masse profonde de la cuisse {side}",
            "masse de la cuisse {side} avec calcifications à la radio",
        ),
        "pacemaker": (
            "stimulateur cardiaque non compatible IRM",
            "porteur d'un pacemaker",
            "défibrillateur implantable",
        ),
        "prior_mri": (
            "IRM du 12/10/2026 : masse de 7 cm",
            "IRM de la cuisse {side} réalisée le 03/11/2026",
            "Selon l'IRM, masse profonde de 6 cm",
        ),
        "no_mri": ("IRM prévue le 20/12/2026", "Pas d'IRM", "IRM en attente"),
        "negated": (
            "Pas de masse palpable de la cuisse {side}, douleurs",
            "Absence de masse, douleur de la cuisse {side}",
            "Aucune masse retrouvée, cuisse {side} douloureuse",
        ),
        "out_of_scope": (
            ("TDM du fémur gauche", "fracture du fémur gauche après chute"),
            ("IRM du genou droit", "déchirure du ménisque interne du genou droit"),
            ("Scanner thoracique", "masse pulmonaire"),
            ("Écho-doppler de la jambe gauche", "gonflement de la cuisse gauche, suspicion de TVP"),
        ),
        "msh19": ("fr", "fre^French^ISO639-2", "fr-FR"),
    },
    "it": {
        "sides": ("sinistra", "destra"),
        "ct": (
            "TC coscia {side} con mdc",
            "TAC della coscia {side}",
            "Tomografia computerizzata coscia {side} senza e con mdc",
        ),
        "mri_wwo": ("RM coscia {side} senza e con mdc", "RMN della coscia {side} con e senza mdc"),
        "mri_wo": ("RM coscia {side} senza mdc", "RM della coscia {side} senza mezzo di contrasto"),
        "biopsy": (
            "Agobiopsia ecoguidata della coscia {side}",
            "Biopsia con ago tranciante coscia {side}",
            "Biopsia TC-guidata della coscia {side}",
        ),
        "mass": (
            "massa dei tessuti molli della coscia {side}",
            "tumefazione della coscia {side}, sospetto sarcoma",
            "nodulo palpabile della coscia {side} di 4 cm",
        ),
        "red_flags": (
            "massa di 8 cm della coscia {side}",
            "massa profonda della coscia {side}",
            "massa della coscia {side} con calcificazioni alla radiografia",
        ),
        "pacemaker": (
            "portatore di pacemaker",
            "portatore di PM non RM compatibile",
            "defibrillatore impiantabile",
        ),
        "prior_mri": (
            "RM del 12/10/2026: massa di 7 cm",
            "RM della coscia {side} eseguita il 03/11/2026",
            "Alla RM massa intramuscolare di 6 cm",
        ),
        "no_mri": ("RM programmata", "Nessuna RM precedente", "In attesa di RM"),
        "negated": (
            "Nessuna massa palpabile alla coscia {side}, dolore",
            "Non si palpa massa nella coscia {side}, dolore",
            "Assenza di massa, dolore alla coscia {side}",
        ),
        "out_of_scope": (
            ("TC femore sinistro", "frattura del femore sinistro dopo caduta"),
            ("RM ginocchio destro", "lesione del menisco mediale del ginocchio destro"),
            ("TC torace con mdc", "massa polmonare"),
            (
                "Ecocolordoppler arto inferiore sinistro",
                "gonfiore della coscia sinistra, sospetta TVP",
            ),
        ),
        "msh19": ("it", "ita^Italian^ISO639-2", "it-IT"),
    },
}


def _texts(lang: str, key: str) -> tuple[str, ...]:
    value = LANGUAGES[lang][key]
    assert isinstance(value, tuple)
    return value


class _Builder:
    """Collects the cases of one language."""

    def __init__(self, lang: str, out: list[Case]) -> None:
        self.lang = lang
        self.out = out

    def t(self, key: str) -> tuple[str, ...]:
        return _texts(self.lang, key)

    def add(
        self,
        category: str,
        proc: str,
        reason: str,
        *notes: str,
        side: str,
        verdict: str = "appropriate",
        flags: frozenset[str] = frozenset(),
        advice: frozenset[str] = frozenset(),
        msh19: str = "",
    ) -> None:
        def fill(s: str) -> str:
            return s.format(side=side)

        self.out.append(
            Case(
                self.lang,
                category,
                fill(proc),
                fill(reason),
                tuple(fill(n) for n in notes),
                verdict=verdict,
                flags=flags,
                advice=advice,
                msh19=msh19,
                id=f"{self.lang}-{category}-{len(self.out)}",
            )
        )


CT_FLAG = frozenset({"CT_BEFORE_MRI"})
BIOPSY_FLAG = frozenset({"BIOPSY_BEFORE_MRI"})
FLAGGED = "not-appropriate"


def _language_cases(b: _Builder) -> None:
    t = b.t
    sides = t("sides")
    for i, proc in enumerate(t("ct")):
        for j, reason in enumerate(t("mass")):
            b.add(
                "ct_first_flagged",
                proc,
                reason,
                side=sides[(i + j) % 2],
                verdict=FLAGGED,
                flags=CT_FLAG,
            )
    for i, proc in enumerate(t("ct")):
        for j, note in enumerate(t("pacemaker")):
            b.add(
                "ct_mri_contraindicated",
                proc,
                t("mass")[j],
                note,
                side=sides[(i + j) % 2],
                advice=frozenset({"MRI_CONTRAINDICATED"}),
            )
    for i, proc in enumerate(t("biopsy")):
        for j, note in enumerate(t("no_mri")):
            b.add(
                "biopsy_before_mri",
                proc,
                t("mass")[j],
                note,
                side=sides[(i + j) % 2],
                verdict=FLAGGED,
                flags=BIOPSY_FLAG,
            )
    for i, proc in enumerate(t("biopsy")):
        for j, note in enumerate(t("prior_mri")):
            b.add("biopsy_after_mri", proc, t("mass")[i], note, side=sides[(i + j) % 2])
    for i, proc in enumerate(t("mri_wo")):
        for j, reason in enumerate(t("red_flags")):
            b.add(
                "mri_add_contrast",
                proc,
                reason,
                side=sides[(i + j) % 2],
                advice=frozenset({"MRI_ADD_CONTRAST"}),
            )
    for i, proc in enumerate(t("mri_wwo")):
        for j, reason in enumerate(t("mass")):
            b.add("mri_wwo_appropriate", proc, reason, side=sides[(i + j) % 2])
    look_alikes = LANGUAGES[b.lang]["out_of_scope"]
    assert isinstance(look_alikes, tuple)
    for proc, reason in look_alikes:
        b.add("out_of_scope", proc, reason, side="", verdict="no-criteria-apply")
    for i, reason in enumerate(t("negated")):
        for side in sides:
            b.add("negated_mass", t("ct")[i], reason, side=side, verdict="no-criteria-apply")
    # The same orders with their language declared in MSH-19 instead of detected.
    for k, msh19 in enumerate(t("msh19")):
        side = sides[k % 2]
        b.add(
            "msh19",
            t("ct")[k],
            t("mass")[k],
            side=side,
            msh19=msh19,
            verdict=FLAGGED,
            flags=CT_FLAG,
        )
        b.add("msh19", t("biopsy")[k], t("mass")[k], t("prior_mri")[k], side=side, msh19=msh19)


def cases() -> list[Case]:
    """Every generated case, in a stable order."""
    out: list[Case] = []
    for lang in LANGUAGES:
        _language_cases(_Builder(lang, out))
    return out
