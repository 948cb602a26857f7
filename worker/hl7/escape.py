"""HL7 v2 escape sequences (HL7 v2.5.1 chapter 2.7): decoding received text, encoding ours.

Handled: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ (delimiters), \\P\\ (truncation, 2.7), \\.br\\ and \\.sp\\
(line breaks), \\Xhh..\\ (hex bytes), \\H\\ \\N\\ (highlighting, dropped), \\Zxx\\ \\Cxx\\ \\Mxx\\
(locally defined or charset switches, dropped). An unterminated or unknown sequence is kept as
literal text, never an error (python-hl7 #84).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Control characters (C0 and DEL) other than the line ends: never copied onto the wire raw.
# 0x0B and 0x1C are MLLP's frame bytes (a 0x1C in a field ends the frame early, a 0x0B starts
# a new one), 0x00 reaches the receiver's C strings; each is written as a hex escape \Xhh\.
CONTROL = re.compile(r"[\x00-\x09\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The separators of one message, from MSH-1 and MSH-2."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    def encode(self, text: str) -> str:
        """Escape *text* so it can stand in a field of a message with these delimiters.

        Line ends become \\.br\\; every other control character becomes \\Xhh\\ (dropped when
        there is no escape character), so no byte below 0x20 but the segment end is sent.
        """
        e = self.escape
        if not e:
            return CONTROL.sub("", text.replace("\r", " ").replace("\n", " "))
        out = text.replace(e, f"{e}E{e}")
        pairs = [
            (self.field, "F"),
            (self.component, "S"),
            (self.repetition, "R"),
            (self.subcomponent, "T"),
        ]
        if self.truncation:
            pairs.append((self.truncation, "P"))
        for char, code in pairs:
            if char:
                out = out.replace(char, f"{e}{code}{e}")
        out = out.replace("\r\n", "\n").replace("\r", "\n").replace("\n", f"{e}.br{e}")
        if CONTROL.search(out):
            out = CONTROL.sub(lambda m: f"{e}X{ord(m.group()):02X}{e}", out)
        return out

    def decode(self, text: str) -> str:
        """Replace the escape sequences of *text* by the characters they stand for."""
        e = self.escape
        if not e or e not in text:
            return text
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            ch = text[i]
            if ch != e:
                out.append(ch)
                i += 1
                continue
            end = text.find(e, i + 1)
            if end == -1:  # unterminated: keep the rest literally
                out.append(text[i:])
                break
            seq = text[i + 1 : end]
            rendered = self._render(seq)
            if rendered is None:  # not an escape we know: keep the escape char literally
                out.append(ch)
                i += 1
                continue
            out.append(rendered)
            i = end + 1
        return "".join(out)

    def _render(self, seq: str) -> str | None:
        simple = {
            "F": self.field,
            "S": self.component,
            "R": self.repetition,
            "E": self.escape,
            "T": self.subcomponent,
            "P": self.truncation,
        }
        if seq in simple:
            return simple[seq]
        if seq in ("H", "N"):
            return ""
        low = seq.lower()
        if low.startswith(".br") or low.startswith(".sp"):
            return "\n"
        if low.startswith(".") and len(seq) <= 6:  # other formatting commands (.in, .ti, .fi ...)
            return " "
        if seq[:1] == "X" and len(seq) > 1:
            hexpart = seq[1:]
            if len(hexpart) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in hexpart):
                raw = bytes.fromhex(hexpart)
                try:
                    return raw.decode("utf-8")
                except UnicodeDecodeError:
                    return raw.decode("latin-1")
            return None
        if seq[:1] in ("Z", "C", "M") and len(seq) > 1:
            return ""
        return None


DEFAULT_DELIMITERS = Delimiters()
