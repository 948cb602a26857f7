"""Structured logs: one JSON object per line, with an allow-list of context fields.

Only the fields named in SAFE_FIELDS are copied from a record's `extra`: message control ids,
advisory ids, codes and counts. Patient names, MRNs and birth dates are never logged, and an
`extra` field outside the list is dropped rather than risked.
"""

from __future__ import annotations

import json
import logging
import time

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
)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in SAFE_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                data[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            data["error"] = record.exc_info[0].__name__  # the type only: text may hold data
        return json.dumps(data, ensure_ascii=False, default=str)


def configure(level: str = "INFO") -> None:
    """JSON lines on stderr for every ordercheck logger (serve, workers)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter())
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
