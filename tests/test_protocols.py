"""Protocol pre-selection for the RIS (worker/protocols.py, worker/data/protocols.toml): the
variant each order calls for, the site's codes with their fallbacks, a bad map failing at load,
the code in the advisory (OBX, and IPC-6 of an OMI echo read back by hl7apy), and the protocol
steps in `ordercheck check`'s text output."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message as hl7apy_parse

from tests.conftest import ROOT, SEEDS
from tests.hl7build import order_message
from worker.check import Checker, MessageOutcome
from worker.cli import main
from worker.errors import GuidelineError
from worker.guideline import Knowledge, load_knowledge, load_protocol_map
from worker.history import InMemoryHistory
from worker.hl7.build import build_advisory
from worker.hl7.parse import RawMessage, parse_message
from worker.models import CheckResult

MRI = "73720^MRI LOWER EXT WO/W CONTRAST^CPT4"
CT = "73701^CT LOWER EXTREMITY W CONTRAST^CPT4"
NOW = datetime(2026, 11, 20, 9, 30, 5, tzinfo=UTC)


def _outcome(checker: Checker, **order: Any) -> MessageOutcome:
    outcome = checker.check_message(order_message(**order))
    assert outcome.raw is not None and outcome.orders
    return outcome


def _result(checker: Checker, **order: Any) -> CheckResult:
    return _outcome(checker, **order).results[0]


@pytest.mark.parametrize(
    ("procedure", "reason", "variant", "code", "for_order"),
    [
        (MRI, "^Right thigh mass 7 cm deep", "mri_standard", "OC-MR-THIGH-WWO", True),
        (MRI, "^thigh mass 7 cm, haematoma?", "mri_subtraction", "OC-MR-THIGH-SUB", True),
        (MRI, "^thigh mass 7 cm encasing vessels", "mri_mra", "OC-MR-THIGH-MRA", True),
        (
            MRI,
            "^thigh mass, haemorrhage, pulsatile",
            "mri_subtraction_mra",
            "OC-MR-THIGH-SUBMRA",
            True,
        ),
        (CT, "^thigh mass 6 cm, pacemaker", "ct_contrast", "OC-CT-THIGH-C", True),
        (CT, "^thigh mass 6 cm, IM nail left femur", "ct_dual_energy", "OC-CT-THIGH-DE", True),
        # A CT flagged CT_BEFORE_MRI: the MRI protocol, for the order once converted to MRI.
        (CT, "^Left thigh mass 6 cm deep", "mri_standard", "OC-MR-THIGH-WWO", False),
    ],
)
def test_each_order_gets_its_variant_and_the_shipped_code(
    checker: Checker,
    knowledge: Knowledge,
    procedure: str,
    reason: str,
    variant: str,
    code: str,
    for_order: bool,
) -> None:
    result = _result(checker, procedure=procedure, reason=reason)
    choice = knowledge.protocol_choice(result)
    assert choice is not None
    assert (choice.variant, choice.for_order) == (variant, for_order)
    assert choice.code is not None and (choice.code.code, choice.code.system) == (code, "99OCP")
    if for_order:
        assert choice.note == ""
    else:
        assert [f.code for f in result.flags] == ["CT_BEFORE_MRI"]
        assert "applies once the order is converted to MRI (CPT 73720)" in choice.note


def test_out_of_scope_orders_get_no_protocol_code(checker: Checker, knowledge: Knowledge) -> None:
    result = _result(checker, procedure="71046^XR CHEST^CPT4", reason="^cough")
    assert result.verdict == "no-criteria-apply"
    assert knowledge.protocol_choice(result) is None


def _site_map(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "site-protocols.toml"
    path.write_text(body, encoding="utf-8")
    return path


SITE = """
version = "site-1"
system = "EPICPRT"
[protocols.mri_standard]
code = "1001"
text = "MR THIGH MASS WWO"
[protocols.ct_contrast]
code = "2001"
[protocols.ct_dual_energy]
code = "2002"
system = "RADPROT"
"""


def test_a_site_map_replaces_the_default_and_missing_variants_fall_back(tmp_path: Path) -> None:
    kn = load_knowledge(protocols=_site_map(tmp_path, SITE))
    checker = Checker(kn, InMemoryHistory())
    bleed = kn.protocol_choice(_result(checker, procedure=MRI, reason="^thigh mass, haematoma"))
    assert bleed is not None and bleed.variant == "mri_subtraction"
    assert bleed.code is not None
    assert (bleed.code.code, bleed.code.text, bleed.code.system) == (
        "1001",
        "MR THIGH MASS WWO",
        "EPICPRT",
    )
    metal = kn.protocol_choice(
        _result(checker, procedure=CT, reason="^thigh mass, hip replacement")
    )
    assert metal is not None and metal.code is not None
    assert (metal.variant, metal.code.code, metal.code.system) == (
        "ct_dual_energy",
        "2002",
        "RADPROT",
    )


def test_an_empty_site_map_gives_no_code(tmp_path: Path) -> None:
    kn = load_knowledge(protocols=_site_map(tmp_path, 'version = "none"\n'))
    result = _result(Checker(kn, InMemoryHistory()), procedure=MRI, reason="^thigh mass 7 cm")
    choice = kn.protocol_choice(result)
    assert choice is not None and choice.variant == "mri_standard" and choice.code is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[protocols.mri_stnadard]\ncode = "1"\n', r"entry protocols\.mri_stnadard"),
        ('[protocols.mri_standard]\ncode = "%s"\n' % ("9" * 21), r"protocols\.mri_standard\.code"),
        ('[protocols.mri_standard]\ntext = "no code"\n', r"protocols\.mri_standard\.code"),
        ('[protocols.mri_standard]\ncode = "A\\u0007B"\n', r"control characters"),
        ('[protocols.mri_standard]\ncode = "1"\ncolour = "red"\n', r"colour"),
        (
            '[protocols.mri_mra]\ncode = "3"\n',
            r"protocols\.mri_mra is set but protocols\.mri_standard",
        ),
        ('[protocols.mri_standard\ncode = "1"\n', r"not valid TOML"),
    ],
)
def test_a_bad_site_map_fails_at_load_in_one_line(tmp_path: Path, body: str, message: str) -> None:
    path = _site_map(tmp_path, body)
    with pytest.raises(GuidelineError, match=message) as err:
        load_protocol_map(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(GuidelineError, match=message):
        load_knowledge(protocols=path)


def test_check_and_serve_refuse_to_start_on_a_bad_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _site_map(tmp_path, '[protocols.ct_dual_energy]\ncode = "2"\n')
    monkeypatch.setenv("ORDERCHECK_PROTOCOLS_FILE", str(bad))
    assert main(["check", str(SEEDS / "07-omi-v251-mri-ideal.hl7")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "ct_contrast" in err
    env = {**os.environ, "ORDERCHECK_PROTOCOLS_FILE": str(bad), "ORDERCHECK_LISTEN_PORT": "0"}
    env.pop("ORDERCHECK_REDIS_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", "serve"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("ordercheck: ") and str(bad) in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


# -- the code in the advisory ----------------------------------------------------------------------


def _advisory(kn: Knowledge, outcome: MessageOutcome, fmt: str) -> RawMessage:
    assert outcome.raw is not None
    result = outcome.results[0]
    built = build_advisory(
        outcome.raw,
        outcome.orders[0],
        result,
        control_id="OC1",
        application="ORDERCHECK",
        facility="RADCDS",
        fmt="oru" if fmt == "oru" else "order-echo",
        now=NOW,
        protocol=kn.protocol_choice(result),
    )
    return parse_message(built)


def _obx(msg: RawMessage, code: str) -> list[str]:
    return [msg.value(s.get(5)) for s in msg.all("OBX") if msg.component(s.get(3), 1) == code]


def test_the_oru_advisory_carries_the_code_in_an_obx(
    checker: Checker, knowledge: Knowledge
) -> None:
    outcome = _outcome(checker, procedure=MRI, reason="^thigh mass 7 cm, haematoma")
    msg = _advisory(knowledge, outcome, "oru")
    assert _obx(msg, "PROTCODE") == [
        "OC-MR-THIGH-SUB^MRI thigh soft-tissue mass, without and with IV contrast, with "
        "subtraction^99OCP"
    ]
    apy = hl7apy_parse(msg.text, validation_level=VALIDATION_LEVEL.TOLERANT)
    obs = apy.oru_r01_patient_result.oru_r01_order_observation.oru_r01_observation
    coded = [o.obx for o in obs if o.obx.obx_3.ce_1.value == "PROTCODE"]
    assert [o.obx_2.value for o in coded] == ["CWE"]
    assert coded[0].obx_5.to_er7().split("^")[0] == "OC-MR-THIGH-SUB"
    # A flagged CT: the MRI code, with a note that it is for the order converted to MRI.
    ct = _outcome(checker, procedure=CT, reason="^Left thigh mass 6 cm deep")
    msg = _advisory(knowledge, ct, "oru")
    assert [v.split("^")[0] for v in _obx(msg, "PROTCODE")] == ["OC-MR-THIGH-WWO"]
    i = next(n for n, s in enumerate(msg.segments) if msg.component(s.get(3), 1) == "PROTCODE")
    assert msg.segments[i + 1].id == "NTE"
    assert "converted to MRI" in msg.value(msg.segments[i + 1].get(3))


def test_hl7apy_reads_the_omi_echo_with_ipc6_set(checker: Checker, knowledge: Knowledge) -> None:
    outcome = checker.check_message((SEEDS / "07-omi-v251-mri-ideal.hl7").read_bytes())
    assert outcome.results[0].verdict == "appropriate"
    msg = _advisory(knowledge, outcome, "order-echo")
    apy = hl7apy_parse(msg.text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=True)
    assert apy.msh.msh_9.to_er7() == "OMI^O23^OMI_O23"
    assert apy.validate() is True  # the OMI_O23 structure of HL7 v2.5.1, segment by segment
    order = apy.omi_o23_order
    names = [c.name for c in order.children]
    assert names[0] == "ORC" and names[-1] == "IPC" and "OMI_O23_OBSERVATION" in names
    ipc = order.ipc
    assert ipc.ipc_6.ce_1.value == "OC-MR-THIGH-WWO"
    assert ipc.ipc_6.ce_3.value == "99OCP"
    assert ipc.ipc_1.ei_1.value == "ACC700001"  # the rest of the IPC is the order's own
    assert ipc.ipc_5.ce_1.value == "MR"
    obs = [o.obx for o in order.omi_o23_observation]
    assert [o.obx_5.to_er7().split("^")[0] for o in obs if o.obx_3.ce_1.value == "PROTCODE"] == [
        "OC-MR-THIGH-WWO"
    ]


def test_a_flagged_ct_echo_keeps_its_own_ipc6(checker: Checker, knowledge: Knowledge) -> None:
    raw = (SEEDS / "06-omi-v251-ct-local-code-ipc-mllp.hl7").read_bytes()
    outcome = checker.check_message(raw)
    assert [f.code for f in outcome.results[0].flags] == ["CT_BEFORE_MRI"]
    msg = _advisory(knowledge, outcome, "order-echo")
    order_ipc = parse_message(raw).first("IPC")
    ipc = msg.first("IPC")
    assert ipc is not None and order_ipc is not None and ipc.get(6) == order_ipc.get(6)
    assert [v.split("^")[0] for v in _obx(msg, "PROTCODE")] == ["OC-MR-THIGH-WWO"]


# -- ordercheck check, text output -----------------------------------------------------------------


def test_check_text_prints_the_protocol_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], knowledge: Knowledge
) -> None:
    path = tmp_path / "orders.hl7"
    path.write_bytes(
        order_message(control_id="M1", procedure=MRI, reason="^thigh mass 7 cm, haematoma")
        + order_message(
            control_id="C1", reason="^Left thigh mass 6 cm deep", patient_id="P2^^^H^MR"
        )
    )
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    mri, ct = out.split(f"{path}:", 2)[1:]
    assert "  protocol: mri_subtraction, RIS code OC-MR-THIGH-SUB (" in mri
    steps = [
        s.text for s in knowledge.guideline.protocol["mri"] if s.when in ("always", "haemorrhage")
    ]
    for i, step in enumerate(steps, start=1):
        assert f"    {i}. {step}\n" in mri
    assert "    note: CT order: the MRI protocol applies once the order is converted to MRI" in ct
    assert "    1. MRI thigh without and with IV contrast" in ct
    assert "Subtraction" not in ct


def test_the_worker_sends_the_site_code(tmp_path: Path) -> None:
    """The pipeline builds each advisory with the site map of ORDERCHECK_PROTOCOLS_FILE."""
    import fakeredis

    from worker.pipeline import Processor
    from worker.publish import DeliveryOutcome
    from worker.runtime import Stores
    from worker.settings import Route, Settings

    sent: list[bytes] = []

    class Recording:
        def route(self, application: str, facility: str) -> Route | None:
            return Route(host="127.0.0.1", port=9)

        def send(self, route: Route, message: bytes, control_id: str) -> DeliveryOutcome:
            sent.append(message)
            return DeliveryOutcome(True, "", "127.0.0.1:9")

        def close(self) -> None:
            pass

    site = _site_map(tmp_path, SITE)
    settings = Settings(advisory_format="order-echo", protocols_file=site)
    kn = load_knowledge(settings.code_map, protocols=settings.protocols_file)
    client = fakeredis.FakeRedis()
    stores = Stores(settings, client)
    processor = Processor(settings, kn, stores, Recording(), lambda i, a, d: None)  # type: ignore[arg-type]
    assert len(processor.process((SEEDS / "07-omi-v251-mri-ideal.hl7").read_bytes(), 1.7e9)) == 1
    msg = parse_message(sent[0])
    ipc = msg.first("IPC")
    assert ipc is not None and ipc.get(6) == "1001^MR THIGH MASS WWO^EPICPRT"
    assert _obx(msg, "PROTCODE") == ["1001^MR THIGH MASS WWO^EPICPRT"]
