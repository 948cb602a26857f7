"""The worker pipeline (Processor) on fakeredis with a recording publisher, and the embedded
mode end to end."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from tests.hl7build import order_message
from tests.support import FakeOrderingSystem, Serve, wait_until
from worker.guideline import Knowledge
from worker.hl7.parse import peek_msh
from worker.pipeline import Processor
from worker.publish import DeliveryOutcome
from worker.runtime import Stores
from worker.settings import Route, Settings


class RecordingPublisher:
    """Publisher double: records what would be sent; `up` says whether the system answers."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.up = True

    def route(self, application: str, facility: str) -> Route | None:
        return Route(host="127.0.0.1", port=9)

    def send(self, route: Route, message: bytes, control_id: str) -> DeliveryOutcome:
        if not self.up:
            return DeliveryOutcome(False, "ConnectionRefusedError", "127.0.0.1:9")
        assert peek_msh(message).control_id == control_id
        self.sent.append(message)
        return DeliveryOutcome(True, "", "127.0.0.1:9")

    def close(self) -> None:
        pass


@pytest.fixture
def setup(
    knowledge: Knowledge,
) -> Iterator[tuple[Processor, RecordingPublisher, list[tuple[str, int, float]]]]:
    client = fakeredis.FakeRedis()
    settings = Settings(redis_url=None, delivery_retries=2, delivery_backoff=1.0)
    stores = Stores(settings, client)
    retries: list[tuple[str, int, float]] = []
    publisher = RecordingPublisher()
    processor = Processor(
        settings,
        knowledge,
        stores,
        publisher,  # type: ignore[arg-type]
        lambda i, a, d: retries.append((i, a, d)),
    )
    yield processor, publisher, retries


def _obx_status(message: bytes) -> str:
    seg = next(s for s in message.split(b"\r") if b"76515-6" in s)
    return seg.split(b"|")[11].decode()


def test_same_message_twice_gives_one_advisory(setup: Any) -> None:
    processor, publisher, _ = setup
    msg = order_message(control_id="P1", reason="^Left thigh mass 6 cm")
    first = processor.process(msg, 1_700_000_000.0)
    second = processor.process(msg, 1_700_000_001.0)
    assert first == second and len(first) == 1
    assert len(publisher.sent) == 1


def test_out_of_scope_orders_get_no_advisory_by_default(setup: Any) -> None:
    processor, publisher, _ = setup
    chest = order_message(
        control_id="P2", procedure="71260^CT CHEST W CONTRAST^CPT4", reason="^lung nodule"
    )
    assert processor.process(chest, 1_700_000_000.0) == []
    assert publisher.sent == []


def test_failed_delivery_backs_off_then_gives_up_and_resend_works(setup: Any) -> None:
    processor, publisher, retries = setup
    publisher.up = False
    [rec_id] = processor.process(
        order_message(control_id="P3", reason="^thigh mass 6 cm"), 1_700_000_000.0
    )
    assert retries == [(rec_id, 2, 1.0)]
    processor.deliver(rec_id, 2)
    assert retries[-1] == (rec_id, 3, 2.0)  # exponential backoff
    processor.deliver(rec_id, 3)
    record = processor.stores.store.get(rec_id)
    assert record.delivery == "undelivered" and record.delivery_attempts == 3
    assert processor.stores.store.undelivered_ids() == [rec_id]
    publisher.up = True
    assert processor.resend(rec_id)
    assert processor.stores.store.get(rec_id).delivery == "delivered"
    assert len(publisher.sent) == 1


def test_mri_result_after_a_flagged_biopsy_sends_a_corrected_advisory(setup: Any) -> None:
    processor, publisher, _ = setup
    biopsy = order_message(
        control_id="BX",
        placer="PBX",
        patient_id="P9^^^H^MR",
        procedure="20206^BIOPSY MUSCLE PERCUTANEOUS^CPT4",
        reason="^core biopsy left thigh mass 6 cm",
    )
    [rec_id] = processor.process(biopsy, 1_700_000_000.0)
    assert b"not-appropriate" in publisher.sent[0] and _obx_status(publisher.sent[0]) == "F"
    mri = order_message(
        control_id="MRI",
        msg_type="ORU^R01",
        patient_id="P9^^^H^MR",
        procedure="73720^MRI LE WO W^CPT4",
        reason="^left thigh mass",
    )
    processor.process(mri, 1_700_000_030.0)
    assert len(publisher.sent) == 2
    corrected = publisher.sent[1]
    assert _obx_status(corrected) == "C" and b"|appropriate^" in corrected
    assert peek_msh(corrected).control_id != peek_msh(publisher.sent[0]).control_id
    record = processor.stores.store.get(rec_id)
    assert record.result.verdict == "appropriate" and record.revision == 1
    assert "re-checked after message MRI" in record.audit[-1].text


def test_mri_result_outside_the_window_changes_nothing(setup: Any) -> None:
    processor, publisher, _ = setup
    biopsy = order_message(
        control_id="BX2",
        placer="PBX2",
        patient_id="P10^^^H^MR",
        procedure="20206^BIOPSY^CPT4",
        reason="^biopsy thigh mass 6 cm",
    )
    processor.process(biopsy, 1_700_000_000.0)
    mri = order_message(
        control_id="MRI2",
        msg_type="ORU^R01",
        patient_id="P10^^^H^MR",
        procedure="73720^MRI LE WO W^CPT4",
        reason="^thigh mass",
    )
    processor.process(mri, 1_700_000_000.0 + 3600 * 5)
    assert len(publisher.sent) == 1


@pytest.mark.slow
def test_embedded_mode_end_to_end() -> None:
    ris = FakeOrderingSystem().start()
    serve = Serve(
        {"ORDERCHECK_ADVISORY_HOST": "127.0.0.1", "ORDERCHECK_ADVISORY_PORT": str(ris.port)}
    )
    try:
        serve.start()
        msg = order_message(control_id="EMB1", placer="PEMB", reason="^Left thigh mass 6 cm")
        code, control, first = serve.send(msg)
        assert (code, control) == ("AA", "EMB1")
        assert serve.send(msg)[2] == first  # a resend gets the same ACK
        wait_until(lambda: ris.for_placer("PEMB"), 20, "the advisory")
        assert b"not-appropriate" in ris.for_placer("PEMB")[0].body
        enhanced = order_message(
            control_id="EMB2", placer="PEMB2", reason="^thigh mass", extra_msh={15: "AL", 16: "NE"}
        )
        assert serve.send(enhanced)[0] == "CA"
        unsupported = order_message(control_id="EMB3", msg_type="ADT^A01")
        code, _, reply = serve.send(unsupported)
        assert code == "AR" and b"200^" in reply
        wait_until(lambda: ris.for_placer("PEMB2"), 20, "the second advisory")
        assert len(ris.for_placer("PEMB")) == 1
    finally:
        serve.stop()
        ris.stop()
