"""serve relays its Celery worker's output to its own stderr as JSON lines (worker/serve.py)."""

from __future__ import annotations

import json
import os
import sys

import pytest

from worker.serve import CeleryWorker

SCRIPT = r"""
import sys
out = sys.stdout
for i in range(3000):  # a busy worker: many lines, read in chunks
    out.write('{"level": "info", "msg": "checked", "n": %d}\n' % i)
out.write("Traceback (most recent call last):\n\n")
out.write("ValueError: the last line has no line end")
out.flush()
"""


def test_the_workers_lines_are_relayed_whole_and_in_order(
    capfd: pytest.CaptureFixture[str],
) -> None:
    worker = CeleryWorker([sys.executable, "-c", SCRIPT], dict(os.environ))
    assert worker.proc.wait(timeout=30) == 0
    worker._relay.join(timeout=30)
    assert not worker._relay.is_alive()
    worker.stop()  # closes its pipes
    lines = capfd.readouterr().err.splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert [r["n"] for r in records if "n" in r] == list(range(3000))
    wrapped = [r for r in records if r.get("logger") == "celery.worker"]
    assert [r["msg"] for r in wrapped] == [
        "Traceback (most recent call last):",
        "ValueError: the last line has no line end",
    ]
    assert worker.cause() == "ValueError: the last line has no line end"
