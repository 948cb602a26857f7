"""Security over real sockets on 127.0.0.1: TLS for the listener (server certificate, optional
client certificate) and the publisher, the sender allow-list, frame size, connection and idle
limits, Redis with a password and over TLS, retention (`ordercheck purge`), and no patient
identifier in logs or metrics during a full end-to-end run.

Certificates are made with the `openssl` command in a temporary directory. The listener runs
in-process (worker.serve.Service, embedded mode) on an event loop in a thread; every wait is
bounded.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bench.harness import RedisServer
from tests.hl7build import order_message
from tests.support import FakeOrderingSystem, free_port, wait_until
from worker.cli import main as cli_main
from worker.errors import StoreError
from worker.hl7.ack import ack_fields
from worker.hl7.mllp import MLLPClient, MLLPError, frame
from worker.models import CheckResult
from worker.publish import Publisher
from worker.records import AdvisoryRecord, advisory_id
from worker.settings import Route, Settings
from worker.store import RedisStore, RejectedEntry

T = TypeVar("T")
WAIT = 10.0  # seconds: the bound of any single wait here


# ------------------------------------------------------------------------------ certificates
@dataclass(frozen=True)
class Certs:
    ca: Path  # the test CA's certificate
    server_cert: Path  # for 127.0.0.1 / localhost, signed by the CA
    server_key: Path
    client_cert: Path  # clientAuth, signed by the CA
    client_key: Path
    rogue_cert: Path  # self-signed, unknown to everyone
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _leaf(d: Path, name: str, ca: str, usage: str) -> None:
    (d / f"{name}.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
        f"keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN=ordercheck test {name}",
        cwd=d,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.pem",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        f"{name}.ext",
        cwd=d,
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("certs")
    for ca in ("ca", "rogue"):
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.pem",
            "-days",
            "2",
            "-sha256",
            "-subj",
            f"/CN=ordercheck {ca}",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            cwd=d,
        )
    _leaf(d, "server", "ca", "serverAuth")
    _leaf(d, "client", "ca", "clientAuth")
    return Certs(
        d / "ca.pem",
        d / "server.pem",
        d / "server.key",
        d / "client.pem",
        d / "client.key",
        d / "rogue.pem",
        d / "rogue.key",
    )


def client_context(certs: Certs, cert: bool = False, rogue: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    if cert:
        ctx.load_cert_chain(
            str(certs.rogue_cert if rogue else certs.client_cert),
            str(certs.rogue_key if rogue else certs.client_key),
        )
    return ctx


def server_context(certs: Certs, require_client: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    if require_client:
        ctx.load_verify_locations(str(certs.ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


# --------------------------------------------------------------------------- the listener
class Running:
    """worker.serve.Service on an event loop in a thread."""

    def __init__(self, settings: Settings) -> None:
        from worker.serve import Service

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.service = Service(settings)
        self.call(self.service.start())

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = WAIT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def port(self) -> int:
        return self.service.port

    def stop(self) -> None:
        try:
            self.call(self.service.stop(grace=2.0), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(WAIT)
            self.loop.close()


def listen(**changes: Any) -> Settings:
    return Settings(
        listen_port=0,
        delivery_backoff=0.05,
        delivery_backoff_max=0.2,
        advisory_ack_timeout=2.0,
        **changes,
    )


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for r in started:
        r.stop()


def start(running: list[Running], settings: Settings) -> Running:
    r = Running(settings)
    running.append(r)
    return r


def order(control: str, **kw: Any) -> bytes:
    kw.setdefault("reason", "^Left thigh mass 6 cm deep")
    kw.setdefault("placer", f"P{control}")
    kw.setdefault("patient_id", f"M{control}^^^HOSP^MR")
    return order_message(control_id=control, **kw)


def exchange(port: int, message: bytes, ctx: ssl.SSLContext | None = None) -> tuple[str, bytes]:
    with MLLPClient(
        "127.0.0.1",
        port,
        ssl=ctx,
        connect_timeout=WAIT,
        server_hostname="127.0.0.1" if ctx else None,
    ) as client:
        reply = client.send(message, timeout=WAIT)
    return ack_fields(reply)[0], reply


def closed_by_server(sock: socket.socket, timeout: float = WAIT) -> bool:
    """True when the server closes *sock* (EOF or reset) within *timeout* seconds."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(4096):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


# ------------------------------------------------------------------------------ TLS listener
def test_listener_tls_refuses_plain_text_and_serves_tls(
    running: list[Running], certs: Certs
) -> None:
    r = start(running, listen(tls_cert=certs.server_cert, tls_key=certs.server_key))
    with pytest.raises(MLLPError):
        exchange(r.port, order("TLS-PLAIN"))
    assert exchange(r.port, order("TLS-OK"), client_context(certs))[0] == "AA"
    with pytest.raises(MLLPError):  # a client that does not trust the server's CA
        exchange(
            r.port, order("TLS-ROGUE"), ssl.create_default_context(cafile=str(certs.rogue_cert))
        )


def test_listener_client_certificate_required(running: list[Running], certs: Certs) -> None:
    r = start(
        running,
        listen(tls_cert=certs.server_cert, tls_key=certs.server_key, tls_client_ca=certs.ca),
    )
    with pytest.raises(MLLPError):
        exchange(r.port, order("MTLS-NOCERT"), client_context(certs))
    with pytest.raises(MLLPError):
        exchange(r.port, order("MTLS-ROGUE"), client_context(certs, cert=True, rogue=True))
    assert exchange(r.port, order("MTLS-OK"), client_context(certs, cert=True))[0] == "AA"


# ----------------------------------------------------------------------------- TLS publisher
def test_advisory_delivered_over_tls(running: list[Running], certs: Certs) -> None:
    ris = FakeOrderingSystem(ssl=server_context(certs)).start()
    try:
        r = start(
            running,
            listen(advisory_host="127.0.0.1", advisory_port=ris.port, advisory_tls_ca=certs.ca),
        )
        assert exchange(r.port, order("PUBTLS1"))[0] == "AA"
        wait_until(lambda: "PPUBTLS1" in ris.by_placer(), WAIT, "the advisory over TLS")
        store, rid = r.service.stores.store, advisory_id("EPIC", "HOSP", "PUBTLS1", 0)

        def delivered() -> bool:  # marked once the ACK is read, just after the frame arrived
            rec = store.get(rid)
            return rec is not None and rec.delivery == "delivered"

        wait_until(delivered, WAIT, "the advisory marked delivered")
    finally:
        # The listener first: its kept TLS connection closes, so the ordering system's TLS
        # shutdown of it completes before its loop is closed (no socket left to the GC).
        while running:
            running.pop().stop()
        ris.stop()


def test_publisher_checks_the_ordering_systems_certificate(certs: Certs) -> None:
    ris = FakeOrderingSystem(ssl=server_context(certs, require_client=True)).start()
    message = b"MSH|^~\\&|ORDERCHECK|ORDERCHECK|RIS|HOSP|20261125||ORU^R01|OCX1|P|2.5.1\r"
    route = Route(host="127.0.0.1", port=ris.port)
    try:

        def send(**tls: Path) -> bool:
            publisher = Publisher(Settings.model_validate({"advisory_ack_timeout": 3.0, **tls}))
            try:
                return publisher.send(route, message, "OCX1").ok
            finally:
                publisher.close()

        assert send(
            advisory_tls_ca=certs.ca,
            advisory_tls_cert=certs.client_cert,
            advisory_tls_key=certs.client_key,
        )
        assert not send(advisory_tls_ca=certs.ca)  # the ordering system wants a certificate
        assert not send(
            advisory_tls_ca=certs.rogue_cert,
            advisory_tls_cert=certs.client_cert,
            advisory_tls_key=certs.client_key,
        )  # not the server we trust
        assert not send()  # plain text to a TLS port
        assert len(ris.advisories()) == 1
    finally:
        ris.stop()


# -------------------------------------------------------------------------------- allow-list
def test_sender_not_allowed_gets_ar_207_and_nothing_is_queued(running: list[Running]) -> None:
    r = start(running, listen(allowed_senders=["EPIC|HOSP", "RIS"]))
    queued: list[bytes] = []
    enqueue = r.service.ingestor.enqueue

    def recording(data: bytes, received_at: float) -> None:
        queued.append(data)
        enqueue(data, received_at)

    r.service.ingestor.enqueue = recording
    for control, sender, facility in (("AL-1", "OTHER", "HOSP"), ("AL-2", "EPIC", "ELSEWHERE")):
        code, reply = exchange(r.port, order(control, sender=sender, facility=facility))
        assert code == "AR"
        assert b"ERR|" in reply and b"^207&" in reply and b"|207^" in reply
    assert queued == []
    assert exchange(r.port, order("AL-3", sender="EPIC", facility="HOSP"))[0] == "AA"
    assert exchange(r.port, order("AL-4", sender="RIS", facility="ANY"))[0] == "AA"
    assert len(queued) == 2
    refused = {e.control_id: e.ack_code for e in r.service.stores.store.rejected()}
    assert refused == {"AL-1": "AR", "AL-2": "AR"}  # kept for review, never dropped


# ------------------------------------------------------------------------ limits, timeouts
def test_frame_size_limit_answers_ar_and_keeps_the_connection(running: list[Running]) -> None:
    r = start(running, listen(max_frame_bytes=4096))
    big = order("BIG-1", notes=("x" * 10_000,))
    with MLLPClient("127.0.0.1", r.port, connect_timeout=WAIT) as client:
        code, _ = ack_fields(client.send(big, timeout=WAIT))
        assert code == "AR"
        assert ack_fields(client.send(order("BIG-2"), timeout=WAIT)) == ("AA", "BIG-2")


def test_connection_limit(running: list[Running]) -> None:
    r = start(running, listen(max_connections=2))
    clients = [MLLPClient("127.0.0.1", r.port, connect_timeout=WAIT) for _ in range(2)]
    try:
        for i, c in enumerate(clients):
            assert ack_fields(c.send(order(f"CONN-{i}"), timeout=WAIT))[0] == "AA"
        with socket.create_connection(("127.0.0.1", r.port), timeout=WAIT) as extra:
            assert closed_by_server(extra)
        clients[0].close()
        wait_until(lambda: r.service.server.connection_count < 2, WAIT, "a free slot")
        assert exchange(r.port, order("CONN-3"))[0] == "AA"
    finally:
        for c in clients:
            c.close()


def test_idle_connections_time_out(running: list[Running]) -> None:
    r = start(running, listen(idle_timeout=0.5))
    with (
        socket.create_connection(("127.0.0.1", r.port), timeout=WAIT) as idle,
        socket.create_connection(("127.0.0.1", r.port), timeout=WAIT) as stalled,
    ):
        stalled.sendall(frame(order("IDLE-1"))[:40])  # a frame that never ends
        started = time.monotonic()
        assert closed_by_server(idle, timeout=5)
        assert closed_by_server(stalled, timeout=5)
        assert time.monotonic() - started < 5
    assert exchange(r.port, order("IDLE-2"))[0] == "AA"  # the listener itself is fine


# ------------------------------------------------------------------------------------ Redis
def _record(rec_id: str, received_at: datetime) -> AdvisoryRecord:
    result = CheckResult(
        message_control_id=rec_id,
        message_type="ORM^O01",
        verdict="not-appropriate",
        guideline_version="test",
    )
    return AdvisoryRecord(
        id=rec_id, received_at=received_at, result=result, raw_in="MSH|...", raw_out="MSH|..."
    )


def test_redis_with_password(tmp_path: Path) -> None:
    import redis

    server = RedisServer(tmp_path / "redis", aof=False, password="s3cret-pw").start()
    try:
        store = RedisStore(redis.Redis.from_url(server.url(0), socket_timeout=5))
        assert store.put(_record("pw1", datetime.now(UTC)))
        got = store.get("pw1")
        assert got is not None and got.result.verdict == "not-appropriate"
        wrong = f"redis://:wrong-pw@127.0.0.1:{server.port}/0"
        started = time.monotonic()
        with pytest.raises(StoreError) as wrong_pw:  # mapped where it enters: the store
            RedisStore(redis.Redis.from_url(wrong, socket_timeout=5)).get("pw1")
        assert isinstance(wrong_pw.value.__cause__, redis.AuthenticationError)
        with pytest.raises(StoreError) as no_pw:  # no password at all
            RedisStore(redis.Redis.from_url(f"redis://127.0.0.1:{server.port}/0")).get("pw1")
        assert isinstance(no_pw.value.__cause__, redis.AuthenticationError)
        assert time.monotonic() - started < 5  # fails at once, no hang
    finally:
        server.stop()


def test_purge_command_with_a_wrong_password_fails_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server = RedisServer(tmp_path / "redis", aof=False, password="s3cret-pw").start()
    try:
        monkeypatch.setenv("ORDERCHECK_REDIS_URL", f"redis://:wrong-pw@127.0.0.1:{server.port}/0")
        assert cli_main(["purge"]) == 2
        err = capsys.readouterr().err
        assert "AuthenticationError" in err and "Traceback" not in err
        assert "wrong-pw" not in err and "s3cret" not in err
    finally:
        server.stop()


def test_redis_over_tls_with_password(tmp_path: Path, certs: Certs) -> None:
    import redis

    port = free_port()
    workdir = tmp_path / "redis-tls"
    workdir.mkdir()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(certs.server_cert),
            "--tls-key-file",
            str(certs.server_key),
            "--tls-ca-cert-file",
            str(certs.ca),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "s3cret-pw",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--logfile",
            str(workdir / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"rediss://:s3cret-pw@127.0.0.1:{port}/0?ssl_ca_certs={certs.ca}"

        def up() -> bool:
            if proc.poll() is not None:
                pytest.skip("redis-server without TLS support")
            try:
                return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
            except redis.ConnectionError:
                return False

        wait_until(up, WAIT, "redis-server over TLS")
        store = RedisStore(redis.Redis.from_url(url, socket_timeout=5))
        assert store.put(_record("tls1", datetime.now(UTC)))
        assert store.get("tls1") is not None
        plain = redis.Redis.from_url(f"redis://:s3cret-pw@127.0.0.1:{port}/0", socket_timeout=2)
        with pytest.raises(redis.ConnectionError):
            plain.ping()  # plain text to the TLS port
        rogue = f"rediss://:s3cret-pw@127.0.0.1:{port}/0?ssl_ca_certs={certs.rogue_cert}"
        with pytest.raises(redis.ConnectionError):  # a server we do not trust
            redis.Redis.from_url(rogue, socket_timeout=2).ping()
    finally:
        proc.terminate()
        proc.wait(WAIT)


# ---------------------------------------------------------------------------------- purge
@pytest.mark.redis
def test_purge_command_deletes_what_is_older_than_retention(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import redis

    store = RedisStore(redis.Redis.from_url(redis_url))
    now = datetime.now(UTC)
    store.put(_record("old", now - timedelta(days=40)))
    store.put(_record("new", now - timedelta(days=5)))
    for control, days in (("R-OLD", 40), ("R-NEW", 5)):
        store.keep_rejected(
            RejectedEntry(
                control_id=control,
                ack_code="AR",
                reason="test",
                received_at=now - timedelta(days=days),
                raw="MSH|",
            )
        )
    monkeypatch.setenv("ORDERCHECK_REDIS_URL", redis_url)
    monkeypatch.setenv("ORDERCHECK_RETENTION_DAYS", "30")
    assert cli_main(["purge"]) == 0
    assert "purged 1 advisories" in capsys.readouterr().out
    assert store.get("old") is None and store.get("new") is not None
    assert [e.control_id for e in store.rejected()] == ["R-NEW"]
    assert cli_main(["purge", "--days", "1"]) == 0
    assert store.get("new") is None and store.rejected() == []


def test_purge_command_on_the_embedded_default_says_where_the_data_is(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ORDERCHECK_REDIS_URL", raising=False)
    assert cli_main(["purge"]) == 2
    assert "embedded" in capsys.readouterr().err


def test_serve_purges_at_start(running: list[Running]) -> None:
    from worker.serve import Service

    class Probe(Service):
        def __init__(self, settings: Settings) -> None:
            super().__init__(settings)
            now = datetime.now(UTC)
            self.stores.store.put(_record("stale", now - timedelta(days=10)))
            self.stores.store.put(_record("fresh", now))

    r = Running.__new__(Running)
    r.loop = asyncio.new_event_loop()
    r.thread = threading.Thread(target=r.loop.run_forever, daemon=True)
    r.thread.start()
    r.service = Probe(listen(retention_days=7))
    running.append(r)
    r.call(r.service.start())
    store = r.service.stores.store
    wait_until(lambda: store.get("stale") is None, WAIT, "the purge at start")
    assert store.get("fresh") is not None


# ------------------------------------------------------------ no patient data in logs/metrics
PATIENTS = [  # (PID-3 MRN, PID-5 name, PID-7 birth date): distinctive, searchable strings
    ("MRN7731902", "ZEBEDEE^QUIXOTIA", "19530717"),
    ("MRN5508813", "VANTONGEREN^HILDEBURG", "19471102"),
    ("MRN6620474", "OKONKWO-BRATT^ELSPETH", "19880229"),
    ("MRN9913350", "FAIRWEATHER^CORNELIUS", "20010930"),
]


def _needles() -> list[str]:
    out: list[str] = []
    for mrn, name, born in PATIENTS:
        out += [mrn, born, f"{born[:4]}-{born[4:6]}-{born[6:]}", *name.split("^")]
    return out


def _with_patient(message: bytes, mrn: str, name: str, born: str) -> bytes:
    segments = message.split(b"\r")
    for i, seg in enumerate(segments):
        if seg.startswith(b"PID|"):
            segments[i] = f"PID|1||{mrn}^^^HOSP^MR||{name}||{born}|F".encode()
    return b"\r".join(segments)


def _texts(record: logging.LogRecord) -> list[str]:
    """Everything a handler could write for *record*: message, extra fields, exception."""
    from worker.logs import JSONFormatter

    standard = set(vars(logging.makeLogRecord({})))
    texts = [record.getMessage(), JSONFormatter().format(record)]
    texts += [repr(v) for k, v in vars(record).items() if k not in standard]
    if record.exc_info:
        texts.append(logging.Formatter().formatException(record.exc_info))
    if record.exc_text:
        texts.append(record.exc_text)
    if record.stack_info:
        texts.append(record.stack_info)
    return texts


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_no_patient_identifier_in_logs_or_metrics(running: list[Running]) -> None:
    from prometheus_client import REGISTRY, generate_latest

    root = logging.getLogger()
    capture = _Capture()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    ris = FakeOrderingSystem()  # down at first: delivery failures and retries get logged
    try:
        r = start(
            running,
            listen(
                allowed_senders=["EPIC", "RIS"],
                advisory_host="127.0.0.1",
                advisory_port=ris.port,
                max_frame_bytes=2048,
            ),
        )
        p = PATIENTS
        messages = [
            # a flagged CT (advisory), an MRI (appropriate), an MRI result, a resend of the CT
            _with_patient(order("PII-CT"), *p[0]),
            _with_patient(order("PII-MRI", procedure="73720^MRI LE WO W^CPT4"), *p[1]),
            _with_patient(
                order(
                    "PII-ORU", msg_type="ORU^R01", sender="RIS", procedure="73720^MRI LE WO W^CPT4"
                ),
                *p[1],
            ),
            _with_patient(order("PII-CT"), *p[0]),
            # refused: sender not allowed, wrong version, wrong processing id, unreadable
            _with_patient(order("PII-AL", sender="ROGUE"), *p[2]),
            _with_patient(order("PII-VER", version="9.9"), *p[2]),
            _with_patient(order("PII-PRC", extra_msh={11: "X"}), *p[3]),
            _with_patient(order("PII-BAD"), *p[3]).replace(b"ORM^O01", b""),
            _with_patient(order("PII-SEG"), *p[3]).replace(b"\rORC|", b"\rO\x00C|"),
            b"PID|1||" + p[3][0].encode() + b"||" + p[3][1].encode() + b"\rjunk",
            # an oversize frame full of patient data, enhanced mode, an ACK
            _with_patient(order("PII-BIG", notes=(p[0][1] * 200,)), *p[0]),
            _with_patient(order("PII-ENH", extra_msh={15: "AL", 16: "NE"}), *p[2]),
            _with_patient(order("PII-ACK", msg_type="ACK"), *p[3]),
        ]
        with MLLPClient("127.0.0.1", r.port, connect_timeout=WAIT) as client:
            for m in messages[:4]:
                client.send(m, timeout=WAIT)
            wait_until(
                lambda: (
                    r.service.stores.store.get(advisory_id("EPIC", "HOSP", "PII-CT", 0)) is not None
                ),
                WAIT,
                "the CT checked",
            )
            wait_until(
                lambda: any("retry" in rec.getMessage() for rec in capture.records),
                WAIT,
                "a failed delivery",
            )
            ris.start()
            for m in messages[4:-1]:
                client.send(m, timeout=WAIT)
            client._sock.sendall(frame(messages[-1]))  # type: ignore[union-attr]  # no reply
        wait_until(
            lambda: {"PPII-CT", "PPII-MRI"} <= set(ris.by_placer()),
            WAIT,
            "the advisories delivered",
        )
        r.stop()
        running.remove(r)
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
        ris.stop()

    assert len(capture.records) > 20  # the run did log: DEBUG from the listener up
    needles = _needles()
    leaks = [
        (rec.name, rec.getMessage()[:120], n)
        for rec in capture.records
        for text in _texts(rec)
        for n in needles
        if n.lower() in text.lower()
    ]
    assert leaks == []
    metrics = generate_latest(REGISTRY).decode()
    assert [n for n in needles if n.lower() in metrics.lower()] == []
    # and the advisories themselves did carry the patient (PID copied): the test data is real
    assert any(p[0][0].encode() in a.body for a in ris.advisories())
