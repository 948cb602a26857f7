"""Builds HL7 v2 test messages field by field, so tests say which field holds what."""

from __future__ import annotations


def segment(seg_id: str, fields: dict[int, str]) -> str:
    """A segment with fields[n] at SEG-n (MSH: n >= 3; MSH-1/2 are fixed)."""
    if seg_id == "MSH":
        top = max(fields, default=2)
        values = [fields.get(n, "") for n in range(3, top + 1)]
        return "|".join(["MSH", "^~\\&", *values])
    top = max(fields, default=0)
    return "|".join([seg_id, *(fields.get(n, "") for n in range(1, top + 1))])


def order_message(
    *,
    control_id: str = "MSG0001",
    procedure: str = "73701^CT LOWER EXTREMITY W CONTRAST^CPT4",
    reason: str = "",
    clinical: str = "",
    notes: tuple[str, ...] = (),
    dg1: tuple[str, ...] = (),
    obx: tuple[tuple[str, str], ...] = (),
    birth: str = "19700101",
    patient_id: str = "PAT001^^^HOSP^MR",
    order_control: str = "NW",
    order_status: str = "",
    placer: str = "PL0001",
    modality: str = "",
    msg_type: str = "ORM^O01",
    version: str = "2.3",
    sender: str = "EPIC",
    facility: str = "HOSP",
    extra_msh: dict[int, str] | None = None,
) -> bytes:
    msh = {
        3: sender,
        4: facility,
        5: "ORDERCHECK",
        6: "RAD",
        7: "20261120083000",
        9: msg_type,
        10: control_id,
        11: "P",
        12: version,
        **(extra_msh or {}),
    }
    segs = [
        segment("MSH", msh),
        segment("PID", {1: "1", 3: patient_id, 5: "TEST^PATIENT", 7: birth, 8: "F"}),
        segment(
            "ORC",
            {
                1: order_control,
                2: placer,
                5: order_status,
                9: "20261120083000",
                12: "1234^ORDERING^DOC",
            },
        ),
        segment(
            "OBR",
            {
                1: "1",
                2: placer,
                4: procedure,
                13: clinical,
                24: modality,
                25: "F" if msg_type.startswith("ORU") else "",
                31: reason,
            },
        ),
    ]
    segs += [segment("NTE", {1: str(i + 1), 3: n}) for i, n in enumerate(notes)]
    segs += [segment("DG1", {1: str(i + 1), 3: d}) for i, d in enumerate(dg1)]
    segs += [
        segment("OBX", {1: str(i + 1), 2: "ST", 3: q, 5: a, 11: "F"})
        for i, (q, a) in enumerate(obx)
    ]
    return ("\r".join(segs) + "\r").encode("utf-8")
