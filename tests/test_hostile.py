"""Hostile input (issue 13): control bytes on the wire, batches, junk lines, exact MSA-2,
resends that differ, the allow-list, refused-message budget and log volume."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import self_signed
from tests.hl7build import order_message
from tests.support import FakeOrderingSystem, Serve, wait_until
from worker.check import Checker
from worker.errors import HL7ParseError
from worker.hl7.ack import AckTarget, build_ack
from worker.hl7.build import advisory_control_id, build_advisory
from worker.hl7.escape import Delimiters
from worker.hl7.parse import parse_message, peek_msh

NOW = datetime(2026, 11, 20, 9, 30, 5, tzinfo=UTC)
BAD_NAMES = [
    "DOE\\X1C\\^JOHN",  # a frame end: the advisory was cut short and ACKed as delivered
    "DOE\\X0B\\MSH#^~\\E\\&#EVIL#X#",  # a frame start then an attacker's MSH
    "DOE\\X00\\^JOHN",  # a NUL in PID
    "DOE\\X1B\\[2J^JOHN",  # a terminal escape
    "DOE\\X0D\\MSH\\F\\EVIL^JOHN",  # a segment end
]


def _clean(data: bytes) -> bool:
    """No byte below 0x20 but the segment end, no DEL."""
    return all(b >= 0x20 and b != 0x7F for b in data.replace(b"\r", b""))


def _advisory(checker: Checker, data: bytes) -> bytes:
    outcome = checker.check_message(data)
    assert outcome.raw is not None and outcome.orders
    return build_advisory(
        outcome.raw,
        outcome.orders[0],
        outcome.results[0],
        control_id="OC123",
        application="ORDERCHECK",
        facility="RADCDS",
        now=NOW,
    )


# -- item 2: control bytes never reach the wire raw ---------------------------------------------
def test_encode_escapes_every_control_character() -> None:
    d = Delimiters()
    assert d.encode("A\x1cB\x0bC\x00D\x1b\x7f") == "A\\X1C\\B\\X0B\\C\\X00\\D\\X1B\\\\X7F\\"
    assert d.encode("a\r\nb") == "a\\.br\\b"
    for n in [*range(0x20), 0x7F]:
        text = f"x{chr(n)}y"
        assert _clean(d.encode(text).encode()) and d.decode(d.encode(text)) == text.replace(
            "\r", "\n"
        )
    assert Delimiters(escape="").encode("a\x1cb\rc") == "ab c"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_advisory_escapes_control_bytes_of_copied_fields(checker: Checker, name: str) -> None:
    msg = order_message(reason="^Left thigh mass 6 cm").replace(
        b"TEST^PATIENT", name.encode("latin-1")
    )
    out = _advisory(checker, msg)
    assert _clean(out)
    raw = parse_message(out)
    assert [s.id for s in raw.segments].count("MSH") == 1
    assert raw.msh.get(10) == "OC123"
    assert raw.first("PID") is not None
    assert raw.segments[-1].id == "OBX"  # the whole advisory, not a stump
    family = Delimiters().decode(name.split("^")[0])
    assert raw.component(raw.first("PID").get(5), 1) == family.strip().replace("\r", "\n")  # type: ignore[union-attr]


def test_advisory_escapes_raw_control_bytes_too(checker: Checker) -> None:
    """A control byte sent raw (no escape sequence in the field) is escaped as well."""
    msg = order_message(reason="^Left thigh mass 6 cm").replace(b"TEST^PATIENT", b"DOE\x01^JO")
    out = _advisory(checker, msg)
    assert _clean(out) and b"DOE\\X01\\^JO" in out


@pytest.mark.parametrize("bad", ["EPIC\\X1C\\", "EPIC\\X00\\", "EPIC\\X0B\\MSH"])
def test_ack_escapes_control_bytes(bad: str) -> None:
    head = peek_msh(f"MSH|^~\\&|{bad}|{bad}|R|R|2026||ORM^O01|{bad}|P|2.5\r".encode("latin-1"))
    target = AckTarget(
        head.sending_application,
        head.sending_facility,
        control_id=head.exact_control_id,
    )
    ack = build_ack(target, "AA")
    assert _clean(ack)
    assert ack.startswith(b"MSH|") and b"\rMSH" not in ack and ack.count(b"\r") == 2
    msa = ack.split(b"\r")[1].split(b"|")
    assert msa[2].decode() == bad  # MSA-2: MSH-10 exactly, escaped as it came


def test_deliver_compares_msa2_with_the_control_id_it_built(knowledge: Any) -> None:
    """The bytes' own MSH-10 is never trusted: the publisher is asked for the id we built."""
    from worker.pipeline import Processor
    from worker.publish import DeliveryOutcome
    from worker.records import AdvisoryRecord
    from worker.runtime import Stores
    from worker.settings import Route, Settings

    asked: list[str] = []

    class Publisher:
        def route(self, application: str, facility: str) -> Route:
            return Route(host="127.0.0.1", port=9)

        def send(self, route: Route, message: bytes, control_id: str) -> DeliveryOutcome:
            asked.append(control_id)
            return DeliveryOutcome(False, "down", "127.0.0.1:9")

    settings = Settings(redis_url=None, delivery_retries=0)
    stores = Stores(settings)
    processor = Processor(settings, knowledge, stores, Publisher(), lambda *a: None)  # type: ignore[arg-type]
    outcome = Checker(knowledge, stores.history).check_message(
        order_message(reason="^thigh mass 6 cm")
    )
    record = AdvisoryRecord(
        id="0123456789abcdef0123",
        received_at=NOW,
        result=outcome.results[0],
        revision=2,
        raw_out="MSH|^~\\&|ORDERCHECK|ORDERCHECK|EPIC|HOSP|2026||ORU^R01|EVIL|P|2.5.1\r",
    )
    stores.store.add_advisory(record, [])
    processor.deliver(record.id, attempt=1, record=record)
    assert asked == [advisory_control_id(record.id, 2)] and asked != ["EVIL"]
    assert advisory_control_id(record.id, 2) == "OC0123456789abcdeC2"  # as _recheck built it


@pytest.mark.slow
def test_control_bytes_end_to_end_through_a_fake_ordering_system() -> None:
    """Hostile fields through the embedded listener: the ACKs and the advisories the ordering
    system receives are whole, carry no raw control byte, and each advisory is ACKed once."""
    ris = FakeOrderingSystem().start()
    serve = Serve(
        {"ORDERCHECK_ADVISORY_HOST": "127.0.0.1", "ORDERCHECK_ADVISORY_PORT": str(ris.port)}
    )
    try:
        serve.start()
        for n, name in enumerate(BAD_NAMES):
            msg = order_message(
                control_id=f"CB{n}", placer=f"PCB{n}", reason="^Left thigh mass 6 cm"
            ).replace(b"TEST^PATIENT", name.encode("latin-1"))
            code, control, ack = serve.send(msg)
            assert (code, control) == ("AA", f"CB{n}") and _clean(ack)
        odd = order_message(control_id="CB\\X1C\\X", sender="EPIC\\X00\\", reason="^thigh mass")
        code, _, ack = serve.send(odd)
        assert code == "AA" and _clean(ack)
        assert ack.split(b"\r")[1].split(b"|")[2] == b"CB\\X1C\\X"
        wait_until(lambda: len(ris.advisories()) >= len(BAD_NAMES) + 1, 30, "the advisories")
        for advisory in ris.advisories():
            assert _clean(advisory.body), advisory.body
            raw = parse_message(advisory.body)
            assert raw.segments[-1].id == "OBX" and raw.msh.get(3) == "ORDERCHECK"
            assert advisory.control_id.startswith("OC")
        assert sorted(a.placer for a in ris.advisories() if a.placer.startswith("PCB")) == [
            f"PCB{n}" for n in range(len(BAD_NAMES))
        ]
    finally:
        serve.stop()
        ris.stop()


# -- item 4: refused messages have a byte budget; /refused pages --------------------------------
def test_refused_messages_keep_a_byte_budget(redis_url: str) -> None:
    import redis

    from worker.ingest import Rejected
    from worker.serve import _keeper
    from worker.store import REJECTED_RAW_CHARS, MemoryStore, RedisStore

    frame = b"MSH|^~\\&|X|Y|||2026||ADT^A01|BIG|P|2.5\rNTE|1||" + b"x" * (1 << 20)
    for store in (MemoryStore(), RedisStore(redis.Redis.from_url(redis_url))):

        class Stores:
            pass

        holder = Stores()
        holder.store = store  # type: ignore[attr-defined]
        for n in range(60):
            _keeper(holder)(Rejected(f"BIG{n}", "AR", "unsupported", frame, 1_700_000_000.0 + n))  # type: ignore[arg-type]
        newest = store.rejected(1)[0]
        assert newest.control_id == "BIG59" and len(newest.raw) == REJECTED_RAW_CHARS
        assert newest.raw_bytes == len(frame)
        page2 = store.rejected(50, offset=50)
        assert [e.control_id for e in page2] == [f"BIG{n}" for n in range(9, -1, -1)]


def test_refused_page_pages_and_says_what_was_cut() -> None:
    from tests.test_review import SETTINGS, login
    from worker.review import create_app
    from worker.store import MemoryStore, RejectedEntry

    store = MemoryStore()
    for n in range(60):
        store.keep_rejected(
            RejectedEntry(
                control_id=f"R{n:02d}",
                ack_code="AR",
                reason="unsupported",
                received_at=NOW,
                raw="MSH|" + "y" * 20_000,
            )
        )
    client = create_app(store, SETTINGS).test_client()
    login(client)
    first = client.get("/refused").get_data(as_text=True)
    assert "R59" in first and "R10" in first and "R09" not in first
    assert "cut: 20004 bytes received" in first and 'href="?page=2"' in first
    second = client.get("/refused?page=2").get_data(as_text=True)
    assert "R09" in second and "R00" in second and "R10" not in second
    assert len(first) < 50 * 9000 + 20_000


# -- items 15-18: batches, junk lines, exact MSA-2, batch segments inside a message -----------
class _Recorder:
    def __init__(self) -> None:
        self.queued: list[bytes] = []
        self.kept: list[Any] = []

    def enqueue(self, data: bytes, received_at: float) -> None:
        self.queued.append(data)

    def keep(self, rejected: Any) -> None:
        self.kept.append(rejected)


def _ingestor(**settings: Any) -> tuple[Any, _Recorder]:
    from worker.ingest import Ingestor
    from worker.settings import Settings
    from worker.store import MemoryDedup

    rec = _Recorder()
    return Ingestor(Settings(**settings), MemoryDedup(), rec.enqueue, rec.keep), rec


def _segments(reply: bytes) -> list[list[str]]:
    return [seg.split("|") for seg in reply.decode().split("\r") if seg]


BATCH = (
    b"FHS|^~\\&|EPIC|HOSP|||20261120||||F001\r"
    b"BHS|^~\\&|EPIC|HOSP|||20261120||||B001\r"
    + order_message(control_id="BAT1", placer="PB1")
    + order_message(control_id="BAT2", placer="PB2", msg_type="ADT^A01")
    + order_message(control_id="BAT3", placer="PB3", patient_id="P3^^^H^MR")
    + b"BTS|3\rFTS|1\r"
)


def test_a_batch_in_one_frame_gets_one_batch_of_acks() -> None:
    ingestor, rec = _ingestor()
    reply = ingestor.handle(b"\x0b" + BATCH + b"\x1c\r")
    assert reply is not None
    segs = _segments(reply)
    assert [s[0] for s in segs] == [
        "FHS", "BHS", "MSH", "MSA", "MSH", "MSA", "ERR", "MSH", "MSA", "BTS", "FTS"
    ]  # fmt: skip
    assert segs[0][11] == "F001" and segs[1][11] == "B001"  # FHS-12 / BHS-12: theirs
    msa = [s for s in segs if s[0] == "MSA"]
    assert [(s[1], s[2]) for s in msa] == [("AA", "BAT1"), ("AR", "BAT2"), ("AA", "BAT3")]
    assert segs[-2] == ["BTS", "3"]
    assert [peek_msh(m).control_id for m in rec.queued] == ["BAT1", "BAT3"]
    again = ingestor.handle(BATCH)  # a resend of the batch: the same answers, nothing queued
    assert again is not None
    assert [(s[1], s[2]) for s in _segments(again) if s[0] == "MSA"] == [(s[1], s[2]) for s in msa]
    assert len(rec.queued) == 2


@pytest.mark.parametrize(
    "empty", [b"FHS", b"BHS|^~\\&|EPIC|HOSP|||20261120||||B9\rBTS|0\r", b"FHS|^~\\&\rFTS|0"]
)
def test_a_batch_that_holds_no_message_is_refused_not_answered_empty(empty: bytes) -> None:
    ingestor, rec = _ingestor()
    reply = ingestor.handle(empty)
    assert reply is not None and not rec.queued
    segs = _segments(reply)
    msa = [s for s in segs if s[0] == "MSA"]
    assert len(msa) == 1 and msa[0][1] in ("AE", "AR")  # the sender learns it was refused
    assert any(s[0] == "ERR" for s in segs) and ["BTS", "1"] in segs
    assert len(rec.kept) == 1  # kept for review, as every refused message


def test_a_line_that_is_not_a_segment_gets_ae_100_naming_it() -> None:
    ingestor, rec = _ingestor()
    msg = order_message(control_id="JUNK1").replace(b"\rPID|", b"\rjunk line here\rPID|", 1)
    reply = ingestor.handle(msg)
    assert reply is not None and not rec.queued
    segs = _segments(reply)
    assert segs[0][11] == "2.3" and len(segs[0]) == 12  # our MSH-12 clean: the sender's version
    assert segs[1][:3] == ["MSA", "AE", "JUNK1"] and "line 2" in segs[1][3]
    assert segs[2][3].startswith("100^")
    assert rec.kept and "line 2" in rec.kept[0].reason


def test_base64_of_an_ed_value_wrapped_over_lines_is_read_as_one_value() -> None:
    """An exporter's line-wrapped OBX-5 of type ED (dcm4che's ORU^R01-PDF sample) continues the
    value; the same line after any other segment is still refused."""

    ed = b"OBX|1|ED|18748-4^Diagnostic Imaging Report^LN||^Application^PDF^Base64^JVBERi0xL"
    wrapped = b"\rA0KJSVFT0YNCg0K\rA0KJSVFT0YNCg==||||||F\r"
    msg = order_message(control_id="ED1", msg_type="ORU^R01", version="2.5.1") + ed + wrapped
    obx = parse_message(msg).segments[-1]
    assert obx.get(5).endswith("JVBERi0xLA0KJSVFT0YNCg0KA0KJSVFT0YNCg==")
    assert obx.get(11) == "F"
    not_ed = msg.replace(b"|ED|", b"|ST|")
    with pytest.raises(HL7ParseError, match=r"line \d+ of the message is not a segment"):
        parse_message(not_ed)


def test_msa2_echoes_msh10_exactly() -> None:
    ingestor, _ = _ingestor()
    for control in (" LEAD", "TRAIL ", "A\\F\\B", "X\\X1C\\Y"):
        reply = ingestor.handle(order_message(control_id=control, placer=f"P{len(control)}"))
        assert reply is not None
        assert reply.split(b"\r")[1].split(b"|")[2].decode() == control
    refused = order_message(control_id=" R1", msg_type="ADT^A01")
    assert ingestor.handle(refused).split(b"\r")[1].split(b"|")[2] == b" R1"
    broken = b"MSH|^~\\&|A|B|C|D|2026||| SPACED |P|2.5\r"  # MSH-9 missing: refused via peek
    assert ingestor.handle(broken).split(b"\r")[1].split(b"|")[2] == b" SPACED "


@pytest.mark.parametrize("inside", [b"BHS|^~\\&|X\r", b"FHS|^~\\&|X\r"])
def test_check_rejects_a_batch_segment_inside_a_message(
    inside: bytes, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from worker.cli import main

    msg = order_message(control_id="IN1").replace(b"\rPID|", b"\r" + inside + b"PID|", 1)
    path = tmp_path / "bad.hl7"
    path.write_bytes(msg)
    assert main(["check", "--json", str(path)]) == 0
    (result,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert result["verdict"] == "rejected"
    assert f"batch segment {inside[:3].decode()} inside a message" in result["error"]
    trailer = tmp_path / "trailer.hl7"  # BTS/FTS after the last message of a batch: fine
    trailer.write_bytes(BATCH)
    assert main(["check", "--json", str(trailer)]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["error"] for r in results] == [None, None, None]


# -- item 9: per-peer connection limit; whitespace does not keep a connection open --------------
def test_one_address_cannot_take_every_connection_slot() -> None:
    from tests.test_mllp import ServerThread, assert_closed_by_peer, connect, echo, read_frames
    from worker.hl7.mllp import frame

    with ServerThread(echo, max_connections=10, max_per_peer=2) as srv:
        first, second, third = connect(srv.port), connect(srv.port), connect(srv.port)
        try:
            assert_closed_by_peer(third)  # the third from 127.0.0.1 is refused at once
            for sock in (first, second):
                sock.sendall(frame(b"MSH|x"))
                assert read_frames(sock, 1) == [b"ACK|MSH|x"]
        finally:
            for sock in (first, second, third):
                sock.close()


def test_whitespace_between_frames_does_not_reset_the_idle_timer() -> None:
    import time

    from tests.test_mllp import ServerThread, connect, echo, read_frames
    from worker.hl7.mllp import frame

    with ServerThread(echo, idle_timeout=0.6) as srv:
        sock = connect(srv.port)
        try:
            sock.sendall(frame(b"MSH|1"))
            assert read_frames(sock, 1) == [b"ACK|MSH|1"]
            closed = False
            for _ in range(40):  # 40 x 0.1 s of whitespace and junk, well past 0.6 s
                try:
                    sock.sendall(b"\r\n " if _ % 2 else b"junk")
                except OSError:
                    closed = True
                    break
                time.sleep(0.1)
            if not closed:
                sock.settimeout(0.5)
                try:
                    closed = sock.recv(100) == b""
                except ConnectionResetError:
                    closed = True
                except TimeoutError:  # still open
                    closed = False
            assert closed, "whitespace kept the connection open past the idle timeout"
        finally:
            sock.close()


# -- item 10: the allow-list compares MSH-3 and MSH-4 as fields of their own ----------------------
def test_allow_list_is_not_bypassed_by_an_escaped_field_separator() -> None:
    from worker.settings import Settings

    s = Settings(allowed_senders=["EPIC|TESTHOSP", "LAB"])
    assert s.sender_allowed("EPIC", "TESTHOSP") and s.sender_allowed("LAB", "ANY")
    assert not s.sender_allowed("EPIC|TESTHOSP", "")  # MSH-3 EPIC\F\TESTHOSP, MSH-4 empty
    assert not s.sender_allowed("EPIC|TESTHOSP", "OTHER")
    assert not s.sender_allowed("EPIC", "OTHER")
    ingestor, rec = _ingestor(allowed_senders=["EPIC|TESTHOSP"])
    reply = ingestor.handle(order_message(sender="EPIC\\F\\TESTHOSP", facility=""))
    assert reply is not None and b"MSA|AR|" in reply and not rec.queued
    ok = ingestor.handle(order_message(control_id="OK1", sender="EPIC", facility="TESTHOSP"))
    assert ok is not None and b"MSA|AA|OK1" in ok


# -- item 13: a client certificate without a CA never means plain TCP ---------------------------
def test_advisory_tls_cert_without_ca_is_tls_with_a_warning(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import ssl

    from worker.publish import Publisher
    from worker.settings import Route, Settings

    key, cert = self_signed(tmp_path)
    settings = Settings(
        advisory_tls_cert=cert,
        advisory_tls_key=key,
        advisory_ack_timeout=3.0,
    )
    with caplog.at_level("WARNING", logger="ordercheck.publish"):
        publisher = Publisher(settings)
    assert "without ORDERCHECK_ADVISORY_TLS_CA" in caplog.text
    assert publisher._ssl is not None and publisher._ssl.verify_mode == ssl.CERT_REQUIRED
    ris = FakeOrderingSystem().start()  # plain TCP: the advisory must not go to it in clear
    try:
        message = b"MSH|^~\\&|ORDERCHECK|ORDERCHECK|RIS|HOSP|2026||ORU^R01|OCT1|P|2.5.1\r"
        outcome = publisher.send(Route(host="127.0.0.1", port=ris.port), message, "OCT1")
        assert not outcome.ok and "TLS" in outcome.error
        assert not any(b"OCT1" in a.body for a in ris.advisories())  # nothing in clear
    finally:
        publisher.close()
        ris.stop()


# -- item 11: a different message under a used (MSH-3, MSH-4, MSH-10) gets AE, never silence ------
def test_a_different_message_under_a_used_control_id_gets_ae() -> None:
    ingestor, rec = _ingestor()
    first = order_message(control_id="DUP1", placer="PD1", patient_id="P1^^^H^MR")
    ack = ingestor.handle(first)
    assert ack is not None and b"MSA|AA|DUP1" in ack
    # The same message resent, stamped again (MSH-7) and with CRLF ends: the first ACK.
    again = first.replace(b"20261120083000|", b"20261120090000|", 1).replace(b"\r", b"\r\n")
    assert ingestor.handle(again) == ack
    # Another patient under the same id: AE 205, kept for review, not queued, not the first ACK.
    other = order_message(control_id="DUP1", placer="PD1", patient_id="P2^^^H^MR")
    reply = ingestor.handle(other)
    assert reply is not None and reply != ack
    assert b"MSA|AE|DUP1" in reply and b"205^Duplicate key identifier" in reply
    assert len(rec.queued) == 1 and rec.kept[-1].code == "AE"
    # Both in one batch of frames: the second is refused as well.
    ingestor2, rec2 = _ingestor()
    replies = ingestor2.handle_batch([first, other])
    assert b"MSA|AA|DUP1" in replies[0] and b"MSA|AE|DUP1" in replies[1]
    assert len(rec2.queued) == 1


def test_resend_entries_written_before_the_digest_still_answer() -> None:
    from worker.ingest import Ingestor
    from worker.settings import Settings
    from worker.store import MemoryDedup, dedup_key

    dedup = MemoryDedup()
    old_ack = b"MSH|^~\\&|ORDERCHECK|ORDERCHECK|EPIC|HOSP|2026||ACK|A1|P|2.3\rMSA|AA|OLD1\r"
    dedup.set(dedup_key("EPIC", "HOSP", "OLD1"), old_ack, 60)
    rec = _Recorder()
    ingestor = Ingestor(Settings(), dedup, rec.enqueue, rec.keep)
    assert ingestor.handle(order_message(control_id="OLD1")) == old_ack and not rec.queued


# -- item 14: log volume: fields cut, repeated lines rate-limited -------------------------------
def _record(msg: str, **extra: Any) -> Any:
    import logging

    record = logging.LogRecord("ordercheck.ingest", logging.INFO, "x", 1, msg, (), None)
    record.__dict__.update(extra)
    return record


def test_logged_fields_are_cut() -> None:
    import json

    from worker.logs import MAX_FIELD, JSONFormatter

    line = JSONFormatter().format(_record("ignored an ACK", control_id="C" * 5000))
    data = json.loads(line)
    assert len(line) < 400 and data["control_id"].startswith("C" * MAX_FIELD)
    assert data["control_id"].endswith("(5000 chars)")
    assert len(json.loads(JSONFormatter().format(_record("x" * 100_000)))["msg"]) < 600


def test_repeated_lines_are_rate_limited_and_counted() -> None:
    from worker.logs import RepeatFilter

    now = [0.0]
    f = RepeatFilter(burst=3, window=10.0, clock=lambda: now[0])
    passed = [f.filter(_record("ignored an ACK", control_id=str(n))) for n in range(1000)]
    assert passed.count(True) == 3  # 1000 ignored ACKs in one window: 3 lines
    assert f.filter(_record("queued"))  # another line is not held back by them
    now[0] = 10.0
    after = _record("ignored an ACK")
    assert f.filter(after) and after.suppressed == 997  # the next window says how many
