"""MLLP (Minimal Lower Layer Protocol) transport: frames of bytes over TCP, no HL7 knowledge.

A frame is ``0x0B <payload> 0x1C 0x0D``. This module offers:

- ``frame()`` and ``FrameDecoder``: build frames; decode them incrementally from arbitrary packets.
- ``MLLPServer``: asyncio listener; one task per connection, frames handled in order per connection.
- ``MLLPClient`` (blocking) and ``send_async()`` (one-shot): send a frame, read one reply frame.

Exceptions (under worker.errors.OrdercheckError)::

    MLLPError                  a send through MLLP failed
     ├── MLLPTimeout           no complete reply within the timeout
     ├── MLLPConnectionClosed  could not connect, or the peer closed / reset the connection
     └── MLLPProtocolError     the reply was not a well-formed MLLP frame

Logs go to the "ordercheck.mllp" logger and carry peer addresses and byte counts, never payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import ssl as _ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

from worker.errors import OrdercheckError

__all__ = [
    "CARRIAGE_RETURN",
    "DEFAULT_MAX_FRAME_BYTES",
    "END_BLOCK",
    "START_BLOCK",
    "FrameDecoder",
    "FrameError",
    "FrameErrorKind",
    "FrameEvent",
    "MLLPClient",
    "MLLPConnectionClosed",
    "MLLPError",
    "MLLPProtocolError",
    "MLLPServer",
    "MLLPTimeout",
    "frame",
    "send_async",
]

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
DEFAULT_MAX_FRAME_BYTES = 1024 * 1024

_SB = START_BLOCK[0]
_EB = END_BLOCK[0]
_BETWEEN_FRAMES_OK = frozenset(b" \t\r\n\f")  # whitespace ignored outside frames
_READ_CHUNK = 64 * 1024

logger = logging.getLogger("ordercheck.mllp")


class MLLPError(OrdercheckError):
    """Raised when a send through MLLP fails."""


class MLLPTimeout(MLLPError):
    """Raised when no complete reply frame arrives within the timeout."""


class MLLPConnectionClosed(MLLPError):
    """Raised when the connection cannot be made or the peer closes or resets it."""


class MLLPProtocolError(MLLPError):
    """Raised when the peer's reply is not a well-formed MLLP frame (junk, oversize)."""


def frame(message: bytes) -> bytes:
    """Wrap a payload in an MLLP frame: 0x0B, the payload, 0x1C 0x0D."""
    return START_BLOCK + message + END_BLOCK + CARRIAGE_RETURN


class FrameErrorKind(enum.StrEnum):
    """What went wrong while decoding."""

    OVERSIZE = "oversize"  # a frame payload exceeded max_frame_bytes; discarded
    JUNK = "junk"  # bytes outside a frame, or a frame cut short by a new 0x0B; discarded


@dataclass(frozen=True, slots=True)
class FrameError:
    """A decoding error event (not an exception). ``detail`` never contains payload bytes."""

    kind: FrameErrorKind
    detail: str


FrameEvent = bytes | FrameError
"""One decoder event: a complete frame payload, or a FrameError."""


class _State(enum.Enum):
    IDLE = enum.auto()  # between frames
    FRAME = enum.auto()  # inside a frame, buffering
    DISCARD = enum.auto()  # inside an oversize frame, dropping bytes until 0x1C
    JUNK = enum.auto()  # in a junk run, dropping bytes until 0x0B


class FrameDecoder:
    """Incremental MLLP decoder: feed it packets as they arrive, get complete frames back.

    - A payload is emitted as soon as its 0x1C arrives; the trailing 0x0D is optional.
    - CR, LF, space, tab and form feed between frames are ignored silently.
    - Any other byte between frames starts a junk run: one JUNK event, then bytes are dropped
      until the next 0x0B.
    - A 0x0B inside a frame drops the unfinished frame (one JUNK event) and starts a new frame.
    - A payload longer than ``max_frame_bytes`` gives one OVERSIZE event as soon as the limit is
      crossed; its bytes are dropped up to its 0x1C (or a new 0x0B), then decoding resumes.

    The decoder never holds more than ``max_frame_bytes`` bytes of payload.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        """max_frame_bytes: largest accepted payload in bytes, framing bytes excluded."""
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be at least 1")
        self.max_frame_bytes = max_frame_bytes
        self._state = _State.IDLE
        self._buf = bytearray()

    @property
    def in_frame(self) -> bool:
        """True when a frame has started but its 0x1C has not arrived yet."""
        return self._state in (_State.FRAME, _State.DISCARD)

    @property
    def buffered(self) -> int:
        """Payload bytes held for the unfinished frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[FrameEvent]:
        """Consume one packet; return the events it completes, in order."""
        events: list[FrameEvent] = []
        pos, end = 0, len(data)
        while pos < end:
            if self._state is _State.IDLE:
                byte = data[pos]
                pos += 1
                if byte == _SB:
                    self._state = _State.FRAME
                elif byte not in _BETWEEN_FRAMES_OK:
                    events.append(FrameError(FrameErrorKind.JUNK, "bytes outside an MLLP frame"))
                    self._state = _State.JUNK
            elif self._state is _State.JUNK:
                start = data.find(START_BLOCK, pos)
                if start < 0:
                    pos = end
                else:
                    self._state, pos = _State.FRAME, start + 1
            else:
                stop = data.find(END_BLOCK, pos)
                restart = data.find(START_BLOCK, pos, end if stop < 0 else stop)
                if restart >= 0:  # new 0x0B before the end of this frame: resync on it
                    if self._state is _State.FRAME:
                        events.append(
                            FrameError(FrameErrorKind.JUNK, "frame cut short by a new start block")
                        )
                    self._buf.clear()
                    self._state, pos = _State.FRAME, restart + 1
                    continue
                chunk_end = end if stop < 0 else stop
                if self._state is _State.FRAME:
                    if len(self._buf) + (chunk_end - pos) > self.max_frame_bytes:
                        events.append(
                            FrameError(
                                FrameErrorKind.OVERSIZE,
                                f"frame exceeds {self.max_frame_bytes} bytes",
                            )
                        )
                        self._buf = bytearray()
                        self._state = _State.DISCARD
                    else:
                        self._buf += data[pos:chunk_end]
                if stop < 0:
                    pos = end
                else:
                    if self._state is _State.FRAME:
                        events.append(bytes(self._buf))
                    self._buf = bytearray()
                    self._state, pos = _State.IDLE, stop + 1
        return events


FrameHandler = Callable[[bytes], Awaitable[bytes | None]]
ErrorHandler = Callable[[FrameError], Awaitable[bytes | None]]


@dataclass(eq=False)
class _Connection:
    task: asyncio.Task[None]
    peer: str
    host: str = ""  # the peer's address, without the port (max_per_peer counts by it)
    busy: bool = False  # a handler (or its reply write) is in progress


class MLLPServer:
    """Asyncio MLLP listener.

    Each connection gets its own task: frames on one connection are handled one at a time, in
    order, and each reply is written as one whole frame (one ``write()``, then ``drain()``); a
    slow or dead peer only stalls its own connection.

    - ``handler(payload)`` returns the reply payload to frame and send, or None to send nothing.
    - ``on_error(error)`` is awaited for each decoding error; it returns a reply payload or None,
      and the connection stays open; raising closes the connection. Without ``on_error``: junk is
      dropped silently and an oversize frame closes the connection.
    - A handler or ``on_error`` exception is logged (type only, never the message) and closes
      that connection only.
    - Connections idle for ``idle_timeout`` seconds (no frame received or begun, or a reply not
      drained in that time) are closed; whitespace and junk between frames do not count as
      activity, so a peer cannot hold a connection open with them. Connections beyond
      ``max_connections``, or beyond ``max_per_peer`` from one address, are closed at once, so
      one client cannot take every slot.
    """

    def __init__(
        self,
        handler: FrameHandler,
        *,
        on_error: ErrorHandler | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        idle_timeout: float | None = 300.0,
        max_connections: int = 100,
        ssl: _ssl.SSLContext | None = None,
        max_per_peer: int | None = None,
    ) -> None:
        """port: TCP port, 0 for an ephemeral one (see ``port`` after start);
        max_frame_bytes: largest payload in bytes; idle_timeout: seconds, None for never;
        max_per_peer: connections from one address at once, None for no limit of its own."""
        self._handler = handler
        self._on_error = on_error
        self.host = host
        self._requested_port = port
        self.max_frame_bytes = max_frame_bytes
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_per_peer = max_per_peer
        self._ssl = ssl
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._closing = False
        self._closed = asyncio.Event()

    @property
    def port(self) -> int:
        """The bound TCP port (the ephemeral one when constructed with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connection_count(self) -> int:
        """Open connections right now."""
        return len(self._connections)

    async def start(self) -> None:
        """Bind and start accepting connections."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._on_connect,
            self.host,
            self._requested_port,
            ssl=self._ssl,
            ssl_handshake_timeout=self.idle_timeout if self._ssl is not None else None,
        )
        logger.info("listening on %s:%d", self.host, self.port)

    async def serve_forever(self) -> None:
        """Start if needed and return once ``close()`` has completed."""
        await self.start()
        await self._closed.wait()

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, let in-flight handlers finish (up to ``grace`` seconds), close all.

        Frames received but not yet handled are dropped unanswered, so the sender resends them.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            if not conn.busy:
                conn.task.cancel()
        tasks = [conn.task for conn in self._connections]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self._closed.set()
        logger.info("closed")

    async def __aenter__(self) -> MLLPServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        host = str(peername[0]) if isinstance(peername, tuple) else peer
        refusal = ""
        if self._closing:
            refusal = "closing"
        elif len(self._connections) >= self.max_connections:
            refusal = "too many connections"
        elif self.max_per_peer is not None and (
            sum(1 for c in self._connections if c.host == host) >= self.max_per_peer
        ):
            refusal = "too many connections from this address"
        if refusal:
            logger.warning("refused %s: %s", peer, refusal)
            await _close_writer(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        conn = _Connection(task=task, peer=peer, host=host)
        self._connections.add(conn)
        try:
            await self._serve(conn, reader, writer)
        except asyncio.CancelledError:
            logger.info("%s: closed by server shutdown", peer)
        finally:
            self._connections.discard(conn)
            await _close_writer(writer)

    async def _serve(
        self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        decoder = FrameDecoder(self.max_frame_bytes)
        bytes_in = bytes_out = frames = 0
        logger.debug("%s: connected", conn.peer)
        reason = "peer closed"
        loop = asyncio.get_running_loop()
        # Reset by frames only (received, or in progress): not by whitespace or junk between them.
        deadline = None if self.idle_timeout is None else loop.time() + self.idle_timeout
        try:
            while not self._closing:
                try:
                    wait = None if deadline is None else max(0.0, deadline - loop.time())
                    data = await asyncio.wait_for(reader.read(_READ_CHUNK), wait)
                except TimeoutError:
                    reason = f"idle for {self.idle_timeout} s"
                    return
                if not data:
                    return
                bytes_in += len(data)
                events = decoder.feed(data)
                progress = decoder.in_frame or any(isinstance(ev, bytes) for ev in events)
                for event in events:
                    if self._closing:
                        reason = "server closing"
                        return
                    conn.busy = True
                    if isinstance(event, FrameError):
                        logger.warning("%s: %s", conn.peer, event.detail)
                        if self._on_error is None:
                            if event.kind is FrameErrorKind.OVERSIZE:
                                reason = "oversize frame"
                                return
                            conn.busy = False
                            continue
                        reply = await self._on_error(event)
                    else:
                        frames += 1
                        logger.debug("%s: frame of %d bytes", conn.peer, len(event))
                        reply = await self._handler(event)
                    if reply is not None:
                        out = frame(reply)
                        writer.write(out)
                        await asyncio.wait_for(writer.drain(), self.idle_timeout)
                        bytes_out += len(out)
                    conn.busy = False
                if progress and self.idle_timeout is not None:  # after the replies: from now
                    deadline = loop.time() + self.idle_timeout
            reason = "server closing"
        except TimeoutError:
            reason = "reply not drained in time"
        except (ConnectionError, OSError) as exc:
            reason = f"connection error {type(exc).__name__}"
        except Exception as exc:  # a handler bug must not kill the server
            reason = f"handler raised {type(exc).__name__}"
            logger.error(
                "%s: handler raised %s; closing connection (frames=%d)",
                conn.peer,
                type(exc).__name__,
                frames,
            )
        finally:
            logger.info(
                "%s: closing (%s); frames=%d bytes_in=%d bytes_out=%d",
                conn.peer,
                reason,
                frames,
                bytes_in,
                bytes_out,
            )


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


class MLLPClient:
    """Blocking MLLP client: one request frame out, one reply frame back.

    Connects on ``__enter__`` (or the first ``send``). After a timeout or protocol error the
    connection is closed, so a late reply can never be taken for the next one; the next ``send``
    reconnects. Connect and socket errors raise ``MLLPConnectionClosed``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float = 10.0,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        """connect_timeout: seconds; server_hostname: TLS name to check, default ``host``."""
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self._ssl = ssl
        self._server_hostname = server_hostname or host
        self.max_frame_bytes = max_frame_bytes
        self._sock: socket.socket | None = None

    def connect(self) -> None:
        """Open the connection if it is not open."""
        if self._sock is not None:
            return
        try:
            sock = socket.create_connection((self.host, self.port), self.connect_timeout)
        except TimeoutError as exc:
            raise MLLPTimeout(f"connect to {self.host}:{self.port} timed out") from exc
        except OSError as exc:
            raise MLLPConnectionClosed(
                f"cannot connect to {self.host}:{self.port}: {type(exc).__name__}"
            ) from exc
        if self._ssl is not None:
            try:
                sock = self._ssl.wrap_socket(sock, server_hostname=self._server_hostname)
            except TimeoutError as exc:
                sock.close()
                raise MLLPTimeout("TLS handshake timed out") from exc
            except OSError as exc:
                sock.close()
                raise MLLPConnectionClosed(f"TLS handshake failed: {exc}") from exc
        self._sock = sock

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def __enter__(self) -> MLLPClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def send(self, message: bytes, timeout: float = 30.0) -> bytes:
        """Send one frame and return the payload of the reply frame.

        timeout: seconds for the whole exchange (write and complete reply).
        """
        self.connect()
        sock = self._sock
        assert sock is not None
        deadline = time.monotonic() + timeout
        decoder = FrameDecoder(self.max_frame_bytes)
        try:
            sock.settimeout(max(timeout, 1e-3))
            sock.sendall(frame(message))
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                data = sock.recv(_READ_CHUNK)
                if not data:
                    raise MLLPConnectionClosed("connection closed before a complete reply")
                events = decoder.feed(data)
                if events:
                    return self._first_reply(events)
        except TimeoutError as exc:
            self.close()
            raise MLLPTimeout(f"no complete reply within {timeout} s") from exc
        except MLLPError:
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise MLLPConnectionClosed(f"connection failed: {type(exc).__name__}") from exc

    def _first_reply(self, events: list[FrameEvent]) -> bytes:
        first = events[0]
        if isinstance(first, FrameError):
            raise MLLPProtocolError(f"malformed reply: {first.detail}")
        if len(events) > 1:
            logger.warning(
                "%s:%d sent more than one reply frame; reconnecting", self.host, self.port
            )
            self.close()
        return first


async def send_async(
    host: str,
    port: int,
    message: bytes,
    timeout: float,
    ssl: _ssl.SSLContext | None = None,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> bytes:
    """Connect, send one frame, return the reply payload, close.

    timeout: seconds for the whole exchange, connect included.
    """
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_connection(host, port, ssl=ssl)
            except OSError as exc:
                raise MLLPConnectionClosed(
                    f"cannot connect to {host}:{port}: {type(exc).__name__}"
                ) from exc
            writer.write(frame(message))
            await writer.drain()
            decoder = FrameDecoder(max_frame_bytes)
            while True:
                data = await reader.read(_READ_CHUNK)
                if not data:
                    raise MLLPConnectionClosed("connection closed before a complete reply")
                events = decoder.feed(data)
                if events:
                    if isinstance(events[0], FrameError):
                        raise MLLPProtocolError(f"malformed reply: {events[0].detail}")
                    return events[0]
    except TimeoutError as exc:
        raise MLLPTimeout(f"no complete reply within {timeout} s") from exc
    except OSError as exc:
        raise MLLPConnectionClosed(f"connection failed: {type(exc).__name__}") from exc
    finally:
        if writer is not None:
            await _close_writer(writer)
