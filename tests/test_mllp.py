"""MLLP transport: decoder properties, and the server and clients over real sockets on 127.0.0.1.

Every wait is bounded (socket timeouts, future.result(timeout)), so a bug fails a test, not hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import self_signed
from worker.hl7.mllp import (
    CARRIAGE_RETURN,
    END_BLOCK,
    START_BLOCK,
    FrameDecoder,
    FrameError,
    FrameErrorKind,
    FrameEvent,
    MLLPClient,
    MLLPConnectionClosed,
    MLLPProtocolError,
    MLLPServer,
    MLLPTimeout,
    frame,
    send_async,
)

T = TypeVar("T")
WAIT = 5.0  # seconds: upper bound for any single wait in these tests

# ---------------------------------------------------------------- helpers


class ServerThread:
    """An MLLPServer running on its own event loop in a background thread."""

    def __init__(self, handler: Callable[[bytes], Awaitable[bytes | None]], **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = MLLPServer(handler, host="127.0.0.1", port=0, **kwargs)
        self.closed = False

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = WAIT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        self.run(self.server.start())
        self.port = self.server.port
        return self

    def close(self, grace: float = 0.2) -> None:
        if not self.closed:
            self.closed = True
            self.run(self.server.close(grace), timeout=grace + WAIT)

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(WAIT)
            self.loop.close()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.settimeout(WAIT)
    return sock


def read_frames(sock: socket.socket, count: int) -> list[FrameEvent]:
    decoder, events = FrameDecoder(), list[FrameEvent]()
    while len(events) < count:
        data = sock.recv(65536)
        assert data, f"connection closed after {len(events)} of {count} frames"
        events += decoder.feed(data)
    return events


def assert_closed_by_peer(sock: socket.socket) -> None:
    """The server closed this connection (EOF or reset) within WAIT seconds."""
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(65536) == b""


async def echo(payload: bytes) -> bytes:
    return b"ACK|" + payload


# ---------------------------------------------------------------- framing and decoder

payloads = st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))


@given(
    messages=st.lists(payloads, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=20),
    trailing_cr=st.lists(st.booleans(), min_size=8, max_size=8),
    gap=st.sampled_from([b"", b"\r", b"\n", b"\r\n"]),
)
def test_round_trip_any_packet_split(
    messages: list[bytes], cuts: list[int], trailing_cr: list[bool], gap: bytes
) -> None:
    stream = b"".join(
        (frame(m) if cr else START_BLOCK + m + END_BLOCK) + gap
        for m, cr in zip(messages, trailing_cr, strict=False)
    )
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder()
    events: list[FrameEvent] = []
    for a, b in itertools.pairwise(points):
        events += decoder.feed(stream[a:b])
    assert events == messages
    assert not decoder.in_frame


def test_frame_bytes() -> None:
    assert frame(b"MSH|x") == b"\x0bMSH|x\x1c\x0d"
    assert (START_BLOCK, END_BLOCK, CARRIAGE_RETURN) == (b"\x0b", b"\x1c", b"\x0d")


def test_several_frames_in_one_packet() -> None:
    assert FrameDecoder().feed(frame(b"a") + frame(b"b") + frame(b"")) == [b"a", b"b", b""]


def test_missing_cr_then_next_frame() -> None:
    assert FrameDecoder().feed(b"\x0ba\x1c\x0bb\x1c") == [b"a", b"b"]


def test_junk_between_frames_one_event_per_run() -> None:
    decoder = FrameDecoder()
    events = decoder.feed(b"\r\n" + frame(b"a") + b"\r\nGARBAGE\r\nMORE")
    events += decoder.feed(b"STILL JUNK" + frame(b"b") + b"\n\n" + b"x" + frame(b"c"))
    assert [type(e) for e in events] == [bytes, FrameError, bytes, FrameError, bytes]
    assert [e for e in events if isinstance(e, bytes)] == [b"a", b"b", b"c"]
    assert all(e.kind is FrameErrorKind.JUNK for e in events if isinstance(e, FrameError))


def test_frame_cut_short_by_new_start_block() -> None:
    events = FrameDecoder().feed(b"\x0bhalf a message" + frame(b"whole"))
    assert events[0] == FrameError(FrameErrorKind.JUNK, "frame cut short by a new start block")
    assert events[1:] == [b"whole"]


def test_oversize_one_event_discard_then_resync_bounded_memory() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    events = decoder.feed(START_BLOCK)
    for _ in range(50):  # 5000 payload bytes in 100-byte packets
        events += decoder.feed(b"x" * 100)
        assert decoder.buffered <= 100
    events += decoder.feed(END_BLOCK + CARRIAGE_RETURN + frame(b"y" * 100))
    assert len(events) == 2
    assert isinstance(events[0], FrameError) and events[0].kind is FrameErrorKind.OVERSIZE
    assert events[1] == b"y" * 100
    assert decoder.buffered == 0


def test_oversize_in_one_packet() -> None:
    events = FrameDecoder(max_frame_bytes=3).feed(frame(b"abcd") + frame(b"abc"))
    assert isinstance(events[0], FrameError) and events[0].kind is FrameErrorKind.OVERSIZE
    assert events[1:] == [b"abc"]


# ---------------------------------------------------------------- server


def test_several_frames_in_one_packet_answered_in_order() -> None:
    with ServerThread(echo) as srv, connect(srv.port) as sock:
        sock.sendall(frame(b"1") + frame(b"2") + frame(b"3"))
        assert read_frames(sock, 3) == [b"ACK|1", b"ACK|2", b"ACK|3"]


def test_junk_between_frames_ignored_by_default() -> None:
    with ServerThread(echo) as srv, connect(srv.port) as sock:
        sock.sendall(b"\r\nHELLO?" + frame(b"1") + b"\r\n" + frame(b"2"))
        assert read_frames(sock, 2) == [b"ACK|1", b"ACK|2"]


def test_oversize_then_normal_frame_on_same_connection() -> None:
    seen: list[FrameError] = []

    async def on_error(err: FrameError) -> bytes:
        seen.append(err)
        return b"NAK|" + err.kind.value.encode()

    with (
        ServerThread(echo, on_error=on_error, max_frame_bytes=100) as srv,
        connect(srv.port) as sock,
    ):
        sock.sendall(START_BLOCK + b"x" * 150)
        assert read_frames(sock, 1) == [b"NAK|oversize"]  # answered before the frame ends
        sock.sendall(b"x" * 10_000 + END_BLOCK + CARRIAGE_RETURN)
        sock.sendall(frame(b"ok"))
        assert read_frames(sock, 1) == [b"ACK|ok"]
    assert [e.kind for e in seen] == [FrameErrorKind.OVERSIZE]


def test_oversize_closes_connection_by_default() -> None:
    with ServerThread(echo, max_frame_bytes=100) as srv, connect(srv.port) as sock:
        sock.sendall(frame(b"x" * 101))
        assert_closed_by_peer(sock)


def test_many_messages_on_one_connection() -> None:
    with ServerThread(echo) as srv, MLLPClient("127.0.0.1", srv.port) as client:
        for i in range(300):
            assert client.send(b"MSH|%d" % i, timeout=WAIT) == b"ACK|MSH|%d" % i


def test_stalled_peer_does_not_stall_others() -> None:
    with ServerThread(echo) as srv, connect(srv.port) as stalled:
        stalled.sendall(START_BLOCK + b"MSH|half a message")  # and then nothing
        with MLLPClient("127.0.0.1", srv.port) as client:
            for i in range(20):
                assert client.send(b"%d" % i, timeout=1.0) == b"ACK|%d" % i
        stalled.sendall(b" rest" + END_BLOCK + CARRIAGE_RETURN)
        assert read_frames(stalled, 1) == [b"ACK|MSH|half a message rest"]


def test_slow_handler_does_not_stall_other_connections() -> None:
    async def handler(payload: bytes) -> bytes:
        if payload == b"slow":
            await asyncio.sleep(0.5)
        return payload

    with ServerThread(handler) as srv, connect(srv.port) as slow:
        slow.sendall(frame(b"slow"))
        start = time.monotonic()
        with MLLPClient("127.0.0.1", srv.port) as client:
            assert client.send(b"fast", timeout=0.4) == b"fast"
        assert time.monotonic() - start < 0.4


def test_idle_timeout_closes_connection() -> None:
    with ServerThread(echo, idle_timeout=0.2) as srv, connect(srv.port) as sock:
        sock.sendall(frame(b"1"))
        assert read_frames(sock, 1) == [b"ACK|1"]
        start = time.monotonic()
        assert_closed_by_peer(sock)
        assert 0.1 < time.monotonic() - start < 2.0


def test_max_connections() -> None:
    with ServerThread(echo, max_connections=1) as srv, connect(srv.port) as first:
        first.sendall(frame(b"1"))
        assert read_frames(first, 1) == [b"ACK|1"]
        with connect(srv.port) as second:
            assert_closed_by_peer(second)
        first.sendall(frame(b"2"))
        assert read_frames(first, 1) == [b"ACK|2"]


def test_graceful_close_finishes_in_flight_handler() -> None:
    started = threading.Event()

    async def slow(payload: bytes) -> bytes:
        started.set()
        await asyncio.sleep(0.3)
        return b"done"

    with ServerThread(slow) as srv, connect(srv.port) as busy, connect(srv.port) as idle:
        busy.sendall(frame(b"1") + frame(b"2"))  # "2" is queued, not in flight
        assert started.wait(WAIT)
        t0 = time.monotonic()
        srv.close(grace=3.0)
        assert time.monotonic() - t0 < 2.0
        assert read_frames(busy, 1) == [b"done"]
        assert_closed_by_peer(busy)  # the queued frame is left unanswered
        assert_closed_by_peer(idle)
        with pytest.raises(OSError):
            connect(srv.port).close()


def test_close_grace_expiry_cancels_handler() -> None:
    started = threading.Event()

    async def stuck(payload: bytes) -> bytes:
        started.set()
        await asyncio.sleep(60)
        return b"never"

    with ServerThread(stuck) as srv, connect(srv.port) as sock:
        sock.sendall(frame(b"1"))
        assert started.wait(WAIT)
        t0 = time.monotonic()
        srv.close(grace=0.2)
        assert time.monotonic() - t0 < 2.0
        assert_closed_by_peer(sock)


def test_handler_exception_closes_only_that_connection(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(payload: bytes) -> bytes:
        if payload.startswith(b"BOOM"):
            raise ValueError(payload.decode())
        return payload

    caplog.set_level(logging.DEBUG, logger="ordercheck.mllp")
    with (
        ServerThread(handler) as srv,
        connect(srv.port) as bad,
        MLLPClient("127.0.0.1", srv.port) as good,
    ):
        assert good.send(b"before", timeout=WAIT) == b"before"
        bad.sendall(frame(b"BOOM PID|SMITH^JOHN"))
        assert_closed_by_peer(bad)
        assert good.send(b"after", timeout=WAIT) == b"after"
        with MLLPClient("127.0.0.1", srv.port) as fresh:
            assert fresh.send(b"new", timeout=WAIT) == b"new"
    assert "ValueError" in caplog.text
    assert "SMITH" not in caplog.text and "before" not in caplog.text


def test_handler_returning_none_sends_nothing() -> None:
    async def handler(payload: bytes) -> bytes | None:
        return None if payload == b"quiet" else payload

    with ServerThread(handler) as srv, connect(srv.port) as sock:
        sock.sendall(frame(b"quiet") + frame(b"loud"))
        assert read_frames(sock, 1) == [b"loud"]


def test_serve_forever_returns_after_close() -> None:
    async def main() -> None:
        server = MLLPServer(echo, port=0)
        forever = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0.05)
        assert await send_async("127.0.0.1", server.port, b"x", timeout=WAIT) == b"ACK|x"
        await server.close(grace=1.0)
        await asyncio.wait_for(forever, WAIT)

    asyncio.run(asyncio.wait_for(main(), WAIT))


# ---------------------------------------------------------------- clients


@contextlib.contextmanager
def fake_server(script: Callable[[socket.socket], None]) -> Iterator[int]:
    """A one-connection raw TCP server running script(conn) in a thread; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(WAIT)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(WAIT)
            with contextlib.suppress(OSError):
                script(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(WAIT)


def test_client_reads_reply_split_across_packets() -> None:
    def script(conn: socket.socket) -> None:
        conn.recv(1024)
        for piece in (b"\x0bMSH|^~\\&|A", b"CK\rMSA|AA|1", b"\r\x1c", b"\r"):
            conn.sendall(piece)
            time.sleep(0.02)

    with fake_server(script) as port, MLLPClient("127.0.0.1", port) as client:
        assert client.send(b"MSH|x", timeout=WAIT) == b"MSH|^~\\&|ACK\rMSA|AA|1\r"


def test_client_timeout() -> None:
    release = threading.Event()

    def script(conn: socket.socket) -> None:
        release.wait(WAIT)  # reads nothing, answers nothing

    with fake_server(script) as port:
        with MLLPClient("127.0.0.1", port) as client:
            t0 = time.monotonic()
            with pytest.raises(MLLPTimeout):
                client.send(b"MSH|x", timeout=0.2)
            assert time.monotonic() - t0 < 1.0
        release.set()


def test_client_connection_closed() -> None:
    def script(conn: socket.socket) -> None:
        conn.recv(1024)
        conn.sendall(b"\x0bhalf")

    with (
        fake_server(script) as port,
        MLLPClient("127.0.0.1", port) as client,
        pytest.raises(MLLPConnectionClosed),
    ):
        client.send(b"MSH|x", timeout=WAIT)


def test_client_malformed_reply() -> None:
    def script(conn: socket.socket) -> None:
        conn.recv(1024)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        time.sleep(0.2)

    with (
        fake_server(script) as port,
        MLLPClient("127.0.0.1", port) as client,
        pytest.raises(MLLPProtocolError),
    ):
        client.send(b"MSH|x", timeout=WAIT)


def test_client_connect_refused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with pytest.raises(MLLPConnectionClosed):
        MLLPClient("127.0.0.1", port, connect_timeout=1.0).connect()


def test_send_async_timeout() -> None:
    async def stuck(payload: bytes) -> bytes:
        await asyncio.sleep(5)
        return payload

    with ServerThread(stuck) as srv, pytest.raises(MLLPTimeout):
        asyncio.run(send_async("127.0.0.1", srv.port, b"x", timeout=0.2))


# ---------------------------------------------------------------- TLS


@pytest.fixture
def tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key, cert = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    return server_ctx, client_ctx


def test_tls_round_trip(tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls_contexts
    with ServerThread(echo, ssl=server_ctx) as srv:
        with MLLPClient(
            "127.0.0.1", srv.port, ssl=client_ctx, server_hostname="localhost"
        ) as client:
            assert client.send(b"MSH|tls", timeout=WAIT) == b"ACK|MSH|tls"
        reply = asyncio.run(send_async("127.0.0.1", srv.port, b"a", timeout=WAIT, ssl=client_ctx))
        assert reply == b"ACK|a"
