"""Advisory records for the review tests, built from real check results of HL7 orders.

Each record is one order of `order_message` (tests/hl7build.py) run through the Checker, with a
received time relative to *now* and a delivery state, as the pipeline would store it.
PAT00x identifiers are the patient data that must stay behind the login and out of logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tests.hl7build import order_message
from worker.check import Checker
from worker.guideline import default_knowledge
from worker.history import InMemoryHistory
from worker.records import AdvisoryRecord, Delivery, advisory_id
from worker.store import AdvisoryStore

CT = "73701^CT LOWER EXTREMITY W CONTRAST^CPT4"
MRI = "73720^MRI LOWER EXT WO/W CONTRAST^CPT4"
PET = "78815^PET CT^CPT4"
BIOPSY = "20206^BIOPSY MUSCLE^CPT4"
XR_CHEST = "71046^XR CHEST 2 VIEWS^CPT4"


@dataclass(frozen=True)
class Spec:
    control_id: str
    procedure: str
    reason: str
    patient: str
    provider: str = "1234^ORDERING^DOC"
    facility: str = "HOSP"
    age: timedelta = timedelta(seconds=0)  # how long before *now* it was received
    delivery: Delivery = "delivered"


SPECS = (
    # today: two CT-first flags, an MRI with haemorrhage and a pacemaker, an undelivered biopsy
    Spec("C1", CT, "^Left thigh mass 6 cm deep", "PAT001", age=timedelta(seconds=1)),
    Spec(
        "C2",
        CT,
        "^Right thigh mass 9 cm deep, calcification",
        "PAT002",
        provider="5678^SMITH^ANNA",
        facility="CLINIC",
        age=timedelta(seconds=2),
    ),
    Spec(
        "C3",
        MRI,
        "^Right thigh mass 7 cm deep, haemorrhage, pacemaker",
        "PAT003",
        age=timedelta(seconds=3),
    ),
    Spec(
        "C4", BIOPSY, "^thigh mass 8 cm", "PAT004", age=timedelta(seconds=4), delivery="undelivered"
    ),
    Spec("C5", XR_CHEST, "^cough", "PAT005", age=timedelta(seconds=5)),
    # earlier weeks
    Spec(
        "C6",
        CT,
        "^Left thigh mass 5 cm deep",
        "PAT006",
        provider="5678^SMITH^ANNA",
        age=timedelta(days=8),
    ),
    Spec("C7", PET, "^thigh mass", "PAT007", facility="CLINIC", age=timedelta(days=15)),
)

FLAGGED = {
    "C1": "CT_BEFORE_MRI",
    "C2": "CT_BEFORE_MRI",
    "C4": "BIOPSY_BEFORE_MRI",
    "C6": "CT_BEFORE_MRI",
    "C7": "PET_INITIAL",
}


def fake_advisory(raw_in: str, verdict: str) -> str:
    """A stand-in for the ORU^R01 sent back (the publisher builds the real one)."""
    pid = next((s for s in raw_in.split("\r") if s.startswith("PID|")), "PID|1")
    msh = "MSH|^~\\&|ORDERCHECK|ORDERCHECK|EPIC|HOSP|20261120083001||ORU^R01|A1|P|2.5.1"
    obx = f"OBX|1|CWE|76515-6^Appropriateness^LN||{verdict}||||||F"
    return "\r".join([msh, pid, obx]) + "\r"


def build_records(
    now: datetime | None = None, specs: tuple[Spec, ...] = SPECS
) -> list[AdvisoryRecord]:
    now = now or datetime.now(UTC)
    checker = Checker(default_knowledge(), InMemoryHistory())
    out: list[AdvisoryRecord] = []
    for spec in specs:
        data = order_message(
            control_id=spec.control_id,
            procedure=spec.procedure,
            reason=spec.reason,
            patient_id=f"{spec.patient}^^^HOSP^MR",
            facility=spec.facility,
        )
        data = data.replace(b"1234^ORDERING^DOC", spec.provider.encode())
        for i, result in enumerate(checker.check_message(data).results):
            raw_in = data.decode()
            out.append(
                AdvisoryRecord(
                    id=advisory_id(
                        result.sending_application,
                        result.sending_facility,
                        result.message_control_id,
                        i,
                    ),
                    received_at=now - spec.age,
                    result=result,
                    raw_in=raw_in,
                    raw_out=fake_advisory(raw_in, result.verdict),
                    delivery=spec.delivery,
                    destination="127.0.0.1:2576",
                )
            )
    return out


def populate(store: AdvisoryStore, now: datetime | None = None) -> dict[str, AdvisoryRecord]:
    """Puts the records in *store*; returns them by control id."""
    recs = build_records(now)
    for rec in recs:
        assert store.put(rec)
    return {rec.result.message_control_id: rec for rec in recs}
