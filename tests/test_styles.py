"""Orders in vendor styles and HL7 shapes the seeds do not cover, read end to end by the checker.

Each test is a misread once found by writing orders the way other interfaces send them: the
message must give the verdict its content calls for, whatever its framing, encoding or layout.
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Callable

import pytest

from tests.conftest import SEEDS
from tests.hl7build import segment
from worker.check import Checker
from worker.errors import HL7ParseError
from worker.guideline import Knowledge
from worker.history import InMemoryHistory
from worker.hl7.build import build_advisory, convert_field
from worker.hl7.escape import Delimiters
from worker.hl7.parse import iter_messages, parse_message, split_messages
from worker.ingest import Ingestor
from worker.models import CheckResult
from worker.settings import Settings
from worker.store import MemoryDedup

CT = "73701^CT LOWER EXTREMITY W CONTRAST^CPT4"
MRI = "73720^MRI LOWER EXTREMITY WO+W^CPT4"
BIOPSY = "20206^BIOPSY MUSCLE PERCUTANEOUS^CPT4"
CASE = "6 cm deep mass left thigh, XR femur showed calcification"


def msh(
    control_id: str,
    kind: str = "ORM^O01",
    version: str = "2.3",
    extra: dict[int, str] | None = None,
) -> str:
    return segment(
        "MSH",
        {
            3: "EHR",
            4: "TSTH",
            5: "RIS",
            6: "TSTH",
            7: "20261101093000",
            9: kind,
            10: control_id,
            11: "P",
            12: version,
            **(extra or {}),
        },
    )


def pid(mrn: str, birth: str = "19700203") -> str:
    return segment("PID", {1: "1", 3: f"{mrn}^^^TSTH^MR", 5: "TEST^STYLE", 7: birth, 8: "F"})


def order(
    control_id: str,
    mrn: str,
    procedure: str = CT,
    text: str = CASE,
    birth: str = "19700203",
    kind: str = "ORM^O01",
    version: str = "2.3",
) -> list[str]:
    return [
        msh(control_id, kind, version),
        pid(mrn, birth),
        segment("ORC", {1: "NW", 2: f"{control_id}P"}),
        segment("OBR", {1: "1", 2: f"{control_id}P", 4: procedure, 13: text}),
    ]


def encode(segments: list[str], eol: str = "\r") -> bytes:
    return (eol.join(segments) + eol).encode("utf-8")


def results(checker: Checker, data: bytes) -> list[CheckResult]:
    return [r for outcome in checker.check_file_bytes(data) for r in outcome.results]


def only(checker: Checker, data: bytes) -> CheckResult:
    found = results(checker, data)
    assert len(found) == 1, [(r.verdict, r.error) for r in found]
    return found[0]


def codes(result: CheckResult) -> list[str]:
    return [f.code for f in result.flags]


# -- MSH-9 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ORM_O01", "ORM", "ORM^O01^ORM_O01", "orm^o01", " ORM^O01 "])
def test_message_type_forms(checker: Checker, kind: str) -> None:
    r = only(checker, encode(order("S01", "TST90001", kind=kind)))
    assert r.verdict == "not-appropriate" and codes(r) == ["CT_BEFORE_MRI"]
    assert r.message_type.startswith("ORM")


def test_structure_only_message_type_is_split(checker: Checker) -> None:
    outcome = checker.check_file_bytes(encode(order("S01", "TST90001", kind="OMI_O23")))[0]
    assert outcome.parsed is not None
    header = outcome.parsed.header
    assert (header.message_type, header.trigger_event, header.message_structure) == (
        "OMI",
        "O23",
        "OMI_O23",
    )


# -- bytes before and around MSH -----------------------------------------------------------------
@pytest.mark.parametrize(
    "prefix",
    [
        codecs.BOM_UTF8,
        b"\r\n  \t",
        b"\x00\x00",
        b"<HL7 export 2026-11-01>",
        codecs.BOM_UTF8 + b"\x0b",
    ],
)
def test_bytes_before_msh(checker: Checker, prefix: bytes) -> None:
    r = only(checker, prefix + encode(order("S07", "TST90007")))
    assert r.verdict == "not-appropriate" and r.placer_order_number == "S07P"


def test_bom_before_each_message_of_a_file(checker: Checker) -> None:
    data = (
        codecs.BOM_UTF8
        + encode(order("S07A", "TST90007"))
        + codecs.BOM_UTF8
        + encode(order("S07B", "TST90008", procedure=MRI))
    )
    found = results(checker, data)
    assert [(r.placer_order_number, r.verdict) for r in found] == [
        ("S07AP", "not-appropriate"),
        ("S07BP", "appropriate"),
    ]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_file(checker: Checker, encoding: str) -> None:
    text = "\r".join(order("S37A", "TST90039") + order("S37B", "TST90040", procedure=MRI)) + "\r"
    found = results(checker, text.encode(encoding))
    assert [(r.placer_order_number, r.verdict) for r in found] == [
        ("S37AP", "not-appropriate"),
        ("S37BP", "appropriate"),
    ]


@pytest.mark.parametrize("tail", ["", "x"])  # odd and even byte counts: UTF-16 must not be tried
def test_utf16_declared_but_sent_as_utf8(checker: Checker, tail: str) -> None:
    segs = order("S38", "TST90041", text=CASE + " – größe 6 cm" + tail)
    segs[0] = msh("S38", extra={18: "UNICODE UTF-16"})
    r = only(checker, encode(segs))
    assert r.verdict == "not-appropriate"
    assert r.facts is not None and r.facts.size_cm == 6


def test_batch_header_and_trailer_give_no_result(checker: Checker) -> None:
    data = encode(
        [
            "FHS|^~\\&|EHR|TSTH|RIS|TSTH|20261101093000",
            "BHS|^~\\&|EHR|TSTH|RIS|TSTH|20261101093000",
            *order("S04A", "TST90104"),
            *order("S04B", "TST90105", procedure=MRI),
            "BTS|2",
            "FTS|1",
        ]
    )
    found = results(checker, data)
    assert [(r.placer_order_number, r.verdict) for r in found] == [
        ("S04AP", "not-appropriate"),
        ("S04BP", "appropriate"),
    ]


def test_other_text_before_the_first_msh_still_gets_an_outcome(checker: Checker) -> None:
    found = results(checker, b"HELLO\r\n" + encode(order("S49", "TST90051")))
    assert [r.verdict for r in found] == ["rejected", "not-appropriate"]


def test_indented_lower_case_segments_and_dos_end_of_file(checker: Checker) -> None:
    segs = order("S45", "TST90047")
    data = (
        "\n".join(
            [
                "  " + segs[0].replace("MSH", "msh", 1),
                "\t" + segs[1].replace("PID", "pid"),
                " " + segs[2],
                segs[3] + "   ",
            ]
        )
        + "\r\n\x1a"
    )
    r = only(checker, data.encode())
    assert r.verdict == "not-appropriate" and r.placer_order_number == "S45P"


def test_blank_lines_between_messages_and_mllp_frames_without_end_block(checker: Checker) -> None:
    a, b = order("S35A", "TST90035"), order("S35B", "TST90036", procedure=MRI)
    blank = encode(a, "\n") + b"\n\n\n" + encode(b, "\n") + b"\n\n"
    starts_only = b"\x0b" + encode(a) + b"\x0b" + encode(b)
    for data in (blank, starts_only):
        found = results(checker, data)
        assert [r.verdict for r in found] == ["not-appropriate", "appropriate"]


# -- fields ---------------------------------------------------------------------------------------
def test_explicit_null_is_empty(checker: Checker) -> None:
    segs = [
        msh("S03"),
        pid("TST90103"),
        segment("ORC", {1: "NW", 2: '""', 3: '""'}),
        segment("OBR", {1: "1", 2: "S03P", 4: CT, 13: CASE, 24: '""'}),
    ]
    r = only(checker, encode(segs))
    assert r.placer_order_number == "S03P" and r.verdict == "not-appropriate"


def test_second_obr_under_one_orc_keeps_its_own_placer(checker: Checker) -> None:
    segs = [
        msh("S10"),
        pid("TST90111"),
        segment("ORC", {1: "NW", 2: "S10P"}),
        segment("OBR", {1: "1", 2: "S10P", 4: "73552^XR FEMUR 2 VIEWS LEFT^CPT4", 13: CASE}),
        segment("OBR", {1: "2", 2: "S10Q", 4: CT, 13: CASE}),
    ]
    found = results(checker, encode(segs))
    assert [(r.placer_order_number, r.verdict) for r in found] == [
        ("S10P", "appropriate"),
        ("S10Q", "not-appropriate"),
    ]


def test_department_in_obr24_gives_way_to_ipc5(checker: Checker) -> None:
    segs = [
        msh("S12", "OMI^O23", "2.5.1"),
        pid("TST90101"),
        segment("ORC", {1: "NW", 2: "S12P"}),
        segment("TQ1", {1: "1", 7: "20261101090000"}),
        segment(
            "OBR",
            {1: "1", 2: "S12P", 4: "RAD4471^THIGH LEFT W IV CONTRAST^L", 24: "RAD", 31: "^" + CASE},
        ),
        segment("IPC", {1: "ACC12", 2: "RP12", 3: "1.2.840.99999.12", 4: "SPS12", 5: "CT"}),
    ]
    r = only(checker, encode(segs))
    assert r.facts is not None and r.facts.procedure_class == "ct"
    assert codes(r) == ["CT_BEFORE_MRI"]


def test_table_0074_nmr_is_mri(checker: Checker) -> None:
    segs = [
        msh("S13"),
        pid("TST90102"),
        segment("ORC", {1: "NW", 2: "S13P"}),
        segment("OBR", {1: "1", 2: "S13P", 4: "RAD5500^THIGH LEFT WO/W^L", 13: CASE, 24: "NMR"}),
    ]
    r = only(checker, encode(segs))
    assert r.facts is not None and r.facts.procedure_class == "mri"
    assert r.verdict == "appropriate"


@pytest.mark.parametrize(
    ("birth", "verdict"),
    [
        ("2008-11-05", "no-criteria-apply"),  # ISO date: 17 on the order date
        ("2008-10-31", "not-appropriate"),
        ("200811020830-0500", "no-criteria-apply"),
        ("2012", "no-criteria-apply"),
        ("19700203000000.000+0100", "not-appropriate"),
    ],
)
def test_birth_date_forms(checker: Checker, birth: str, verdict: str) -> None:
    segs = order("S16", "TST90016", birth=birth)
    segs[2] = segment("ORC", {1: "NW", 2: "S16P", 9: "20261101090000"})
    assert only(checker, encode(segs)).verdict == verdict


@pytest.mark.parametrize(
    "text", ["MRI THIGH LEFT W&WO CONTRAST", "MRI THIGH LEFT W\\T\\WO CONTRAST"]
)
def test_ampersand_in_procedure_text_is_text(checker: Checker, text: str) -> None:
    segs = [
        msh("S21"),
        pid("TST90201"),
        segment("ORC", {1: "NW", 2: "S21P"}),
        segment("OBR", {1: "1", 2: "S21P", 4: f"^{text}", 13: CASE, 24: "MR"}),
    ]
    r = only(checker, encode(segs))
    assert r.facts is not None and r.facts.contrast == "without_and_with"
    assert r.verdict == "appropriate" and "MRI_NO_PRECONTRAST" not in [a.code for a in r.advice]


def test_order_date_from_obr27_start(checker: Checker) -> None:
    segs = [
        msh("S22", extra={7: "20261102090000"}),
        pid("TST90207", "20081102"),
        segment("ORC", {1: "NW", 2: "S22P"}),
        segment("OBR", {1: "1", 2: "S22P", 4: CT, 13: CASE, 27: "^^^20261101080000^^R"}),
    ]
    r = only(checker, encode(segs))
    assert r.verdict == "no-criteria-apply" and r.facts is not None and r.facts.age_years == 17


def test_orc_sent_after_its_obr(checker: Checker) -> None:
    segs = [
        msh("S23"),
        pid("TST90216"),
        segment("OBR", {1: "1", 2: "S23P", 4: CT, 13: CASE}),
        segment("ORC", {1: "NW", 2: "S23P"}),
    ]
    r = only(checker, encode(segs))
    assert r.verdict == "not-appropriate" and r.placer_order_number == "S23P"


@pytest.mark.parametrize(
    "procedure",
    [
        "36172-5^Study^2.16.840.1.113883.6.1",
        "36172-5^Study^http://loinc.org",
        "RPID888^Study^urn:oid:2.16.840.1.113883.6.256",
        "73701^Study^^^^^^^^^^^^2.16.840.1.113883.6.12",  # CWE-14: the coding system OID (2.7+)
        "LOC1^Study^L^73701^Study^^^^^^^^^^^^2.16.840.1.113883.6.12",  # CWE-17: the alternate's
        "IMG123^^EAP^^^^^^CT THIGH LEFT WITH CONTRAST",  # CWE-9: original text only
    ],
)
def test_coding_systems_sent_as_oid_or_uri(checker: Checker, procedure: str) -> None:
    r = only(checker, encode(order("S27", "TST90311", procedure=procedure, version="2.8")))
    assert r.facts is not None and r.facts.procedure_class == "ct"
    assert codes(r) == ["CT_BEFORE_MRI"]


@pytest.mark.parametrize("site", ["^^^THIGH^L", "^^^THIGH&Thigh&HL70163^L&Left&HL70495"])
def test_body_site_and_side_in_obr15(checker: Checker, site: str) -> None:
    segs = [
        msh("S29"),
        pid("TST90215"),
        segment("ORC", {1: "NW", 2: "S29P"}),
        segment(
            "OBR",
            {
                1: "1",
                2: "S29P",
                4: "RAD100^CT W CONTRAST^L",
                13: "6 cm deep mass",
                15: site,
                24: "CT",
            },
        ),
    ]
    r = only(checker, encode(segs))
    assert r.facts is not None and (r.facts.region, r.facts.laterality) == ("thigh", "left")
    assert codes(r) == ["CT_BEFORE_MRI"]


# -- results that enter the history --------------------------------------------------------------
def _result(control_id: str, mrn: str, obr: dict[int, str], obx_status: str = "F") -> bytes:
    return encode(
        [
            msh(control_id, "ORU^R01", "2.5.1"),
            pid(mrn),
            segment("OBR", {1: "1", 2: f"{control_id}P", 3: f"{control_id}F", 24: "MR", **obr}),
            segment("OBX", {1: "1", 2: "TX", 3: "IMP^Impression", 5: "6 cm mass.", 11: obx_status}),
        ]
    )


def _biopsy(control_id: str, mrn: str, side: str = "left") -> bytes:
    return encode(
        order(
            control_id, mrn, procedure=BIOPSY, text=f"US guided core biopsy {side} thigh mass 6 cm"
        )
    )


@pytest.mark.parametrize(("obx_status", "flagged"), [("F", False), ("C", False), ("P", True)])
def test_result_status_from_obx11_when_obr25_is_empty(
    checker: Checker, obx_status: str, flagged: bool
) -> None:
    checker.check_file_bytes(
        _result("S16A", "TST90116", {4: MRI, 31: "^left thigh mass"}, obx_status)
    )
    r = only(checker, _biopsy("S16B", "TST90116"))
    assert ("BIOPSY_BEFORE_MRI" in codes(r)) is flagged


def test_side_modifier_in_obr45_sets_the_side_of_a_result(checker: Checker) -> None:
    checker.check_file_bytes(
        _result("S07A", "TST90108", {4: MRI, 25: "F", 31: "^thigh mass", 45: "LT"})
    )
    assert codes(only(checker, _biopsy("S07B", "TST90108", "right"))) == ["BIOPSY_BEFORE_MRI"]
    assert codes(only(checker, _biopsy("S07C", "TST90108", "left"))) == []


def test_status_update_with_final_result_enters_the_history(checker: Checker) -> None:
    done = [
        msh("S24A"),
        pid("TST90203"),
        segment("ORC", {1: "SC", 2: "S24AP", 3: "S24AF"}),
        segment(
            "OBR",
            {1: "1", 2: "S24AP", 3: "S24AF", 4: MRI, 13: "left thigh mass", 24: "MR", 25: "F"},
        ),
    ]
    assert only(checker, encode(done)).verdict == "no-criteria-apply"
    r = only(checker, encode(order("S24B", "TST90203")))
    assert r.verdict == "appropriate" and codes(r) == []


def test_status_update_with_final_order_entry_answers_is_not_a_completed_exam(
    checker: Checker,
) -> None:
    """OBX-11 F on an ask-at-order-entry answer says nothing about the exam (ORC-5 IP)."""
    scheduled = [
        msh("S25A"),
        pid("TST90204"),
        segment("ORC", {1: "SC", 2: "S25AP", 5: "IP"}),
        segment("OBR", {1: "1", 2: "S25AP", 4: MRI, 13: "left thigh mass", 24: "MR"}),
        segment("OBX", {1: "1", 2: "CE", 3: "Q1^PACEMAKER?^EAP", 5: "N^No", 11: "F"}),
    ]
    assert checker.check_file_bytes(encode(scheduled))[0].recorded == 0
    assert codes(only(checker, _biopsy("S25B", "TST90204"))) == ["BIOPSY_BEFORE_MRI"]


def test_result_message_with_two_patients_records_each_under_its_own(checker: Checker) -> None:
    data = encode(
        [
            msh("S26A", "ORU^R01", "2.5.1"),
            pid("TST90226"),
            segment("OBR", {1: "1", 2: "S26X", 4: "73552^XR FEMUR LEFT^CPT4", 25: "F"}),
            segment("OBX", {1: "1", 2: "TX", 3: "IMP", 5: "Soft tissue mass", 11: "F"}),
            pid("TST90227"),
            "PV1|1|O",
            segment("ORC", {1: "RE", 2: "S26M"}),
            segment("OBR", {1: "1", 2: "S26M", 4: MRI, 24: "MR", 25: "F", 31: "^left thigh mass"}),
            segment("OBX", {1: "1", 2: "TX", 3: "IMP", 5: "6 cm mass", 11: "F"}),
        ]
    )
    outcome = checker.check_file_bytes(data)[0]
    assert outcome.recorded == 2
    assert outcome.orders == [] and outcome.parsed is not None
    second = outcome.parsed.orders[1]
    assert second.placer_number == "S26M" and second.patient is not None
    assert codes(only(checker, _biopsy("S26B", "TST90226"))) == ["BIOPSY_BEFORE_MRI"]
    assert codes(only(checker, _biopsy("S26C", "TST90227"))) == []


@pytest.mark.parametrize(
    ("result_authority", "order_authority", "flagged"),
    [
        ("&1.2.840.99999.1&ISO", "TSTH&1.2.840.99999.1&ISO", False),  # OID only, then both
        ("TSTH&1.2.840.99999.1&ISO", "TSTH", False),
        ("TSTH", "OTHERHOSP&1.2.840.99999.7&ISO", True),  # another authority: another patient
    ],
)
def test_assigning_authority_by_namespace_or_oid(
    checker: Checker, result_authority: str, order_authority: str, flagged: bool
) -> None:
    result = _result("S28A", "TST90400", {4: MRI, 25: "F", 31: "^left thigh mass"})
    checker.check_file_bytes(
        result.replace(b"TST90400^^^TSTH^MR", f"TST90400^^^{result_authority}^MR".encode())
    )
    biopsy = _biopsy("S28B", "TST90400").replace(
        b"TST90400^^^TSTH^MR", f"TST90400^^^{order_authority}^MR".encode()
    )
    assert ("BIOPSY_BEFORE_MRI" in codes(only(checker, biopsy))) is flagged


# -- the advisory names the order it was read as ------------------------------------------------
@pytest.mark.parametrize(
    ("orc2", "obr2s", "placers"),
    [
        (" S30P ^EPC", ("S30P",), ["S30P^EPC"]),  # padded: the number as read
        ("S30P", ("S30P", "S30Q"), ["S30P", "S30Q"]),  # a second OBR under one ORC: its own OBR-2
        ('""', ("S30P",), ["S30P"]),  # explicit null in ORC-2: OBR-2
    ],
)
def test_advisory_orc2_is_the_placer_number_read(
    checker: Checker, orc2: str, obr2s: tuple[str, ...], placers: list[str]
) -> None:
    segs = [msh("S30"), pid("TST90230"), segment("ORC", {1: "NW", 2: orc2})]
    segs += [
        segment("OBR", {1: str(n), 2: obr2, 4: CT, 13: CASE})
        for n, obr2 in enumerate(obr2s, start=1)
    ]
    outcome = checker.check_message(encode(segs))
    assert outcome.raw is not None
    got = []
    for order, result in zip(outcome.orders, outcome.results, strict=True):
        advisory = build_advisory(
            outcome.raw, order, result, control_id="A1", application="ORDERCHECK", facility="RADCDS"
        )
        orc = next(s for s in advisory.split(b"\r") if s.startswith(b"ORC|"))
        got.append(orc.split(b"|")[2].decode())
    assert got == placers


# -- the MLLP listener's screen --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "version", "processing", "code"),
    [
        ("ORM^O01", "", "P", b"AA"),  # MSH-12 empty: read, as `ordercheck check` reads it
        ("ORM^O01", "2.3", "", b"AA"),  # MSH-11 empty likewise
        ("ORM_O01", "2.3", "P", b"AA"),
        ("ORM", "2.3", "P", b"AA"),
        ("ORM^O01", "1.0", "P", b"AR"),
        ("ORM^O01", "2.3", "X", b"AR"),
    ],
)
def test_listener_accepts_what_check_reads(
    kind: str, version: str, processing: str, code: bytes
) -> None:
    queued: list[bytes] = []
    ingestor = Ingestor(
        Settings(), MemoryDedup(), lambda data, at: queued.append(data), lambda rejected: None
    )
    segs = order("S33", "TST90033", kind=kind, version=version)
    segs[0] = msh("S33", kind, version, extra={11: processing})
    frame = codecs.BOM_UTF8 + encode(segs)
    ack = ingestor.handle(frame)
    assert ack is not None and f"MSA|{code.decode()}|S33".encode() in ack
    assert len(queued) == (code == b"AA")


# -- the seed corpus in other clothes ------------------------------------------------------------
def _segments_of(data: bytes) -> list[bytes]:
    return data.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")


def _lower_ids(data: bytes) -> bytes:
    out = []
    for seg in _segments_of(data):
        head = seg[:3]
        out.append(
            head.lower() + seg[3:]
            if head.isalpha() and head.isupper() and seg[3:4] == b"|"
            else seg
        )
    return b"\r".join(out)


_CLOTHES: dict[str, Callable[[bytes], bytes]] = {
    "crlf": lambda d: b"\r\n".join(_segments_of(d)),
    "lf-and-blank-lines": lambda d: b"\n\n".join(_segments_of(d)) + b"\n\n\n",
    "bom-and-ctrl-z": lambda d: codecs.BOM_UTF8 + d + b"\x1a",
    "mllp-frame": lambda d: b"\x0b" + d + b"\x1c\r",
    "indented": lambda d: b"\r".join(b"  " + s if s else s for s in _segments_of(d)),
    "lower-case-ids": _lower_ids,
    "utf-16": lambda d: d.decode("ascii").encode("utf-16") if d.isascii() else d,
}


def _redelimit(data: bytes, target: Delimiters) -> bytes:
    """Every message of *data* rewritten with other delimiters (escapes re-encoded)."""
    out = []
    for _, message in split_messages(data):
        try:
            raw = parse_message(message)
        except HL7ParseError:
            out.append(message)
            continue
        src, enc = (
            raw.delimiters,
            "".join((target.component, target.repetition, target.escape, target.subcomponent)),
        )
        segs = []
        for seg in raw.segments:
            first = 3 if seg.id == "MSH" else 1
            fields = [convert_field(f, src, target) for f in seg.fields[first:]]
            head = ["MSH", enc] if seg.id == "MSH" else [seg.id]
            segs.append(target.field.join([*head, *fields]))
        out.append(("\r".join(segs) + "\r").encode("utf-8"))
    return b"".join(out)


def _padded(data: bytes) -> bytes:
    """Every field of every message with a space before and after it (MSH-1 and MSH-2 kept)."""
    if b"MSH|" not in data:
        return data  # another field separator (VistA, seed 62): left as it is
    out = []
    for seg in _segments_of(data):
        if not seg[:3].isalpha() or b"|" not in seg:
            out.append(seg)
            continue
        parts = seg.split(b"|")
        keep = 2 if seg.startswith(b"MSH|") else 1
        out.append(b"|".join(parts[:keep] + [b" " + p + b" " if p else p for p in parts[keep:]]))
    return b"\r".join(out)


def _msh_fields(data: bytes, change: dict[int, Callable[[bytes], bytes]]) -> bytes:
    """Every MSH (field separator |) with MSH-n rewritten by change[n]."""
    out = []
    for seg in _segments_of(data):
        if seg.startswith(b"MSH|"):
            parts = seg.split(b"|")  # parts[n - 1] is MSH-n for n >= 2
            for n, fn in change.items():
                if len(parts) > n - 1:
                    parts[n - 1] = fn(parts[n - 1])
            seg = b"|".join(parts)
        out.append(seg)
    return b"\r".join(out)


def _structure_only(msh9: bytes) -> bytes:
    parts = msh9.split(b"^")
    return b"_".join(parts[:2]) if len(parts) > 1 and parts[0] != b"ACK" else msh9


_CLOTHES["padded-fields"] = _padded
_CLOTHES["msh9-structure-only-no-version"] = lambda d: _msh_fields(
    d, {9: _structure_only, 12: lambda v: b""}
)
_CLOTHES["vista-delimiters"] = lambda d: _redelimit(d, Delimiters("^", "~", "|", "\\", "&"))
_CLOTHES["odd-delimiters"] = lambda d: _redelimit(d, Delimiters("#", "$", "%", "!", "@"))


def _verdicts(checker: Checker, files: list[bytes]) -> list[tuple[str, str, str, list[str]]]:
    return [
        (r.message_control_id, r.placer_order_number, r.verdict, codes(r))
        for data in files
        for r in results(checker, data)
    ]


@pytest.mark.parametrize("clothes", sorted(_CLOTHES))
def test_seeds_read_the_same_in_other_clothes(knowledge: Knowledge, clothes: str) -> None:
    files = [p.read_bytes() for p in sorted(SEEDS.glob("*.hl7"))]
    dress = _CLOTHES[clothes]
    plain = _verdicts(Checker(knowledge, InMemoryHistory()), files)
    dressed = [d if b"\x00" in d else dress(d) for d in files]  # a UTF-16 seed keeps its own
    assert _verdicts(Checker(knowledge, InMemoryHistory()), dressed) == plain


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64])
def test_utf16_stream_in_small_chunks(size: int) -> None:
    text = "\r".join(order("S32A", "TST90232") + order("S32B", "TST90233")) + "\r"
    for data in (text.encode("utf-16"), text.encode("utf-16-le"), text.encode("utf-8")):
        whole = list(split_messages(data))
        assert [m[:8] for _, m in whole] == [b"MSH|^~\\&"] * 2
        assert list(iter_messages(io.BytesIO(data), size)) == whole
    assert list(iter_messages(io.BytesIO(b"MSH|"), size)) == [(1, b"MSH|")]  # shorter than 6


def test_utf16_in_an_mllp_frame(checker: Checker) -> None:
    text = "\r".join(order("S31", "TST90231")) + "\r"
    for data in (
        b"\x0b" + text.encode("utf-16") + b"\x1c\r",
        b"\x0b" + text.encode("utf-16-le") + b"\x1c\r",
    ):
        r = only(checker, data)
        assert (r.placer_order_number, r.verdict) == ("S31P", "not-appropriate")
        assert checker.check_message(data).results[0].verdict == "not-appropriate"
