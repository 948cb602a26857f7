"""The CDS Hooks service over HTTP (httpx against a live server thread): discovery, cards for
flagged, correct and out-of-scope drafts, prefetch and the FHIR server fallback, feedback into
the audit trail, JWT and TLS, and 400 for anything that is not a CDS Hooks request."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import self_signed
from tests.support import free_port
from worker.cds.cards import OVERRIDE_SYSTEM, record_of
from worker.cds.server import SettingsError, build_server, verifier_for
from worker.guideline import Knowledge
from worker.records import OVERRIDE_REASONS
from worker.settings import Settings
from worker.store import MemoryStore

CPT = "http://www.ama-assn.org/go/cpt"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"
WAIT = 10.0


def _settings(**kw: Any) -> Settings:
    return Settings(cds_host="127.0.0.1", cds_port=0, **kw)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def cds(knowledge: Knowledge, store: MemoryStore) -> Iterator[httpx.Client]:
    server = build_server(_settings(cds_fhir_timeout=1.0), knowledge, store).start()
    with httpx.Client(base_url=server.url, timeout=WAIT) as client:
        yield client
    server.stop()


def service_request(
    code: str,
    display: str,
    reason: str = "Enlarging mass of the left thigh, 6 cm, deep; radiograph: calcification",
    rid: str = "draft-1",
    system: str = CPT,
    **extra: Any,
) -> dict[str, Any]:
    sr: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": rid,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": system, "code": code, "display": display}]},
        "reasonCode": [
            {
                "coding": [{"system": ICD10, "code": "R22.42", "display": "Mass, left lower limb"}],
                "text": reason,
            }
        ],
        "bodySite": [
            {
                "coding": [
                    {"system": SCT, "code": "68367000", "display": "Thigh structure"},
                    {"system": SCT, "code": "7771000", "display": "Left"},
                ]
            }
        ],
        "authoredOn": "2026-11-02",
    }
    sr.update(extra)
    return sr


def hook_request(
    *drafts: dict[str, Any],
    hook: str = "order-sign",
    prefetch: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": "Practitioner/example",
            "patientId": "p1",
            "draftOrders": {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": d} for d in drafts],
            },
        },
    }
    body["prefetch"] = (
        prefetch
        if prefetch is not None
        else {"patient": {"resourceType": "Patient", "id": "p1", "birthDate": "1968-04-12"}}
    )
    body.update(extra)
    return body


def mri_study(side_code: str = "7771000") -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "resource": {
                    "resourceType": "ImagingStudy",
                    "id": "prior-mri",
                    "status": "available",
                    "subject": {"reference": "Patient/p1"},
                    "started": "2026-10-20T09:00:00Z",
                    "procedureCode": [
                        {
                            "coding": [
                                {
                                    "system": CPT,
                                    "code": "73720",
                                    "display": "MRI lower extremity w/o & w contrast",
                                }
                            ]
                        }
                    ],
                    "series": [
                        {
                            "uid": "1.2.3.4",
                            "modality": {
                                "system": "http://dicom.nema.org/resources/ontology/DCM",
                                "code": "MR",
                            },
                            "bodySite": {"system": SCT, "code": "68367000", "display": "Thigh"},
                            "laterality": {"system": SCT, "code": side_code},
                        }
                    ],
                }
            }
        ],
    }


def cards_of(client: httpx.Client, body: dict[str, Any], service: str = "order-sign") -> list[Any]:
    resp = client.post(f"/cds-services/{service}", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    cards: list[Any] = resp.json()["cards"]
    return cards


def warnings(cards: list[Any]) -> list[Any]:
    return [c for c in cards if c["indicator"] == "warning"]


# -- discovery --------------------------------------------------------------------------------
def test_discovery_lists_order_sign_and_order_select_with_prefetch(cds: httpx.Client) -> None:
    resp = cds.get("/cds-services")
    assert resp.status_code == 200
    services = {s["id"]: s for s in resp.json()["services"]}
    assert set(services) == {"order-sign", "order-select"}
    for sid, s in services.items():
        assert s["hook"] == sid
        assert s["description"] and s["title"]
        assert s["prefetch"]["patient"] == "Patient/{{context.patientId}}"
        for key in ("imagingStudies", "procedures", "diagnosticReports"):
            assert "patient={{context.patientId}}" in s["prefetch"][key]


# -- cards ------------------------------------------------------------------------------------
def test_ct_first_gets_a_warning_card_that_suggests_mri_73720(
    cds: httpx.Client, knowledge: Knowledge
) -> None:
    draft = service_request(
        "73701", "CT lower extremity with contrast", note=[{"text": "Palpable, firm"}]
    )
    cards = cards_of(cds, hook_request(draft))
    [card] = warnings(cards)
    assert len(card["summary"]) < 140
    assert "CT" in card["summary"]
    assert "CT_BEFORE_MRI" in card["detail"] and "ACR22" in card["detail"]
    assert knowledge.version in card["source"]["label"]
    assert card["extension"]["ordercheck.verdict"]["flags"] == ["CT_BEFORE_MRI"]
    assert card["selectionBehavior"] == "at-most-one"
    [suggestion] = card["suggestions"]
    delete, create = suggestion["actions"]
    assert delete == {
        "type": "delete",
        "description": delete["description"],
        "resourceId": "ServiceRequest/draft-1",
    }
    assert create["type"] == "create"
    new = create["resource"]
    assert new["resourceType"] == "ServiceRequest" and new["status"] == "draft"
    assert {"system": CPT, "code": "73720"}.items() <= new["code"]["coding"][0].items()
    assert new["subject"] == {"reference": "Patient/p1"}
    assert new["bodySite"] == draft["bodySite"]  # the side goes with it
    protocol = new["note"][0]["text"]
    assert protocol.startswith("Recommended protocol:") and "T1" in protocol
    reasons = {(r["system"], r["code"]) for r in card["overrideReasons"]}
    assert reasons == {(OVERRIDE_SYSTEM, code) for code in OVERRIDE_REASONS}


def test_biopsy_before_mri_is_flagged_and_a_prior_mri_in_the_prefetch_clears_it(
    cds: httpx.Client,
) -> None:
    biopsy = service_request("20206", "Biopsy muscle, percutaneous needle")
    [card] = warnings(cards_of(cds, hook_request(biopsy)))
    assert card["extension"]["ordercheck.verdict"]["flags"] == ["BIOPSY_BEFORE_MRI"]
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1968-04-12"}
    with_mri = hook_request(biopsy, prefetch={"patient": patient, "imagingStudies": mri_study()})
    assert warnings(cards_of(cds, with_mri)) == []
    # An MRI of the other thigh is no MRI of this one.
    right = hook_request(
        biopsy, prefetch={"patient": patient, "imagingStudies": mri_study("24028007")}
    )
    assert [
        c["extension"]["ordercheck.verdict"]["flags"] for c in warnings(cards_of(cds, right))
    ] == [["BIOPSY_BEFORE_MRI"]]


def test_pet_first_is_flagged(cds: httpx.Client) -> None:
    pet = service_request("78815", "PET/CT skull base to mid-thigh")
    [card] = warnings(cards_of(cds, hook_request(pet)))
    assert card["extension"]["ordercheck.verdict"]["flags"] == ["PET_INITIAL"]


def test_a_correct_mri_gets_no_warning(cds: httpx.Client) -> None:
    mri = service_request("73720", "MRI lower extremity without and with contrast")
    cards = cards_of(cds, hook_request(mri))
    assert warnings(cards) == []
    assert all(c["indicator"] == "info" for c in cards)
    assert all(c["extension"]["ordercheck.verdict"]["verdict"] == "appropriate" for c in cards)


def test_mri_without_contrast_with_red_flags_gets_advice_as_an_info_card(cds: httpx.Client) -> None:
    mri = service_request("73718", "MRI lower extremity without contrast")
    cards = cards_of(cds, hook_request(mri))
    assert warnings(cards) == []
    advice = {c["source"]["topic"]["code"]: c for c in cards}
    card = advice["MRI_ADD_CONTRAST"]
    assert card["indicator"] == "info" and len(card["summary"]) < 140
    create = card["suggestions"][0]["actions"][1]["resource"]
    assert create["code"]["coding"][0]["code"] == "73720"


def test_out_of_scope_drafts_get_no_card(cds: httpx.Client) -> None:
    chest = service_request("71250", "CT thorax without contrast", reasonCode=[{"text": "Cough"}])
    knee = service_request(
        "73721",
        "MRI knee without contrast",
        reasonCode=[{"text": "Meniscal tear after a twisting injury"}],
        bodySite=[{"text": "Left knee"}],
    )
    child = hook_request(
        service_request("73701", "CT lower extremity with contrast"),
        prefetch={"patient": {"resourceType": "Patient", "id": "p1", "birthDate": "2015-01-01"}},
    )
    assert cards_of(cds, hook_request(chest, knee)) == []
    assert cards_of(cds, child) == []
    # The same child, the Patient sent beside the draft instead of in the prefetch.
    child = hook_request(service_request("73701", "CT lower extremity with contrast"), prefetch={})
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "2015-01-01"}
    child["context"]["draftOrders"]["entry"].append({"resource": patient})
    assert cards_of(cds, child) == []


def test_a_radiograph_ordered_beside_the_mri_counts_and_order_select_judges_the_selection(
    cds: httpx.Client,
) -> None:
    why = "Soft-tissue mass of the left thigh, 6 cm, deep"
    mri = service_request("73720", "MRI lower extremity w/o & w contrast", why, rid="mri")
    xr = service_request("73552", "X-ray femur 2 views", why, rid="xr")
    alone = {c["source"]["topic"]["code"] for c in cards_of(cds, hook_request(mri))}
    assert "RADIOGRAPH_FIRST" in alone
    both = {c["source"]["topic"]["code"] for c in cards_of(cds, hook_request(mri, xr))}
    assert "RADIOGRAPH_FIRST" not in both
    ct = service_request("73701", "CT lower extremity with contrast", why, rid="ct")
    body = hook_request(ct, mri, hook="order-select")
    body["context"]["selections"] = ["ServiceRequest/mri"]
    cards = cards_of(cds, body, "order-select")
    assert warnings(cards) == []  # the CT is a draft but not the selection
    assert {c["extension"]["ordercheck.verdict"]["draft"] for c in cards} == {"ServiceRequest/mri"}


# -- requests from the specification's and FHIR's own examples --------------------------------
def test_the_cds_hooks_pama_order_select_example_is_out_of_scope(cds: httpx.Client) -> None:
    # The imaging example of CDS Hooks for PAMA: a CT angiogram of the chest, order-select.
    body = {
        "hook": "order-select",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "fhirServer": "http://127.0.0.1:9/fhir",
        "context": {
            "userId": "Practitioner/123",
            "patientId": "MRI-59879846",
            "encounterId": "89284",
            "selections": ["ServiceRequest/example-MRI-59879846"],
            "draftOrders": {
                "resourceType": "Bundle",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "ServiceRequest",
                            "id": "example-MRI-59879846",
                            "status": "draft",
                            "intent": "plan",
                            "code": {
                                "coding": [{"system": CPT, "code": "71275"}],
                                "text": "CT angiogram of chest",
                            },
                            "subject": {"reference": "Patient/MRI-59879846"},
                            "reasonCode": [
                                {
                                    "coding": [
                                        {
                                            "system": SCT,
                                            "code": "13213009",
                                            "display": "Congenital heart disease",
                                        }
                                    ]
                                }
                            ],
                        }
                    }
                ],
            },
        },
    }
    assert cards_of(cds, body, "order-select") == []


def test_the_fhir_r4_example_imaging_service_request_is_read_and_out_of_scope(
    cds: httpx.Client,
) -> None:
    # FHIR R4 ServiceRequest example "di": a chest CT (LOINC 24627-2), intent original-order.
    example = {
        "resourceType": "ServiceRequest",
        "id": "di",
        "status": "active",
        "intent": "original-order",
        "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2"}], "text": "Chest CT"},
        "subject": {"reference": "Patient/dicom"},
        "occurrenceDateTime": "2013-05-08T09:33:27+07:00",
        "requester": {"reference": "Practitioner/example", "display": "Dr. Adam Careful"},
        "reasonCode": [{"text": "Check for metastatic disease"}],
    }
    assert cards_of(cds, hook_request(example)) == []
    # The same request for a CT of the thigh mass is judged like any other draft.
    thigh = dict(example, code={"text": "CT left thigh with contrast"})
    thigh["reasonCode"] = [{"text": "Soft-tissue mass of the left thigh, 7 cm"}]
    [card] = warnings(cards_of(cds, hook_request(thigh)))
    assert card["suggestions"][0]["actions"][0]["resourceId"] == "ServiceRequest/di"


def test_coded_body_site_and_laterality_without_display_are_read(cds: httpx.Client) -> None:
    draft = service_request(
        "73701",
        "CT lower extremity with contrast",
        system="https://www.ama-assn.org/go/cpt",  # a variant of the CPT URI
        reasonCode=[{"coding": [{"system": ICD10, "code": "R22.42"}]}],
        bodySite=[
            {"coding": [{"system": SCT, "code": "68367000"}, {"system": SCT, "code": "7771000"}]}
        ],
    )
    [card] = warnings(cards_of(cds, hook_request(draft)))
    assert card["extension"]["ordercheck.verdict"]["flags"] == ["CT_BEFORE_MRI"]


def test_a_draft_with_vendor_members_and_no_subject_is_still_read(cds: httpx.Client) -> None:
    draft = service_request("73701", "CT lower extremity with contrast")
    del draft["subject"]
    draft["vendorPriority"] = "high"  # not FHIR: dropped, the rest is read
    draft["note"] = [{"text": "6 cm deep thigh mass"}, {"authorString": "x"}]
    [card] = warnings(cards_of(cds, hook_request(draft)))
    assert "vendorPriority" in card["detail"]


# -- prefetch missing: the FHIR server -----------------------------------------------------------
class FhirStub:
    """A FHIR server on a loopback port: answers Patient and ImagingStudy reads, records the
    Authorization headers; `hang` makes it wait until released (a server that does not answer)."""

    def __init__(self, hang: bool = False) -> None:
        self.requests: list[tuple[str, str]] = []
        self.release = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub.requests.append((self.path, self.headers.get("Authorization", "")))
                if hang:  # answers nothing until released, then closes
                    stub.release.wait(WAIT)
                    return
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                body: Any
                if url.path == "/fhir/Patient/p1":
                    body = {"resourceType": "Patient", "id": "p1", "birthDate": "1968-04-12"}
                elif url.path == "/fhir/ImagingStudy" and query.get("patient") == ["p1"]:
                    body = mri_study()
                elif url.path.startswith("/fhir/") and "?" in self.path:
                    body = {"resourceType": "Bundle", "type": "searchset", "total": 0}
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fhir_stub() -> Iterator[FhirStub]:
    stub = FhirStub()
    yield stub
    stub.stop()


def test_missing_prefetch_is_read_from_the_fhir_server_with_the_bearer_token(
    cds: httpx.Client, fhir_stub: FhirStub
) -> None:
    biopsy = service_request("20206", "Biopsy muscle, percutaneous needle")
    body = hook_request(
        biopsy,
        prefetch={},
        fhirServer=fhir_stub.url,
        fhirAuthorization={
            "access_token": "opaque-token-1",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/Patient.read user/ImagingStudy.read",
            "subject": "ordercheck",
        },
    )
    assert warnings(cards_of(cds, body)) == []  # the prior MRI came from the server
    paths = {p.split("?")[0] for p, _ in fhir_stub.requests}
    assert {"/fhir/Patient/p1", "/fhir/ImagingStudy"} <= paths
    assert {auth for _, auth in fhir_stub.requests} == {"Bearer opaque-token-1"}
    fhir_stub.requests.clear()
    body["context"]["patientId"] = "Patient/p1"  # as some clients send it
    assert warnings(cards_of(cds, body)) == []
    assert "/fhir/Patient/p1" in {p for p, _ in fhir_stub.requests}


def test_an_unreachable_or_silent_fhir_server_degrades_to_no_history_with_a_note(
    cds: httpx.Client,
) -> None:
    biopsy = service_request("20206", "Biopsy muscle, percutaneous needle")
    closed = f"http://127.0.0.1:{free_port()}/fhir"
    [card] = warnings(cards_of(cds, hook_request(biopsy, prefetch={}, fhirServer=closed)))
    assert "could not be read from the FHIR server" in card["detail"]
    silent = FhirStub(hang=True)
    try:
        body = hook_request(biopsy, prefetch={}, fhirServer=silent.url)
        [card] = warnings(cards_of(cds, body))
        assert "did not answer within" in card["detail"]
    finally:
        silent.stop()


# -- feedback ---------------------------------------------------------------------------------
def test_feedback_goes_into_the_advisory_audit_trail(cds: httpx.Client, store: MemoryStore) -> None:
    ct = service_request("73701", "CT lower extremity with contrast")
    [card] = warnings(cards_of(cds, hook_request(ct)))
    rid = record_of(card["uuid"])
    assert rid is not None
    record = store.get(rid)
    assert record is not None and record.result.flags[0].code == "CT_BEFORE_MRI"
    assert record.disposition == "open"
    overridden = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"system": OVERRIDE_SYSTEM, "code": "mri-unavailable"},
                    "userComment": "No MRI slot for three weeks",
                },
                "outcomeTimestamp": "2026-11-02T10:05:31Z",
            }
        ]
    }
    resp = cds.post("/cds-services/order-sign/feedback", json=overridden)
    assert resp.status_code == 200, resp.text
    record = store.get(rid)
    assert record is not None and record.disposition == "overridden"
    last = record.audit[-1]
    assert (last.reason_code, last.text) == ("mri-unavailable", "No MRI slot for three weeks")
    accepted = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
                "outcomeTimestamp": "2026-11-02T10:06:00Z",
            }
        ]
    }
    assert cds.post("/cds-services/order-sign/feedback", json=accepted).status_code == 200
    record = store.get(rid)
    assert record is not None and [d.state for d in record.audit] == ["overridden", "accepted"]
    unknown = {"feedback": [dict(accepted["feedback"][0], card=str(uuid.uuid4()))]}
    resp = cds.post("/cds-services/order-sign/feedback", json=unknown)
    assert resp.status_code == 404 and "error" in resp.json()


# -- not CDS Hooks: 400 -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"junk",
        b"[1, 2]",
        b'{"hook": "order-sign"}',
        b'{"hookInstance": "x", "context": {}}',
        b'{"hook": "order-sign", "hookInstance": "x"}',
        b'{"hook": 7, "hookInstance": "x", "context": {"draftOrders": {}}}',
        b'{"hook": "order-sign", "hookInstance": "x", "context": "p1"}',
        b'{"hook": "order-sign", "hookInstance": "x", "context": {"patientId": "p1"}}',
        b'{"hook": "order-sign", "hookInstance": "x", "context": {"draftOrders": "CT"}}',
        b'{"hook": "order-sign", "hookInstance": "x", "context": {"draftOrders": {"a": 1}}}',
        b'{"hook": "order-sign", "hookInstance": "x", "context": {"draftOrders": '
        b'{"resourceType": "Bundle", "entry": 3}}}',
        b'{"hook": "order-sign", "hookInstance": "x", "prefetch": [], "context": {"draftOrders":'
        b' {"resourceType": "Bundle"}}}',
        b'{"hook": "patient-view", "hookInstance": "x", "context": {"draftOrders":'
        b' {"resourceType": "Bundle"}}}',
        b'{"hook": "order-sign", "hookInstance": "x", "fhirAuthorization": {"access_token": "t"},'
        b' "context": {"draftOrders": {"resourceType": "Bundle"}}}',
    ],
)
def test_anything_that_is_not_a_cds_hooks_request_gets_400_with_a_json_error(
    cds: httpx.Client, body: bytes
) -> None:
    resp = cds.post(
        "/cds-services/order-sign", content=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 400
    assert resp.json()["error"]


def test_bad_feedback_and_unknown_services(cds: httpx.Client) -> None:
    assert cds.post("/cds-services/order-sign/feedback", content=b"{}").status_code == 400
    bad = {"feedback": [{"card": "x", "outcome": "maybe"}]}
    assert cds.post("/cds-services/order-sign/feedback", json=bad).status_code == 400
    resp = cds.post("/cds-services/nope", json=hook_request())
    assert resp.status_code == 404 and resp.json()["error"]
    assert cds.get("/cds-services/order-sign").status_code == 405


def test_an_empty_draft_bundle_gets_no_card(cds: httpx.Client) -> None:
    assert cards_of(cds, hook_request()) == []


# -- security -----------------------------------------------------------------------------------
@pytest.fixture
def client_key(tmp_path: Path) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "ehr.pem"
    path.write_bytes(pem)
    return key, path


def _token(key: Any, aud: str, **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": "https://ehr.example.org",
        "sub": "ehr-client",
        "aud": aud,
        "iat": now,
        "exp": now + 120,
        "jti": str(uuid.uuid4()),
        **claims,
    }
    return jwt.encode(payload, key, algorithm="ES384", headers={"kid": "k1", "typ": "JWT"})


def test_the_bearer_jwt_is_checked_when_an_issuer_is_configured(
    knowledge: Knowledge, client_key: tuple[Any, Path]
) -> None:
    key, pem = client_key
    settings = _settings(cds_jwt_issuer="https://ehr.example.org", cds_jwt_key=pem)
    server = build_server(settings, knowledge, MemoryStore()).start()
    try:
        url = f"{server.url}/cds-services/order-sign"
        body = hook_request(service_request("73701", "CT lower extremity with contrast"))
        with httpx.Client(timeout=WAIT) as client:
            assert client.get(f"{server.url}/cds-services").status_code == 200  # discovery open
            assert client.get(f"{server.url}/cds-services/").status_code == 200
            assert client.post(url, json=body).status_code == 401
            token = _token(key, url)
            ok = client.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200 and warnings(ok.json()["cards"])
            replay = client.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
            assert replay.status_code == 401 and "jti" in replay.json()["error"]
            card = warnings(ok.json()["cards"])[0]
            feedback = {"feedback": [{"card": card["uuid"], "outcome": "overridden"}]}
            fb_url = f"{url}/feedback"
            assert client.post(fb_url, json=feedback).status_code == 401
            signed = {"Authorization": f"Bearer {_token(key, url)}"}
            assert client.post(fb_url, json=feedback, headers=signed).status_code == 200
            for bad in (
                _token(key, "https://elsewhere.example.org/cds-services/order-sign"),
                _token(key, url, iss="https://other.example.org"),
                _token(key, url, exp=int(time.time()) + 3600),
                _token(ec.generate_private_key(ec.SECP384R1()), url),
            ):
                resp = client.post(url, json=body, headers={"Authorization": f"Bearer {bad}"})
                assert resp.status_code == 401, bad
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    finally:
        server.stop()


def test_a_non_loopback_address_needs_the_jwt_check(client_key: tuple[Any, Path]) -> None:
    with pytest.raises(SettingsError, match="ORDERCHECK_CDS_JWT_ISSUER"):
        verifier_for(Settings(cds_host="0.0.0.0"))
    assert verifier_for(Settings(cds_host="0.0.0.0", cds_allow_unauthenticated=True)) is None
    assert verifier_for(Settings(cds_host="::1")) is None
    _, pem = client_key
    assert verifier_for(Settings(cds_host="0.0.0.0", cds_jwt_issuer="x", cds_jwt_key=pem))


def test_tls_when_a_certificate_is_configured(knowledge: Knowledge, tmp_path: Path) -> None:
    key, cert = self_signed(tmp_path)
    settings = _settings(cds_tls_cert=cert, cds_tls_key=key)
    server = build_server(settings, knowledge, MemoryStore()).start()
    try:
        assert server.url.startswith("https://")
        with httpx.Client(verify=ssl.create_default_context(cafile=cert), timeout=WAIT) as client:
            resp = client.get(f"{server.url}/cds-services")
            assert resp.status_code == 200 and len(resp.json()["services"]) == 2
            body = hook_request(service_request("73701", "CT lower extremity with contrast"))
            cards = client.post(f"{server.url}/cds-services/order-sign", json=body).json()
            assert warnings(cards["cards"])
    finally:
        server.stop()


def test_order_entry_feedback_shows_on_the_review_page(
    cds: httpx.Client, store: MemoryStore
) -> None:
    from worker.review import create_app

    ct = service_request("73701", "CT lower extremity with contrast")
    [card] = warnings(cards_of(cds, hook_request(ct)))
    reason = {"reason": {"system": OVERRIDE_SYSTEM, "code": "mri-unavailable"}}
    item = {"card": card["uuid"], "outcome": "overridden", "overrideReason": reason}
    assert cds.post("/cds-services/order-sign/feedback", json={"feedback": [item]}).is_success
    settings = Settings(review_users={"alice": "pw"}, review_secret="s" * 32)
    client = create_app(store, settings).test_client()
    page = client.get("/login").get_data(as_text=True)
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    client.post("/login", data={"user": "alice", "password": "pw", "csrf_token": token})
    rid = record_of(card["uuid"])
    assert rid is not None
    listing = client.get("/").get_data(as_text=True)
    assert rid in listing
    detail = client.get(f"/advisories/{rid}").get_data(as_text=True)
    assert "order entry (CDS Hooks)" in detail
    assert OVERRIDE_REASONS["mri-unavailable"] in detail
    assert "CT_BEFORE_MRI" in detail


# -- the commands -----------------------------------------------------------------------------
def _run_until_served(args: list[str], env: dict[str, str], port: int) -> None:
    import os
    import signal
    import sys

    from tests.support import wait_until

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERCHECK_")}
    full_env.update(env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", *args],
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "exited")
        try:
            return httpx.get(f"{base}/cds-services", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 60, f"ordercheck {args[0]} to serve CDS Hooks")
        body = hook_request(service_request("73701", "CT lower extremity with contrast"))
        resp = httpx.post(f"{base}/cds-services/order-sign", json=body, timeout=WAIT)
        assert resp.status_code == 200 and warnings(resp.json()["cards"])
        [card] = warnings(resp.json()["cards"])
        item = {"card": card["uuid"], "outcome": "accepted", "acceptedSuggestions": []}
        fb = httpx.post(f"{base}/cds-services/order-sign/feedback", json={"feedback": [item]})
        assert fb.status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(WAIT)
        if proc.stderr is not None:
            proc.stderr.close()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.slow
def test_ordercheck_cds_serves_on_the_configured_port() -> None:
    port = free_port()
    _run_until_served(["cds"], {"ORDERCHECK_CDS_PORT": str(port)}, port)


@pytest.mark.slow
def test_ordercheck_serve_cds_serves_cds_hooks_on_the_embedded_default() -> None:
    port = free_port()
    env = {
        "ORDERCHECK_CDS_PORT": str(port),
        "ORDERCHECK_LISTEN_HOST": "127.0.0.1",
        "ORDERCHECK_LISTEN_PORT": str(free_port()),
        "ORDERCHECK_WORKERS": "1",
    }
    _run_until_served(["serve", "--cds"], env, port)


def test_ordercheck_cds_refuses_an_exposed_address_without_a_token_check(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.cli import main

    monkeypatch.setenv("ORDERCHECK_CDS_HOST", "0.0.0.0")
    assert main(["cds", "--port", "0"]) == 2
    assert "ORDERCHECK_CDS_JWT_ISSUER" in capsys.readouterr().err
