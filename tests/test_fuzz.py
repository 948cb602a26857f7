"""Properties over arbitrary and mutated input: the listener's decision gives exactly one outcome
and never raises, the reader raises only HL7ParseError, the checker never raises.

Inputs: raw bytes, HL7-shaped text built from delimiters and MSH fragments, and real messages
(seeds/*.hl7) mutated by bench/fuzz_listener.py's `mutate` with a Random that Hypothesis drives
(so a failure shrinks and replays). The longer run over real sockets is bench/fuzz_listener.py.
"""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bench.fuzz_listener import mutate, seed_messages, set_control_id
from worker.check import Checker
from worker.errors import HL7ParseError
from worker.guideline import Knowledge
from worker.history import InMemoryHistory
from worker.hl7.ack import ack_fields
from worker.hl7.parse import parse_message, peek_msh, split_messages
from worker.hl7.read import read_header, read_message
from worker.ingest import Ingestor, Rejected
from worker.settings import Settings
from worker.store import MemoryDedup

SEEDS = seed_messages()
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# HL7-shaped text: segment ids, delimiters, escapes and MSH fragments in any order.
_PIECES = st.sampled_from(
    [
        "MSH|^~\\&|",
        "MSH",
        "|",
        "^",
        "~",
        "\\",
        "&",
        "\r",
        "\n",
        "\r\n",
        "\x0b",
        "\x1c",
        "\x00",
        "PID|1||",
        "ORC|NW|",
        "OBR|1|",
        "OBX|1|ST|",
        "MSA|AA|",
        "ACK",
        "ORM^O01",
        "ORU^R01",
        "P",
        "2.5.1",
        "2.3",
        "AL",
        "NE",
        "ER",
        "SU",
        "UNICODE UTF-8",
        "\\X0D\\",
        "\\E\\",
        "é",
        "\ufffd",
        "20261120",
        "73701^CT^CPT4",
        "thigh mass",
        " ",
        "9" * 30,
    ]
)
hl7ish = st.lists(_PIECES | st.text(max_size=12), max_size=60).map(
    lambda parts: "".join(parts).encode("utf-8", errors="surrogatepass")
)
raw_bytes = st.binary(max_size=2048)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    rng = draw(st.randoms(use_true_random=False))
    message = SEEDS[draw(st.integers(0, len(SEEDS) - 1))]
    if draw(st.booleans()):
        message = set_control_id(message, f"HYP{draw(st.integers(0, 10**6))}")
    return mutate(message, rng)


any_input = raw_bytes | hl7ish | mutated()


# ------------------------------------------------------------------------------ the listener
class _Recorder:
    def __init__(self) -> None:
        self.queued: list[bytes] = []
        self.kept: list[Rejected] = []

    def enqueue(self, data: bytes, received_at: float) -> None:
        self.queued.append(data)

    def keep(self, rejected: Rejected) -> None:
        self.kept.append(rejected)


def _header(frame: bytes) -> tuple[bool, str]:
    """(is an ACK, MSH-15) as the listener sees them: read, else peeked."""
    try:
        header = read_header(parse_message(frame))
    except HL7ParseError:
        return peek_msh(frame).message_type.startswith("ACK"), ""
    return header.message_type == "ACK", header.accept_ack_type.upper()


@FUZZ
@given(any_input)
@example(b"MSH|^~\\&|EPIC|HOSP|OC|RAD|20260101||ORM^O01|X1|P|2.3|||XX\r")  # MSH-15 not in 0155
@example(b"MSH\x00\x01\x00\x00\x00\x00\x00\x00\x00ORM\x00\x01\x00P\x002.1\x00\x00\x00\x01")
def test_any_bytes_give_exactly_one_outcome(frame: bytes) -> None:
    rec = _Recorder()
    ingestor = Ingestor(Settings(), MemoryDedup(), rec.enqueue, rec.keep)
    reply = ingestor.handle(frame)  # must not raise
    assert len(rec.queued) <= 1
    queued = bool(rec.queued)
    if reply is None:
        # Nothing is sent back only for an ACK, or when enhanced mode (MSH-15) asks for none.
        is_ack, mode = _header(frame)
        assert is_ack or mode in ("NE", "ER", "SU"), "no answer to a message that wants one"
        if mode == "ER":
            assert queued  # ER: errors only, so silence means accepted
        if mode == "SU":
            assert not queued  # SU: successes only, so silence means refused
        assert not (is_ack and queued)
        return
    code, _ = ack_fields(reply)
    assert code in ("AA", "AE", "AR", "CA", "CE", "CR"), reply
    if queued:
        assert code in ("AA", "CA")
        assert not rec.kept
    else:
        assert code not in ("AA", "CA")
        assert len(rec.kept) == 1  # refused messages are kept for review, never dropped
        assert b"ERR|" in reply


@FUZZ
@given(any_input)
def test_a_resend_gets_the_first_answer_and_is_not_queued_again(frame: bytes) -> None:
    rec = _Recorder()
    ingestor = Ingestor(Settings(), MemoryDedup(), rec.enqueue, rec.keep)
    first = ingestor.handle(frame)
    second = ingestor.handle(frame)
    assert len(rec.queued) <= 1
    if rec.queued:
        assert first == second


# ------------------------------------------------------------------------------- the reader
@FUZZ
@given(any_input)
def test_reader_raises_only_its_own_error(data: bytes) -> None:
    peek_msh(data)  # never raises
    for line, message in split_messages(data):
        try:
            read_message(parse_message(message, line))
        except HL7ParseError as exc:
            assert exc.code in {"100", "101", "102", "103", "200", "201", "202", "203", "207"}
    with contextlib.suppress(HL7ParseError):  # anything else fails the test
        read_message(parse_message(data))


# ------------------------------------------------------------------------------ the checker
@pytest.fixture(scope="module")
def fuzz_checker(knowledge: Knowledge) -> Checker:
    return Checker(knowledge, InMemoryHistory())


@FUZZ
@given(data=any_input)
def test_checker_never_raises_and_gives_a_result(fuzz_checker: Checker, data: bytes) -> None:
    outcome = fuzz_checker.check_message(data)
    assert len(outcome.results) >= 1
    for result in outcome.results:
        assert result.verdict in ("appropriate", "not-appropriate", "no-criteria-apply", "rejected")
        assert (result.verdict == "rejected") == (result.error is not None)


def test_mutate_is_deterministic_and_changes_messages() -> None:
    a = [mutate(m, random.Random(7)) for m in SEEDS]
    b = [mutate(m, random.Random(7)) for m in SEEDS]
    assert a == b
    assert sum(x != y for x, y in zip(a, SEEDS, strict=True)) > len(SEEDS) // 2
