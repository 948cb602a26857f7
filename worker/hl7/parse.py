"""A fast reader for HL7 v2 messages: framing, line ends, character sets, segments and fields.

This is the per-order hot path, so it is a plain split of the message (about 0.02 ms per order)
instead of hl7apy (20-40 ms per order here); hl7apy is kept for the structure checks and tests
where its cost is paid once. It tolerates what real feeds send (hl7-notes.md, "Traps"): LF or
CRLF segment ends, MLLP bytes left on the text, a fifth encoding character, fewer declared
delimiters, escape sequences, Z segments, missing trailing fields and MSH-18 that does not match
the bytes.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from worker.errors import HL7ParseError
from worker.hl7.escape import Delimiters

_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_LOWER_ID = re.compile(r"^[a-z][a-z0-9]{2}$")
# A message begins at MSH (any case) at the start of a line, after at most 16 bytes of junk
# (spaces, NULs, a DOS end-of-file ^Z) and a UTF-8 byte order mark, and before a delimiter.
_JUNK = b" \t\x00\x1a"
_BOM = codecs.BOM_UTF8
_MSH_HIT = re.compile(rb"(?i)msh(?=[^a-z0-9\r\n])")
_MAX_JUNK = 16
_TAIL = 24  # bytes at the end of a buffer in which an MSH may still be arriving
_FRAMING = bytes.maketrans(b"\x0b\x1c", b"\r\r")

# MSH-18 (HL7 table 0211) to Python codecs. Unknown names fall back to UTF-8, then Latin-1.
_CHARSETS = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF8": "utf-8",
    "UNICODE UTF-16": "utf-16",
    "UNICODE UTF-32": "utf-32",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp",
    "ISO IR6": "ascii",
    "ISO IR14": "shift_jis",
    "ISO IR100": "latin-1",
    "ISO IR192": "utf-8",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
    "CNS 11643-1992": "big5",
    "WINDOWS-1252": "cp1252",
    "CP1252": "cp1252",
}


@dataclass(slots=True)
class RawSegment:
    """One segment: its id and its fields as received (escape sequences still in place).

    fields[0] is the segment id; for MSH, fields[1] is MSH-1 (the field separator) so that
    fields[n] is always SEG-n.
    """

    id: str
    fields: list[str]

    def get(self, n: int) -> str:
        """SEG-n as received, or "" when the field is absent."""
        return self.fields[n] if 0 <= n < len(self.fields) else ""


@dataclass(slots=True)
class RawMessage:
    """A message split into segments, with the delimiters and character set it was read with."""

    segments: list[RawSegment]
    delimiters: Delimiters
    charset: str
    text: str
    line: int = 1  # line of the file on which the message starts (1-based), for error messages
    _index: dict[str, list[RawSegment]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for seg in self.segments:
            self._index.setdefault(seg.id, []).append(seg)

    @property
    def msh(self) -> RawSegment:
        return self.segments[0]

    def first(self, seg_id: str) -> RawSegment | None:
        found = self._index.get(seg_id)
        return found[0] if found else None

    def all(self, seg_id: str) -> list[RawSegment]:
        return self._index.get(seg_id, [])

    # -- field helpers (they unescape) -----------------------------------------------------------
    def value(self, raw: str) -> str:
        """The text of a field or component, escape sequences decoded, whitespace trimmed.

        The HL7 explicit null `""` (delete the value) reads as empty."""
        if not raw:
            return ""
        # decode() makes the same test; made here, a value without escapes costs no call (the
        # read's hot path: about 60 values per message)
        e = self.delimiters.escape
        value = (self.delimiters.decode(raw) if e and e in raw else raw).strip()
        return "" if value == '""' else value

    def repetitions(self, raw: str) -> list[str]:
        rep = self.delimiters.repetition
        return [r for r in (raw.split(rep) if rep else [raw]) if r]

    def components(self, raw: str) -> list[str]:
        comp = self.delimiters.component
        return raw.split(comp) if comp else [raw]

    def component(self, raw: str, n: int) -> str:
        """Component n (1-based) of a field (first repetition), decoded; "" when absent."""
        if not raw:
            return ""
        rep = self.delimiters.repetition
        if rep and rep in raw:
            raw = raw.split(rep, 1)[0]
        parts = self.components(raw)
        if n > len(parts):
            return ""
        sub = self.delimiters.subcomponent
        part = parts[n - 1]
        if sub and sub in part:
            part = part.split(sub, 1)[0]
        return self.value(part)


def decode_bytes(data: bytes, declared: str) -> tuple[str, str]:
    """Decode message bytes: (text, codec used).

    Strict UTF-8 is tried first whenever the bytes are not plain ASCII, because feeds often
    declare 8859/1 and send UTF-8 (hl7apy #7, the dcm4che OMI sample); then the MSH-18 codec;
    then cp1252 and Latin-1, which never fail. Never raises.
    """
    if data.isascii():
        return data.decode("ascii"), "ascii"
    name = _CHARSETS.get(declared.strip().upper(), "")
    if name in ("utf-16", "utf-32") and b"\x00" not in data:
        name = ""  # already turned into UTF-8 (clean_start), or a wrong declaration
    if name and name not in ("latin-1", "ascii", "utf-8", "cp1252"):
        try:
            return data.decode(name), name
        except (UnicodeDecodeError, LookupError):
            pass
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    for candidate in (name, "cp1252"):
        if candidate and candidate not in ("ascii", "utf-8"):
            try:
                codecs.lookup(candidate)
                return data.decode(candidate), candidate
            except (UnicodeDecodeError, LookupError):
                continue
    return data.decode("latin-1"), "latin-1"


def _declared_charset(data: bytes) -> str:
    """MSH-18 read from the raw bytes (before decoding), or ""."""
    end = len(data)
    for term in (b"\r", b"\n"):
        pos = data.find(term)
        if pos != -1:
            end = min(end, pos)
    msh = data[:end]
    if len(msh) < 4:
        return ""
    sep = msh[3:4]
    parts = msh.split(sep)
    # parts[0]="MSH", parts[1]=MSH-2, so MSH-n = parts[n-1]
    return parts[17].decode("latin-1") if len(parts) > 17 else ""


def split_messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Split a file or stream into messages: yields (line number, message bytes).

    Messages begin at MSH; MLLP framing bytes count as segment ends. Text before the first MSH
    that is not blank is yielded as its own (unreadable) message so that it gets an outcome.
    `iter_messages` does the same for a stream read in chunks.
    """
    splitter = MessageSplitter()
    yield from splitter.feed(data)
    yield from splitter.close()


class ByteStream(Protocol):
    """What `iter_messages` reads from: a binary file, sys.stdin.buffer, a socket file."""

    def read(self, size: int = -1, /) -> bytes: ...


def iter_messages(
    stream: ByteStream, chunk_size: int = 1 << 20, max_message_bytes: int | None = 64 << 20
) -> Iterator[tuple[int, bytes]]:
    """`split_messages` for a file too large to hold: reads *stream* in chunks of *chunk_size*
    bytes and yields each message as soon as the next one begins.

    Memory stays within one chunk plus one message. A message (or leading text) longer than
    *max_message_bytes* is not kept: it is yielded as b"" at its line, for the caller to report
    (MessageSplitter.oversized counts them).
    """
    splitter = MessageSplitter(max_message_bytes)
    while chunk := stream.read(chunk_size):
        yield from splitter.feed(chunk)
    yield from splitter.close()


class MessageSplitter:
    """The incremental splitter behind `split_messages` and `iter_messages`.

    feed() takes bytes as they arrive and returns the messages completed by them (a message is
    complete when the next MSH begins); close() returns the last one. Line numbers count CR, LF
    and CRLF as one line end each, across chunks.
    """

    def __init__(self, max_message_bytes: int | None = None) -> None:
        self._buf = b""  # the message in progress (from its MSH), or the text before the first
        self._started = False  # whether the text in progress begins at an MSH
        self._line = 1  # line on which the text in progress begins
        self._scan = 0  # where the search for the next MSH resumes in _buf
        self._max = max_message_bytes
        self._dropping = False  # the text in progress passed the limit: only its tail is kept
        self._skipped_lines = 0  # line ends in the bytes dropped
        self.oversized = 0  # messages yielded as b"" because they passed the limit
        # A UTF-16 stream (a Windows export) is turned into UTF-8 as it arrives: None until the
        # first bytes are seen, then the decoder or False.
        self._utf16: codecs.IncrementalDecoder | Literal[False] | None = None
        self._head = b""  # the first bytes, kept until there are enough to tell

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        if self._utf16 is None:
            self._head += chunk
            if len(self._head.lstrip(b"\x0b")) < 6:
                return []  # too few bytes yet to tell UTF-16 (close() takes them)
            chunk, self._head = self._head, b""
            self._utf16 = _utf16_decoder(chunk) or False
            if self._utf16:
                chunk = chunk.lstrip(b"\x0b")  # an MLLP start block before the UTF-16 text
        if self._utf16:
            chunk = _decode_utf16(self._utf16, chunk)
        return self._split(chunk)

    def _split(self, chunk: bytes) -> list[tuple[int, bytes]]:
        """feed() for bytes already decoded from UTF-16 where needed."""
        buf = self._buf + chunk.translate(_FRAMING)
        out: list[tuple[int, bytes]] = []
        prev = 0
        for m in _MSH_HIT.finditer(buf, self._scan):
            start = _message_start(buf, m.start())
            if start is None:
                continue  # "MSH|" inside a line of text
            if start == 0 and (self._started or self._dropping):
                continue  # the message in progress itself, or the cut of a dropped text
            self._emit(buf[prev:start], out)
            prev = start
        buf = buf[prev:]
        if self._max is not None and (self._dropping or len(buf) > self._max):
            self._drop(buf)
        else:
            self._buf = buf
        self._scan = max(0, len(self._buf) - _TAIL)  # an MSH may still be arriving
        return out

    def close(self) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        if self._utf16 is None:  # the whole input was shorter than the UTF-16 test needs
            self._utf16, head, self._head = False, self._head, b""
            out = self.feed(head)
        if self._utf16:
            out += self._split(_decode_utf16(self._utf16, b"", True))
        self._emit(self._buf, out)
        self._buf, self._scan = b"", 0
        return out

    def _emit(self, piece: bytes, out: list[tuple[int, bytes]]) -> None:
        """Hand out the text in progress, ending with *piece*, and begin the next message."""
        if self._dropping:
            out.append((self._line, b""))
            self.oversized += 1
        elif self._started or not _only_batch_header(piece):
            out.append((self._line, piece))
        self._line += self._skipped_lines + _count_lines(piece)
        self._started, self._dropping, self._skipped_lines = True, False, 0

    def _drop(self, buf: bytes) -> None:
        """Keep only the last bytes of an oversized text (an MSH may begin there)."""
        dropped, kept = buf[:-_TAIL], buf[-_TAIL:]
        self._skipped_lines += _count_lines(dropped) - (
            dropped.endswith(b"\r") and kept.startswith(b"\n")
        )
        self._buf = kept
        self._dropping = True


def _message_start(buf: bytes, msh: int) -> int | None:
    """Where the message whose MSH is at *msh* begins: at the start of its line, when only a
    byte order mark and at most 16 bytes of junk stand before the MSH; else None."""
    start = msh - 3 if msh >= 3 and buf[msh - 3 : msh] == _BOM else msh
    limit = max(0, start - _MAX_JUNK)
    while start > limit and buf[start - 1] in _JUNK:
        start -= 1
    return start if start == 0 or buf[start - 1] in b"\r\n" else None


_BATCH_SEGMENTS = (b"FHS", b"BHS", b"FTS", b"BTS")
_BATCH_IDS = frozenset(("FHS", "BHS", "FTS", "BTS"))


def _only_batch_header(piece: bytes) -> bool:
    """Whether text before the first MSH is blank or only batch segments (FHS, BHS: HL7 v2.5.1
    chapter 2.10), which carry no message of their own."""
    for line in piece.replace(_BOM, b"").replace(b"\n", b"\r").split(b"\r"):
        line = line.strip(_JUNK)
        if line and line[:3].upper() not in _BATCH_SEGMENTS:
            return False
    return True


def _count_lines(data: bytes) -> int:
    """Line ends in *data*: CR, LF and CRLF count one each."""
    return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")


def _utf16_decoder(head: bytes) -> codecs.IncrementalDecoder | None:
    """A decoder when *head* (the first bytes of a stream) is UTF-16 text, else None."""
    head = head.lstrip(b"\x0b")
    if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return codecs.getincrementaldecoder("utf-16")(errors="replace")
    if head[:6].upper() == b"M\x00S\x00H\x00":
        return codecs.getincrementaldecoder("utf-16-le")(errors="replace")
    if head[:6].upper() == b"\x00M\x00S\x00H":
        return codecs.getincrementaldecoder("utf-16-be")(errors="replace")
    return None


def _decode_utf16(decoder: codecs.IncrementalDecoder, data: bytes, final: bool = False) -> bytes:
    """UTF-16 bytes as UTF-8; what cannot be decoded becomes U+FFFD. Never raises."""
    try:
        return decoder.decode(data, final).encode("utf-8")
    except UnicodeError:
        return data.decode("latin-1").encode("utf-8")


def clean_start(data: bytes) -> bytes:
    """*data* from its MSH on: MLLP bytes, a byte order mark, UTF-16 and leading junk removed.

    Junk on the line of the MSH (an export header written without a line end) is dropped when
    an MSH followed by a delimiter stands on that first line; otherwise the bytes are returned
    stripped, for the caller to refuse.
    """
    decoder = _utf16_decoder(data)
    if decoder is not None:
        data = _decode_utf16(decoder, data.lstrip(b"\x0b"), True)
    data = data.translate(_FRAMING).strip(_JUNK + b"\r\n")
    if data.startswith(_BOM):
        data = data[len(_BOM) :].lstrip(_JUNK + b"\r\n")
    if data[:3].upper() != b"MSH":
        first = data.split(b"\r", 1)[0].split(b"\n", 1)[0][:512]
        found = _MSH_ANYWHERE.search(first)
        if found is not None:
            data = data[found.start() :]
    return data


_MSH_ANYWHERE = re.compile(rb"[Mm][Ss][Hh](?=[^A-Za-z0-9\r\n ][^A-Za-z0-9\r\n ])")


def parse_message(data: bytes, line: int = 1) -> RawMessage:
    """Read one message (bytes from MSH to the next MSH). Raises HL7ParseError naming where."""
    data = clean_start(data)
    if data[:3].upper() != b"MSH":
        raise HL7ParseError("not an HL7 v2 message: it does not begin with MSH", code="100")
    if len(data) < 8:
        raise HL7ParseError("MSH segment is truncated", "MSH", 2, code="100")
    text, charset = decode_bytes(data, _declared_charset(data))
    tail = text.rstrip("\r\n")
    if tail.endswith(("\u0d1c", "\u1c0d")):  # an MLLP end block (1C 0D) read as UTF-16
        text = tail[:-1]
    fsep = text[3]
    if fsep.isalnum() or fsep in " \r\n":
        raise HL7ParseError("MSH-1 field separator is missing or invalid", "MSH", 1)
    enc_end = text.find(fsep, 4)
    if enc_end == -1:
        enc_end = len(text.split("\r", 1)[0].split("\n", 1)[0])
    enc = _encoding_characters(text[4:enc_end])
    if not enc or any(c.isalnum() or c in " \r\n" for c in enc):
        raise HL7ParseError("MSH-2 encoding characters are missing or invalid", "MSH", 2)
    delims = Delimiters(
        field=fsep,
        component=enc[0],
        repetition=enc[1] if len(enc) > 1 else "",
        escape=enc[2] if len(enc) > 2 else "",
        subcomponent=enc[3] if len(enc) > 3 else "",
        truncation=enc[4] if len(enc) > 4 else "",
    )
    lines = text.replace("\r\n", "\r").replace("\n", "\r").split("\r")
    segments: list[RawSegment] = []
    batch_at = 0  # line of the first batch segment seen, which only trailers may follow
    batch_id = ""
    for number, line_text in enumerate(lines, start=1):
        line_text = line_text.strip("\x00\x1a")
        if not line_text.strip():
            continue  # blank line, e.g. the empty segment after a trailing CRLF
        # A segment may be indented (pretty-printed); its id may be in lower case.
        seg_text = line_text.lstrip(" \t") if fsep not in " \t" else line_text
        seg_id = seg_text[:3]
        if _LOWER_ID.match(seg_id) and seg_text[3:4] in ("", fsep):
            seg_id = seg_id.upper()
        if not _SEGMENT_ID.match(seg_id) or (len(seg_text) > 3 and seg_text[3] != fsep):
            if _wrapped_encapsulated_data(segments, line_text):
                # An OBX-5 of type ED (a base64 PDF) wrapped at a line length by its exporter
                # (dcm4che's ORU^R01-PDF sample): the line continues the value.
                prev = segments[-1]
                segments[-1] = RawSegment(prev.id, (fsep.join(prev.fields) + line_text).split(fsep))
                continue
            # Not a segment: refused, never glued onto the previous segment (a line of junk
            # after MSH ended up in MSH-12, and in the ACK's). The line is named, not quoted.
            raise HL7ParseError(
                f"line {number} of the message is not a segment (a 3-character segment id then "
                f"{fsep!r} expected)",
                code="100",
            )
        if seg_id in _BATCH_IDS:
            batch_at = batch_at or number
            batch_id = batch_id or seg_id
            continue  # a batch trailer (BTS, FTS) after the last message of a batch
        if batch_at:
            # FHS/BHS/FTS/BTS only stand around messages (HL7 v2.5.1 2.10.3); inside one they
            # mean a broken batch (python-hl7's sample_bad_batch, sample_bad_file).
            raise HL7ParseError(
                f"batch segment {batch_id} inside a message (line {batch_at})", batch_id, code="100"
            )
        if seg_id == "MSH":
            if segments:
                raise HL7ParseError("a second MSH inside one message", "MSH", None)
            parts = seg_text.split(fsep)
            fields = ["MSH", fsep, *parts[1:]]
        else:
            fields = seg_text.split(fsep)
            fields[0] = seg_id
        segments.append(RawSegment(seg_id, fields))
    message = RawMessage(segments, delims, charset, text, line)
    _check_msh(message)
    return message


_BASE64_LINE = re.compile(r"[A-Za-z0-9+/]+=*(?:[|^]|$)")


def _wrapped_encapsulated_data(segments: list[RawSegment], line: str) -> bool:
    """Whether *line* continues base64 data of the OBX before it (OBX-2 ED, value unfinished)."""
    if not segments or segments[-1].id != "OBX" or segments[-1].get(2) != "ED":
        return False
    return len(segments[-1].fields) == 6 and _BASE64_LINE.match(line) is not None


def _encoding_characters(enc: str) -> str:
    r"""MSH-2, with the usual characters put back when a copy doubled one of them: `^~\\&`
    (from a program's string literal) and `^\~\&` (from Markdown source) mean `^~\&`."""
    standard = "^~\\&"
    if len(enc) > 4 and set(enc) == set(standard):
        return standard
    if len(enc) > 5 and set(enc) == set(standard + enc[-1]) and enc[-1] not in standard:
        return standard + enc[-1]
    return enc


def _check_msh(message: RawMessage) -> None:
    msh = message.msh
    if not message.component(msh.get(9), 1):
        raise HL7ParseError("MSH-9 message type is missing", "MSH", 9, code="101")
    if not message.value(msh.get(10)):
        raise HL7ParseError("MSH-10 message control id is missing", "MSH", 10, code="101")


def message_type(code: str, event: str, structure: str) -> tuple[str, str, str]:
    """MSH-9 components as (message code, trigger event, structure), upper case.

    Some feeds send the structure in the first component (`ORM_O01`), or only the code (`ORM`):
    `ORM_O01` with no event is read as ORM^O01^ORM_O01.
    """
    code, event, structure = code.strip().upper(), event.strip().upper(), structure.strip().upper()
    if "_" in code:
        head, _, tail = code.partition("_")
        code, event, structure = head, event or tail, structure or f"{head}_{tail}"
    return code, event, structure


@dataclass(frozen=True, slots=True)
class MSHPeek:
    """MSH fields read from bytes that may not parse: for the ACK or error of bad input."""

    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    message_type: str = ""  # "ORM^O01"
    trigger_event: str = ""
    control_id: str = ""
    processing_id: str = ""
    version: str = ""
    enhanced: bool = False
    exact_control_id: str = ""  # MSH-10 unescaped, untrimmed and uncut: what MSA-2 echoes


def peek_msh(data: bytes) -> MSHPeek:
    """Best-effort MSH fields of *data*; empty values where there is nothing readable."""
    head = clean_start(data[:4096])[:2048]
    head = head.split(b"\r", 1)[0].split(b"\n", 1)[0]
    if head[:3].upper() != b"MSH" or len(head) < 5:
        return MSHPeek()
    text = head.decode("latin-1")
    sep, comp = text[3], text[4]
    fields = ["MSH", sep, *text.split(sep)[1:]]

    def get(n: int, c: int = 1) -> str:
        if n >= len(fields):
            return ""
        parts = fields[n].split(comp) if comp not in (sep, " ") else [fields[n]]
        return parts[c - 1].strip()[:64] if len(parts) >= c else ""

    code, event, _ = message_type(get(9), get(9, 2), get(9, 3))
    kind = "^".join(p for p in (code, event) if p)
    enc = _encoding_characters(fields[2] if len(fields) > 2 else "")
    escape = enc[2] if len(enc) > 2 and enc[2] not in (sep, comp) else ""
    exact = fields[10] if len(fields) > 10 else ""
    if escape:
        exact = Delimiters(
            sep,
            comp,
            enc[1] if len(enc) > 1 else "",
            escape,
            enc[3] if len(enc) > 3 else "",
            enc[4] if len(enc) > 4 else "",
        ).decode(exact)
    return MSHPeek(
        get(3),
        get(4),
        get(5),
        get(6),
        kind,
        event,
        get(10),
        get(11),
        get(12),
        bool(get(15) or get(16)),
        exact,
    )
