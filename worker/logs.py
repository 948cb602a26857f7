"""Structured logs: one JSON object per line, with an allow-list of context fields.

Only the fields named in SAFE_FIELDS are copied from a record's `extra`: message control ids,
advisory ids, codes and counts. Patient names, MRNs and birth dates are never logged, and an
`extra` field outside the list is dropped rather than risked.

Log volume is bounded whatever a sender does: a field is cut to MAX_FIELD characters and a
line's text to MAX_MESSAGE (a 5,000-character MSH-10 is logged as its first 64), and a line
repeated more than REPEAT_BURST times in REPEAT_WINDOW seconds (one per ignored ACK, refused
frame or junk run) is dropped, the next one let through saying how many were ("suppressed").
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

MAX_FIELD = 64  # characters of a context field (control ids are at most 20 in HL7 2.5.1)
MAX_MESSAGE = 500  # characters of a line's text
REPEAT_BURST = 20  # lines with the same text, logger and level let through per window
REPEAT_WINDOW = 10.0  # seconds

SAFE_FIELDS = (
    "control_id",
    "advisory",
    "advisories",
    "delivered",
    "attempt",
    "destination",  # host:port of the ordering system
    "ack",
    "err",
    "trigger",
    "peer",
    "frames",
    "bytes_in",
    "bytes_out",
    "messages",
    "suppressed",
)


def _cut(value: object, limit: int) -> object:
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}...({len(value)} chars)"
    return value


class RepeatFilter(logging.Filter):
    """Lets through at most *burst* lines with the same (logger, level, text template) per
    *window* seconds; the first line after a window with drops carries their number."""

    def __init__(
        self,
        burst: int = REPEAT_BURST,
        window: float = REPEAT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self.clock = clock
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # [start, count, dropped]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = self.clock()
        with self._lock:
            state = self._seen.get(key)
            if state is None:
                if len(self._seen) >= 10_000:  # many different lines: start afresh
                    self._seen.clear()
                state = self._seen[key] = [now, 0.0, 0.0]
            if now - state[0] >= self.window:
                if state[2]:
                    record.suppressed = int(state[2])
                state[:] = [now, 0.0, 0.0]
            state[1] += 1
            if state[1] > self.burst:
                state[2] += 1
                return False
            return True


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _cut(record.getMessage(), MAX_MESSAGE),
        }
        for name in SAFE_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                data[name] = _cut(value, MAX_FIELD)
        if record.exc_info and record.exc_info[0] is not None:
            data["error"] = record.exc_info[0].__name__  # the type only: text may hold data
        return json.dumps(data, ensure_ascii=False, default=str)


def configure(level: str = "INFO") -> None:
    """JSON lines on stderr for every ordercheck logger (serve, workers)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("celery", "kombu", "amqp", "waitress"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def wrap_line(line: str, logger: str, level: str = "warning") -> str:
    """*line* if it is a JSON object already, else a JSON log line holding it (for output a
    library prints itself, such as Celery's on the worker's stdout)."""
    if line.startswith("{") and line.endswith("}"):  # ours (JSONFormatter): not parsed again
        return line
    return json.dumps(
        {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
            "level": level,
            "logger": logger,
            "msg": line,
        },
        ensure_ascii=False,
    )
