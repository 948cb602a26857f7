"""The incremental splitter: any chunking gives what split_messages gives on the whole bytes."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import SEEDS
from worker.hl7.parse import MessageSplitter, iter_messages, split_messages

MSG = (
    b"MSH|^~\\&|RIS|HOSP|OC|OC|20261120083000||ORM^O01|C1|P|2.3\r"
    b"PID|1||12345^^^HOSP^MR\rORC|NW|P1\rOBR|1|P1||73701^CT LE W^CPT4\r"
)


BOM = b"\xef\xbb\xbf"


def _starts_message(data: bytes, i: int) -> bool:
    """An MSH (any case) followed by a delimiter at the line start *i*, after at most 16 bytes
    of spaces, tabs, NULs or ^Z and a byte order mark."""
    j = i
    while j < len(data) and j - i < 16 and data[j : j + 1] in (b" ", b"\t", b"\x00", b"\x1a"):
        j += 1
    j += 3 if data.startswith(BOM, j) else 0
    after = data[j + 3 : j + 4]
    return (
        data[j : j + 3].upper() == b"MSH"
        and after != b""
        and not after.isalnum()
        and after not in (b"\r", b"\n")
    )


def _reference(data: bytes) -> list[tuple[int, bytes]]:
    """The splitting rule written out the slow way: cut at every line start that begins an MSH;
    text before the first one is a message of its own unless blank or batch segments only."""
    data = data.translate(bytes.maketrans(b"\x0b\x1c", b"\r\r"))
    starts = [
        i
        for i in range(len(data))
        if (i == 0 or data[i - 1 : i] in (b"\r", b"\n")) and _starts_message(data, i)
    ]
    out: list[tuple[int, bytes]] = []

    def line(offset: int) -> int:
        p = data[:offset]
        return p.count(b"\n") + p.count(b"\r") - p.count(b"\r\n") + 1

    head = data[: starts[0]] if starts else data
    lines = [
        line.strip(b" \t\x00\x1a")
        for line in head.replace(BOM, b"").replace(b"\n", b"\r").split(b"\r")
    ]
    if any(line and line[:3].upper() not in (b"FHS", b"BHS", b"FTS", b"BTS") for line in lines):
        out.append((1, head))
    for i, start in enumerate(starts):
        out.append((line(start), data[start : starts[i + 1] if i + 1 < len(starts) else None]))
    return out


def _chunked(data: bytes, size: int, max_bytes: int | None = None) -> list[tuple[int, bytes]]:
    return list(iter_messages(io.BytesIO(data), size, max_bytes))


pieces = st.sampled_from(
    [
        MSG,
        MSG.replace(b"\r", b"\n"),
        MSG.replace(b"\r", b"\r\n"),
        b"\x0b" + MSG + b"\x1c\r",
        b"\r\n",
        b"junk\n",
        b"MS",
        b"H|x\r",
        b"NTE|1||MSH inside text\r",
        b"\n\n",
        BOM + MSG,
        b"  \x00" + MSG,
        MSG.replace(b"MSH", b"msh"),
        b"FHS|^~\\&\r",
        b"BHS|^~\\&\n",
        b" " * 10,
        b"MSHX\r",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(pieces, max_size=12), st.integers(min_value=1, max_value=80))
def test_any_chunking_matches_the_reference(parts: list[bytes], size: int) -> None:
    data = b"".join(parts)
    want = _reference(data)
    assert list(split_messages(data)) == want
    assert _chunked(data, size) == want


def test_seeds_in_one_stream_any_chunk_size() -> None:
    data = b"leading junk\r\n" + b"".join(p.read_bytes() for p in sorted(SEEDS.glob("*.hl7")))
    want = list(split_messages(data))
    assert want == _reference(data)
    for size in (1, 2, 3, 5, 64, 4096):
        assert _chunked(data, size) == want


def test_oversized_message_becomes_empty_and_lines_still_count() -> None:
    big = MSG.replace(b"CT LE W", b"CT\r" * 500)  # 500 continuation lines
    data = MSG + big + MSG.replace(b"C1", b"C3")
    want = _reference(data)
    splitter = MessageSplitter(max_message_bytes=256)
    got: list[tuple[int, bytes]] = []
    for i in range(0, len(data), 7):
        got += splitter.feed(data[i : i + 7])
    got += splitter.close()
    assert [line for line, _ in got] == [line for line, _ in want]
    assert [m for _, m in got] == [want[0][1], b"", want[2][1]]
    assert splitter.oversized == 1


def test_oversized_leading_text_and_no_message() -> None:
    assert _chunked(b"x" * 1000, 10, 100) == [(1, b"")]
    assert _chunked(b"x" * 1000 + b"\r" + MSG, 10, 200) == [(1, b""), (2, MSG)]
    assert _chunked(b"\r\n  \n", 2, 100) == []
