#!/usr/bin/env python3
"""One order end to end on an *installed* ordercheck in Redis mode, as a new user runs it.

    <venv>/bin/python tests/support/bare_e2e.py [SEED]

Runs the `ordercheck` command next to this interpreter (the venv's), not the checkout: CI installs
the checkout with no extras into a new venv (`pip install -c constraints.txt .`) and runs this
with that venv's python. It starts a fake ordering system, `ordercheck serve` on the real Redis
(127.0.0.1:6379, database ORDERCHECK_E2E_REDIS_DB, default 1) with a real Celery worker, sends
the seed order with `ordercheck send`, and waits for the advisory. The order gets a new control
id, placer number and MRN each run, so earlier runs' keys in that database do not matter.

Exit 0 when the advisory arrives; 1, with the server's log, when the server does not start, the
ACK is not AA, or no advisory arrives within ADVISORY_TIMEOUT seconds. Everything it starts is
stopped before it exits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from worker.testing import FakeOrderingSystem, free_port

START_TIMEOUT = 90.0  # seconds for `serve` to say it is listening (its worker ready)
ADVISORY_TIMEOUT = 60.0  # seconds from the ACK to the advisory at the ordering system
SEED = Path(__file__).resolve().parents[2] / "seeds" / "01-epic-ct-femur-left.hl7"


def fail(message: str, log: Path | None = None) -> int:
    print(f"bare_e2e: FAILED: {message}", file=sys.stderr)
    if log is not None and log.exists():
        print("---- ordercheck serve log (last 40 lines) ----", file=sys.stderr)
        print("\n".join(log.read_text(errors="replace").splitlines()[-40:]), file=sys.stderr)
    return 1


def unique_order(seed: Path) -> tuple[bytes, str]:
    """The seed with a fresh MSH-10, placer number (ORC-2/OBR-2) and MRN; and the placer."""
    tag = uuid.uuid4().hex[:10].upper()
    text = seed.read_bytes()
    msh10 = text.split(b"\r")[0].split(b"|")[9]
    placer = f"P{tag}"
    text = text.replace(msh10, f"E2E{tag}".encode(), 1)
    for seg in text.split(b"\r"):
        if seg.startswith(b"ORC|"):
            old_placer = seg.split(b"|")[2].split(b"^")[0]
            text = text.replace(old_placer, placer.encode())
        if seg.startswith(b"PID|"):
            old_mrn = seg.split(b"|")[3].split(b"^")[0]
            text = text.replace(old_mrn, f"M{tag}".encode())
    return text, placer


def wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def main(argv: list[str]) -> int:
    seed = Path(argv[0]) if argv else SEED
    db = int(os.environ.get("ORDERCHECK_E2E_REDIS_DB", "1"))
    ordercheck = Path(sys.executable).parent / "ordercheck"
    if not ordercheck.exists():
        return fail(f"no ordercheck command next to {sys.executable}: install the checkout first")
    work = Path(tempfile.mkdtemp(prefix="ordercheck-e2e-"))
    log = work / "serve.log"
    order, placer = unique_order(seed)
    (work / "order.hl7").write_bytes(order)
    ris = FakeOrderingSystem().start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERCHECK_")}
    env.update(
        ORDERCHECK_REDIS_URL=f"redis://127.0.0.1:6379/{db}",
        ORDERCHECK_LISTEN_HOST="127.0.0.1",
        ORDERCHECK_LISTEN_PORT=str(port),
        ORDERCHECK_ADVISORY_HOST="127.0.0.1",
        ORDERCHECK_ADVISORY_PORT=str(ris.port),
        ORDERCHECK_WORKERS="1",
        ORDERCHECK_DELIVERY_BACKOFF="0.2",
    )
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [str(ordercheck), "serve"],
            env=env,
            cwd=work,  # not the checkout: the installed package must be the one that runs
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        listening = wait_for(
            lambda: serve.poll() is not None or b"ordercheck: listening on" in log.read_bytes(),
            START_TIMEOUT,
        )
        if serve.poll() is not None:
            return fail(f"ordercheck serve exited with status {serve.returncode}", log)
        if not listening:
            return fail(f"ordercheck serve did not listen within {START_TIMEOUT:g} s", log)
        sent = subprocess.run(
            [str(ordercheck), "send", str(work / "order.hl7"), "--port", str(port)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        print(sent.stdout.strip())
        if sent.returncode != 0 or ": AA " not in sent.stdout:
            return fail(f"the order was not ACKed AA: {sent.stdout}{sent.stderr}", log)
        if not wait_for(lambda: bool(ris.for_placer(placer)), ADVISORY_TIMEOUT):
            return fail(f"no advisory for order {placer} within {ADVISORY_TIMEOUT:g} s", log)
        advisory = ris.for_placer(placer)[0]
        print(f"bare_e2e: OK: advisory {advisory.control_id} for order {placer} delivered")
        return 0
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                serve.wait(40)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(serve.pid, signal.SIGKILL)  # the Celery worker and pool, if left
        with contextlib.suppress(subprocess.TimeoutExpired):
            serve.wait(5)
        ris.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
