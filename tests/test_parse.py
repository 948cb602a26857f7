"""The fast HL7 reader: framing, line ends, character sets, delimiters, escapes, errors."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.errors import HL7ParseError
from worker.hl7.escape import Delimiters
from worker.hl7.parse import clean_start, parse_message, peek_msh, split_messages
from worker.hl7.read import parse_ts, read_message

BASE = (
    b"MSH|^~\\&|RIS|HOSP|OC|OC|20261120083000||ORM^O01|C1|P|2.3\r"
    b"PID|1||12345^^^HOSP^MR||TEST^PATIENT||19700101|F\r"
    b"ORC|NW|P1\r"
    b"OBR|1|P1||73701^CT LE W^CPT4|||||||||Left thigh mass\r"
)


@pytest.mark.parametrize("sep", [b"\r", b"\n", b"\r\n"])
def test_segment_ends(sep: bytes) -> None:
    msg = read_message(parse_message(BASE.replace(b"\r", sep)))
    assert msg.header.control_id == "C1"
    assert msg.orders[0].procedures[0].code == "73701"
    assert msg.orders[0].texts[0].text == "Left thigh mass"


def test_mllp_framing_and_trailing_blank_lines() -> None:
    framed = b"\x0b" + BASE.replace(b"\r", b"\r\n") + b"\r\n\x1c\r"
    messages = list(split_messages(framed))
    assert len(messages) == 1
    assert read_message(parse_message(messages[0][1])).header.message_type == "ORM"


def test_two_messages_in_one_file_with_line_numbers() -> None:
    data = BASE.replace(b"\r", b"\n") + BASE.replace(b"C1", b"C2").replace(b"\r", b"\n")
    found = list(split_messages(data))
    assert [line for line, _ in found] == [1, 5]
    assert [read_message(parse_message(m)).header.control_id for _, m in found] == ["C1", "C2"]


def test_fifth_encoding_character_and_other_delimiters() -> None:
    msg = parse_message(BASE.replace(b"^~\\&", b"^~\\&#"))
    assert msg.delimiters.truncation == "#"
    odd = BASE.replace(b"|", b"*").replace(b"^", b"$")
    parsed = read_message(parse_message(odd))
    assert parsed.orders[0].procedures[0].text == "CT LE W"


@pytest.mark.parametrize("msh2", [b"^~\\\\&", b"^\\~\\&", b"^~\\\\&#"])
def test_doubled_encoding_characters(msh2: bytes) -> None:
    data = BASE.replace(b"^~\\&", msh2).replace(b"Left thigh mass", b"mass 5\\T\\6 cm~x")
    msg = parse_message(data)
    assert (msg.delimiters.repetition, msg.delimiters.escape, msg.delimiters.subcomponent) == (
        "~",
        "\\",
        "&",
    )
    assert read_message(msg).orders[0].texts[0].text == "mass 5&6 cm x"


def test_fewer_declared_delimiters() -> None:
    msg = read_message(parse_message(BASE.replace(b"^~\\&", b"^~")))
    assert msg.orders[0].procedures[0].system == "CPT4"


def test_latin1_declared_and_sent() -> None:
    text = "Läsion Oberschenkel".encode("latin-1")
    data = BASE.replace(b"2.3\r", b"2.3||||||8859/1\r").replace(b"Left thigh mass", text)
    msg = read_message(parse_message(data))
    assert msg.orders[0].texts[0].text == "Läsion Oberschenkel"


def test_declared_latin1_but_utf8_bytes() -> None:
    data = BASE.replace(b"2.3\r", b"2.3||||||8859/1\r").replace(
        b"Left thigh mass", "mass 12 – 35".encode()
    )
    assert read_message(parse_message(data)).orders[0].texts[0].text == "mass 12 – 35"


def test_escape_sequences() -> None:
    d = Delimiters()
    received = "A\\T\\B \\S\\ \\F\\ \\R\\ \\E\\ x\\.br\\y \\X41\\ \\H\\bold\\N\\"
    assert d.decode(received) == "A&B ^ | ~ \\ x\ny A bold"
    assert d.decode("unterminated \\T") == "unterminated \\T"
    text = "a|b^c&d~e\\f\ng"
    assert d.decode(d.encode(text)) == text


@given(st.text(max_size=200))
def test_escape_round_trip(text: str) -> None:
    d = Delimiters()
    assert d.decode(d.encode(text)) == text.replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"HELLO WORLD", None),
        (b"MSH|^~", "MSH-2"),
        (b"MSH|^~\\&|A|B|C|D|2026||", "MSH-9"),
        (b"MSH|^~\\&|A|B|C|D|2026||ORM^O01||P|2.3", "MSH-10"),
        (b"MSHA^~\\&|A", "MSH-1"),
    ],
)
def test_unreadable_messages_name_the_place(data: bytes, where: str | None) -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_message(data)
    if where:
        assert where in str(info.value)


@given(st.binary(max_size=400))
@settings(max_examples=300)
def test_any_bytes_parse_or_raise_our_error(data: bytes) -> None:
    for _, chunk in split_messages(data):
        with contextlib.suppress(HL7ParseError):
            read_message(parse_message(chunk))


def test_timestamps() -> None:
    assert parse_ts("20261120083000").hour == 8  # type: ignore[union-attr]
    assert parse_ts("2026112008+0100").utcoffset().total_seconds() == 3600  # type: ignore[union-attr]
    assert parse_ts("2026") is not None
    assert parse_ts("garbage") is None
    assert parse_ts("20261399") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2008-11-05", "2008-11-05 00:00:00"),
        ("2008-1-5", "2008-01-05 00:00:00"),
        ("2008-11", "2008-11-01 00:00:00"),
        ("2008-11-05T10:30:00+01:00", "2008-11-05 10:30:00+01:00"),
        ("2008-11-05 10:30", "2008-11-05 10:30:00"),
        ("2026-11-01T09:00:00.250Z", "2026-11-01 09:00:00"),
        ("200811051030-0500", "2008-11-05 10:30:00-05:00"),
    ],
)
def test_iso_timestamps(value: str, expected: str) -> None:
    assert str(parse_ts(value)) == expected


@pytest.mark.parametrize(
    ("msh9", "expected"),
    [
        ("ORM^O01", ("ORM", "O01", "")),
        ("ORM_O01", ("ORM", "O01", "ORM_O01")),
        ("orm^o01^orm_o01", ("ORM", "O01", "ORM_O01")),
        ("ORM", ("ORM", "", "")),
        ("OMI_O23^^", ("OMI", "O23", "OMI_O23")),
    ],
)
def test_message_type_forms(msh9: str, expected: tuple[str, str, str]) -> None:
    header = read_message(parse_message(BASE.replace(b"ORM^O01", msh9.encode()))).header
    assert (header.message_type, header.trigger_event, header.message_structure) == expected
    assert peek_msh(BASE.replace(b"ORM^O01", msh9.encode())).trigger_event == expected[1]


@pytest.mark.parametrize("prefix", [b"\xef\xbb\xbf", b"  \x00", b"\x0b", b"export:"])
def test_clean_start(prefix: bytes) -> None:
    assert clean_start(prefix + BASE).startswith(b"MSH|")
    assert peek_msh(prefix + BASE).control_id == "C1"


def test_groups_share_context_and_split_orders() -> None:
    data = (
        b"MSH|^~\\&|RIS|HOSP|OC|OC|20261120||ORM^O01|C9|P|2.3\r"
        b"PID|1||1^^^H\rNTE|1||patient note\r"
        b"ORC|NW|A\rOBR|1|A||73701^CT^CPT4\rNTE|1||order A note\r"
        b"ORC|NW|B\rOBR|1|B||73552^XR FEMUR^CPT4\rDG1|1||R22.42^Mass left leg^I10\r"
    )
    msg = read_message(parse_message(data))
    assert [o.placer_number for o in msg.orders] == ["A", "B"]
    assert msg.orders[0].texts[0].text == "order A note"
    assert msg.orders[1].texts[0].codes[0].code == "R22.42"
    assert msg.context[0].text == "patient note"
