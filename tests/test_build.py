"""The outbound advisory (worker/hl7/build.py), built from real check results and read back by
hl7apy, python-hl7 and our own reader."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message as hl7apy_parse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SEEDS
from tests.hl7build import order_message
from worker.check import Checker, MessageOutcome
from worker.guideline import Knowledge
from worker.hl7.build import (
    DEFAULT_DISCLAIMER,
    Format,
    advisory_control_id,
    build_advisory,
    convert_field,
)
from worker.hl7.escape import Delimiters
from worker.hl7.parse import RawMessage, RawSegment, parse_message
from worker.hl7.read import read_message
from worker.models import CheckResult

NOW = datetime(2026, 11, 20, 9, 30, 5, tzinfo=UTC)
# order_message keyword arguments
CT_FIRST: dict[str, Any] = {"control_id": "C1", "reason": "^Left thigh mass 6 cm deep"}
MRI_OK: dict[str, Any] = {"procedure": "73720^MRI LE WO W^CPT4", "reason": "^thigh mass, XR done"}
CHEST: dict[str, Any] = {"procedure": "71260^CT CHEST W^CPT4", "reason": "^cough"}
ODD = "pipe | caret ^ amp & tilde ~ backslash \\ end"


def _check(checker: Checker, data: bytes) -> MessageOutcome:
    outcome = checker.check_message(data)
    assert outcome.raw is not None and outcome.orders, outcome.results[0].error
    return outcome


def _build(
    outcome: MessageOutcome,
    index: int = 0,
    result: CheckResult | None = None,
    fmt: Format = "oru",
    disclaimer: str = "",
) -> bytes:
    assert outcome.raw is not None
    return build_advisory(
        outcome.raw,
        outcome.orders[index],
        result or outcome.results[index],
        control_id="OC123",
        application="ORDERCHECK",
        facility="RADCDS",
        fmt=fmt,
        now=NOW,
        guideline_id="thigh-soft-tissue-mass",
        disclaimer=disclaimer,
    )


def _ours(message: bytes) -> RawMessage:
    return parse_message(message)


def _segs(msg: RawMessage, seg_id: str) -> list[RawSegment]:
    return msg.all(seg_id)


@pytest.mark.parametrize(
    ("order", "verdict"),
    [(CT_FIRST, "not-appropriate"), (MRI_OK, "appropriate"), (CHEST, "no-criteria-apply")],
)
def test_oru_read_back_by_hl7apy_and_python_hl7(
    checker: Checker, order: dict[str, Any], verdict: str
) -> None:
    outcome = _check(checker, order_message(**order))
    assert outcome.results[0].verdict == verdict
    built = _build(outcome)
    text = built.decode("utf-8")
    assert text.endswith("\r") and "\n" not in text

    msg = hl7apy_parse(text, validation_level=VALIDATION_LEVEL.TOLERANT)
    group = msg.oru_r01_patient_result.oru_r01_order_observation
    assert group.orc.orc_2.ei_1.value == outcome.orders[0].placer_number == "PL0001"
    assert group.orc.orc_1.value == "RE"
    first = group.oru_r01_observation[0].obx
    assert first.obx_3.to_er7() == "76515-6^Imaging appropriateness rating^LN"
    assert first.obx_5.to_er7().split("^")[0] == verdict
    assert msg.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert msg.msh.msh_12.to_er7() == "2.5.1"

    parsed = hl7.parse(text)
    msh = parsed.segment("MSH")
    assert (str(msh[3]), str(msh[4]), str(msh[5]), str(msh[6])) == (
        "ORDERCHECK",
        "RADCDS",
        "EPIC",
        "HOSP",
    )  # MSH-5/6: the order's MSH-3/4
    assert (str(msh[7]), str(msh[10]), str(msh[11]), str(msh[18])) == (
        "20261120093005",
        "OC123",
        "P",
        "UNICODE UTF-8",
    )
    assert str(msh[15]) == "" and str(msh[16]) == ""  # original acknowledgement mode
    assert str(parsed.segment("PID")[3]) == "PAT001^^^HOSP^MR"
    obx = parsed.segments("OBX")
    assert str(obx[0][3][0][0]) == "76515-6"
    assert str(obx[0][5][0][0]) == verdict
    assert [str(o[1]) for o in obx] == [str(n) for n in range(1, len(obx) + 1)]
    obr = parsed.segment("OBR")
    assert str(obr[4]) == order.get("procedure", "73701^CT LOWER EXTREMITY W CONTRAST^CPT4")
    assert str(obr[25]) == "F"


def test_contents_of_a_ct_first_advisory(checker: Checker, knowledge: Knowledge) -> None:
    outcome = _check(checker, order_message(**CT_FIRST))
    result = outcome.results[0]
    msg = _ours(_build(outcome, disclaimer=knowledge.guideline.guideline.disclaimer))
    read = read_message(msg)
    assert read.header.message_type == "ORU" and read.header.charset == "UNICODE UTF-8"
    assert [s.id for s in msg.segments[:5]] == ["MSH", "PID", "ORC", "OBR", "OBX"]
    obr = msg.first("OBR")
    assert obr is not None
    assert msg.value(obr.get(4)) == "73701^CT LOWER EXTREMITY W CONTRAST^CPT4"
    assert obr.get(7) == "20261120093005"

    obx = _segs(msg, "OBX")
    by_code: dict[str, list[str]] = {}
    for seg in obx:
        by_code.setdefault(msg.component(seg.get(3), 1), []).append(msg.value(seg.get(5)))
    assert by_code["76515-6"] == ["not-appropriate^Not appropriate^99OCK"]
    assert by_code["PREFPROC"][0].startswith("73720^") and by_code["PREFPROC"][0].endswith("^CPT4")
    assert by_code["FLAG"] == [f"CT_BEFORE_MRI: {result.flags[0].reason}"]
    assert [v.split(":")[0] for v in by_code["ADVICE"]] == [
        "RADIOGRAPH_FIRST",
        "REFER_SARCOMA_CENTRE",
    ]
    assert by_code["PROTOCOL"] == result.protocol
    assert by_code["RULES"] == [
        "CT_BEFORE_MRI, RADIOGRAPH_FIRST, REFER_SARCOMA_CENTRE; "
        "guideline thigh-soft-tissue-mass 2026.11.0"
    ]

    # The NTEs right after OBX 1: the reason, then the disclaimer.
    i = msg.segments.index(obx[0])
    notes = [msg.value(s.get(3)) for s in msg.segments[i + 1 : i + 3]]
    assert notes == [result.reason, DEFAULT_DISCLAIMER]
    assert knowledge.guideline.guideline.disclaimer == DEFAULT_DISCLAIMER
    # Citations follow their flag as NTEs.
    j = msg.segments.index(next(s for s in obx if msg.component(s.get(3), 1) == "FLAG"))
    assert msg.value(msg.segments[j + 1].get(3)) == f"Source: {result.flags[0].citations[0]}"


def test_no_preferred_procedure_or_protocol_out_of_scope(checker: Checker) -> None:
    msg = _ours(_build(_check(checker, order_message(**CHEST))))
    codes = [msg.component(s.get(3), 1) for s in _segs(msg, "OBX")]
    assert codes == ["76515-6", "RULES"]
    assert (
        msg.value(_segs(msg, "OBX")[1].get(5)) == "none; guideline thigh-soft-tissue-mass 2026.11.0"
    )


def test_text_with_every_delimiter_round_trips(checker: Checker) -> None:
    outcome = _check(checker, order_message(**CT_FIRST))
    result = outcome.results[0].model_copy(deep=True)
    result.reason = ODD + "\nsecond line"
    result.flags[0].reason = ODD
    built = _build(outcome, result=result)
    text = built.decode()
    assert "\\F\\" in text and "\\S\\" in text and "\\T\\" in text and "\\R\\" in text
    assert "\\E\\" in text and "\\.br\\" in text

    msg = _ours(built)
    nte = msg.first("NTE")
    assert nte is not None and msg.delimiters.decode(nte.get(3)) == ODD + "\nsecond line"
    flag = next(s for s in msg.all("OBX") if msg.component(s.get(3), 1) == "FLAG")
    assert msg.delimiters.decode(flag.get(5)) == f"CT_BEFORE_MRI: {ODD}"
    # The other readers see the same segments and fields: nothing leaked a delimiter.
    assert len(hl7.parse(text)) == len(msg.segments)
    apy = hl7apy_parse(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    assert len(apy.children) == len(msg.segments)
    assert next(len(s.fields) for s in msg.segments if s.id == "NTE") == 4


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("|^~\\&\n"),
        min_size=1,
        max_size=80,
    )
)
def test_any_reason_round_trips(checker: Checker, reason: str) -> None:
    outcome = _check(checker, order_message(**CT_FIRST))
    result = outcome.results[0].model_copy()
    result.reason = reason
    msg = _ours(_build(outcome, result=result))
    nte = msg.first("NTE")
    assert nte is not None and msg.delimiters.decode(nte.get(3)) == reason


def test_sender_delimiters_are_converted_to_ours(checker: Checker) -> None:
    # Field separator "*", component "$": "|" and "^" are plain text in this sender's fields.
    data = (
        b"MSH*$~\\&*STAR|EHR$X*STAR^HOSP*OC*RAD*20261120083000**ORM$O01*S1*P*2.3\r"
        b"PID*1**PAT9$$$HOSP$MR~ALT9$$$OTHER$MR**O|BRIEN$ANN^MARIE**19700101*F\r"
        b"ORC*NW*PL|9$EHR\r"
        b"OBR*1*PL|9$EHR**73701$CT LE W|ENH^X$CPT4*****************************CT****"
        b"***$Left thigh mass 6 cm deep\r"
    )
    outcome = _check(checker, data)
    assert outcome.orders[0].placer_number == "PL|9"
    msg = _ours(_build(outcome))
    msh = msg.msh
    assert (msh.get(5), msh.get(6)) == ("STAR\\F\\EHR", "STAR\\S\\HOSP")
    pid = msg.first("PID")
    assert pid is not None
    assert pid.get(3) == "PAT9^^^HOSP^MR~ALT9^^^OTHER^MR"
    assert pid.get(5) == "O\\F\\BRIEN^ANN\\S\\MARIE"
    orc = msg.first("ORC")
    assert (
        orc is not None and orc.get(2) == "PL\\F\\9^EHR" and msg.component(orc.get(2), 1) == "PL|9"
    )
    obr = msg.first("OBR")
    assert obr is not None and obr.get(4) == "73701^CT LE W\\F\\ENH\\S\\X^CPT4"
    assert read_message(msg).orders[0].placer_number == "PL|9"
    parsed = hl7.parse(msg.text)
    assert str(parsed.segment("PID")[3][1][0]) == "ALT9"  # the repetition survived


def test_convert_field() -> None:
    star = Delimiters(field="*", component="$", repetition="~", escape="\\", subcomponent="&")
    assert convert_field("A|B$C^D~E&F", star) == "A\\F\\B^C\\S\\D~E&F"
    assert convert_field("X\\F\\Y", star) == "X*Y"  # their escaped field separator is "*"
    assert convert_field("a\\S\\b", star) == "a$b"  # their escaped component: a literal "$"
    assert convert_field("a\\.br\\b", star) == "a\\.br\\b"
    ours = Delimiters()
    assert convert_field("12345^^^HOSP&1.2.3&ISO^MR", ours) == "12345^^^HOSP&1.2.3&ISO^MR"
    assert convert_field("", star) == ""
    few = Delimiters(component="^", repetition="~", escape="", subcomponent="")
    assert convert_field("R&D^x\\y", few) == "R\\T\\D^x\\E\\y"  # "&" and "\" were plain text


def test_second_order_of_a_message_gets_its_own_numbers(checker: Checker) -> None:
    outcome = _check(checker, (SEEDS / "57-multi-order-ct-and-xr.hl7").read_bytes())
    assert len(outcome.orders) == 2
    for i, placer in enumerate(("MO57A", "MO57B")):
        msg = _ours(_build(outcome, i))
        orc, obr = msg.first("ORC"), msg.first("OBR")
        assert orc is not None and obr is not None
        assert msg.component(orc.get(2), 1) == placer == outcome.orders[i].placer_number
        assert msg.component(obr.get(2), 1) == placer
        assert msg.component(obr.get(24), 1) == ("CT", "CR")[i]
        assert msg.component(_segs(msg, "OBX")[0].get(5), 1) == outcome.results[i].verdict


def test_latin1_order_gives_utf8_advisory(checker: Checker) -> None:
    outcome = _check(checker, (SEEDS / "61-latin1-8859-1.hl7").read_bytes())
    built = _build(outcome)
    assert "MÜLLER-TEST^PATIENT" in built.decode("utf-8")


@pytest.mark.parametrize(
    ("msg_type", "version", "echoed"),
    [("ORM^O01", "2.3", "ORM^O01"), ("OMI^O23^OMI_O23", "2.5.1", "OMI^O23^OMI_O23")],
)
def test_order_echo_keeps_the_order_type(
    checker: Checker, msg_type: str, version: str, echoed: str
) -> None:
    outcome = _check(checker, order_message(msg_type=msg_type, version=version, **CT_FIRST))
    msg = _ours(_build(outcome, fmt="order-echo"))
    assert msg.msh.get(9) == echoed and msg.msh.get(12) == version
    orc = msg.first("ORC")
    assert orc is not None and orc.get(1) == "NW" and orc.get(2) == "PL0001"
    obx = msg.all("OBX")
    assert msg.component(obx[0].get(3), 1) == "76515-6"
    assert msg.component(obx[0].get(5), 1) == "not-appropriate"
    apy = hl7apy_parse(msg.text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    assert apy.msh.msh_9.to_er7() == echoed


def test_order_echo_of_omi_keeps_tq1_and_ipc_in_place(checker: Checker) -> None:
    outcome = _check(checker, (SEEDS / "06-omi-v251-ct-local-code-ipc-mllp.hl7").read_bytes())
    msg = _ours(_build(outcome, fmt="order-echo"))
    ids = [s.id for s in msg.segments]
    assert ids[:6] == ["MSH", "PID", "PV1", "ORC", "TQ1", "OBR"]
    assert ids[6] == "OBX" and ids[-1] == "IPC"
    apy = hl7apy_parse(msg.text, validation_level=VALIDATION_LEVEL.TOLERANT)
    assert apy.msh.msh_9.to_er7() == "OMI^O23^OMI_O23"


def test_rejected_result_is_never_built(checker: Checker) -> None:
    outcome = _check(checker, order_message(**CT_FIRST))
    rejected = outcome.results[0].model_copy(update={"verdict": "rejected"})
    with pytest.raises(ValueError, match="rejected"):
        _build(outcome, result=rejected)


def test_order_must_belong_to_the_message(checker: Checker) -> None:
    outcome = _check(checker, order_message(**CT_FIRST))
    stray = outcome.orders[0].model_copy(update={"segment_index": 1})  # the PID
    assert outcome.raw is not None
    with pytest.raises(ValueError, match="segment_index"):
        build_advisory(
            outcome.raw, stray, outcome.results[0], control_id="X", application="A", facility="F"
        )


def test_control_id_is_stable_and_short() -> None:
    first = advisory_control_id("0123456789abcdef0123")
    assert first == advisory_control_id("0123456789abcdef0123") == "OC0123456789abcdef01"
    assert len(first) <= 20
    assert advisory_control_id("a-b|c") == "OCabc"
    with pytest.raises(ValueError):
        advisory_control_id("--")
