"""End to end over real sockets: listener, a real Celery worker on the real Redis, and a fake
ordering system. Marked slow; each wait is bounded."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
import redis

from tests.conftest import real_redis
from tests.hl7build import order_message
from tests.support import Advisory, FakeOrderingSystem, Serve, wait_until

pytestmark = pytest.mark.slow

DB = int(os.environ.get("ORDERCHECK_TEST_REDIS_DB_E2E", "12"))
URL = f"redis://127.0.0.1:6379/{DB}"


@pytest.fixture(scope="module")
def ris() -> Iterator[FakeOrderingSystem]:
    system = FakeOrderingSystem().start()
    yield system
    system.stop()


@pytest.fixture(scope="module")
def serve(ris: FakeOrderingSystem) -> Iterator[Serve]:
    with real_redis(DB) as url:
        service = Serve(
            {
                "ORDERCHECK_REDIS_URL": url,
                "ORDERCHECK_ADVISORY_HOST": "127.0.0.1",
                "ORDERCHECK_ADVISORY_PORT": str(ris.port),
                "ORDERCHECK_WORKERS": "1",
            }
        )
        try:
            yield service.start()
        finally:
            service.stop()


def _rating(advisory: Advisory) -> str:
    for seg in advisory.body.split(b"\r"):
        if seg.startswith(b"OBX|") and b"76515-6" in seg:
            return seg.split(b"|")[5].split(b"^")[0].decode()
    return ""


def test_ct_first_is_acked_fast_flagged_and_delivered(
    serve: Serve, ris: FakeOrderingSystem
) -> None:
    msg = order_message(
        control_id="E2E-CT1",
        placer="PCT1",
        patient_id="E2E1^^^HOSP^MR",
        reason="^Left thigh mass 6 cm, deep",
    )
    code, control, _ = serve.send(msg)
    assert (code, control) == ("AA", "E2E-CT1")
    wait_until(lambda: ris.for_placer("PCT1"), 30, "the advisory")
    advisory = ris.for_placer("PCT1")[0]
    assert _rating(advisory) == "not-appropriate"
    assert b"73720^" in advisory.body and b"CT_BEFORE_MRI" in advisory.body


def test_workers_run_below_the_listener_priority(serve: Serve) -> None:
    """ORDERCHECK_WORKER_NICE (5): the listener's ACKs go first on a shared host."""
    listener = os.getpriority(os.PRIO_PROCESS, serve.pid)
    workers = serve.pool_pids()
    assert workers
    for pid in workers:
        assert os.getpriority(os.PRIO_PROCESS, pid) == listener + 5


def test_biopsy_after_mri_result_is_not_flagged(serve: Serve, ris: FakeOrderingSystem) -> None:
    result = order_message(
        control_id="E2E-ORU1",
        msg_type="ORU^R01",
        placer="PMRI",
        patient_id="E2E2^^^HOSP^MR",
        procedure="73720^MRI LE WO W^CPT4",
        reason="^left thigh mass",
    )
    assert serve.send(result)[0] == "AA"
    biopsy = order_message(
        control_id="E2E-BX1",
        placer="PBX1",
        patient_id="E2E2^^^HOSP^MR",
        procedure="20206^BIOPSY MUSCLE PERCUTANEOUS^CPT4",
        reason="^US guided core biopsy left thigh mass 6 cm",
    )
    assert serve.send(biopsy)[0] == "AA"
    wait_until(lambda: ris.for_placer("PBX1"), 30, "the biopsy advisory")
    wait_until(
        lambda: _rating(ris.for_placer("PBX1")[-1]) == "appropriate",
        30,
        "the biopsy judged against the MRI result",
    )


def test_resend_gets_the_same_ack_and_one_advisory(serve: Serve, ris: FakeOrderingSystem) -> None:
    msg = order_message(
        control_id="E2E-DUP",
        placer="PDUP",
        patient_id="E2E3^^^HOSP^MR",
        reason="^Right thigh lump 7 cm",
    )
    first = serve.send(msg)[2]
    second = serve.send(msg)[2]
    assert first == second
    wait_until(lambda: ris.for_placer("PDUP"), 30, "the advisory")
    other = order_message(
        control_id="E2E-AFTER-DUP",
        placer="PAD",
        patient_id="E2E3b^^^HOSP^MR",
        reason="^Right thigh lump 7 cm",
    )
    serve.send(other)
    wait_until(lambda: ris.for_placer("PAD"), 30, "a later advisory")
    assert len(ris.for_placer("PDUP")) == 1


def test_garbage_frame_is_answered_and_the_connection_still_works(serve: Serve) -> None:
    with serve.client() as c:
        reply = c.send(b"THIS IS NOT HL7", timeout=5)
        assert b"MSA|AE" in reply and b"ERR|" in reply
        ok = c.send(
            order_message(
                control_id="E2E-AFTER-GARBAGE",
                placer="PAG",
                patient_id="E2E4^^^HOSP^MR",
                reason="^thigh mass",
            ),
            timeout=5,
        )
        assert b"MSA|AA|E2E-AFTER-GARBAGE" in ok


def test_ordering_system_down_then_up(serve: Serve, ris: FakeOrderingSystem) -> None:
    ris.stop()
    try:
        msg = order_message(
            control_id="E2E-DOWN",
            placer="PDOWN",
            patient_id="E2E5^^^HOSP^MR",
            reason="^Left thigh mass 8 cm",
        )
        assert serve.send(msg)[0] == "AA"
        r = redis.Redis.from_url(URL)
        wait_until(
            lambda: any(
                b"ConnectionRefused" in (r.hget(k, "delivery_error") or b"")
                for k in r.scan_iter("oc:adv:*")
                if not k.endswith(b":audit") and r.type(k) == b"hash"
            ),
            30,
            "a failed delivery attempt",
        )
    finally:
        ris.start()
    wait_until(lambda: ris.for_placer("PDOWN"), 30, "delivery after the system is back")
    assert len({a.control_id for a in ris.for_placer("PDOWN")}) == 1


def test_worker_killed_mid_task_still_delivers_once(serve: Serve, ris: FakeOrderingSystem) -> None:
    ris.delay = 3.0  # the worker waits for this ACK: kill it then
    try:
        msg = order_message(
            control_id="E2E-KILL",
            placer="PKILL",
            patient_id="E2E6^^^HOSP^MR",
            reason="^Left thigh mass 9 cm",
        )
        assert serve.send(msg)[0] == "AA"
        wait_until(lambda: ris.for_placer("PKILL"), 30, "the advisory being sent")
        children = serve.pool_pids()
        assert children, "no Celery pool process found"
        for pid in children:
            os.kill(pid, signal.SIGKILL)
    finally:
        ris.delay = 0.0
    r = redis.Redis.from_url(URL)
    wait_until(
        lambda: any(
            (r.hget(k, "delivery") == b"delivered" and b"PKILL" in (r.hget(k, "raw_out") or b""))
            for k in r.scan_iter("oc:adv:*")
            if r.type(k) == b"hash"
        ),
        60,
        "the advisory marked delivered after the kill",
    )
    # The same advisory (same MSH-10) may arrive again after a kill; never a second one.
    assert len({a.control_id for a in ris.for_placer("PKILL")}) == 1
