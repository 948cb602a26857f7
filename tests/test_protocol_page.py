"""The protocoling radiologist's pages (worker/review/protocol.py, sheet.py): printed sheets with
the patient and accession, worklist filters, the "protocolled" mark in the audit trail, the
CT-to-MRI line and the MRI-contraindicated advice; with Flask's test client, then end to end in
headless Chromium (marked `browser`)."""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.hl7build import order_message
from worker.check import Checker
from worker.guideline import default_knowledge
from worker.history import InMemoryHistory
from worker.records import AdvisoryRecord, Disposition, advisory_id
from worker.review import create_app
from worker.review.decide import decide, make_decision
from worker.review.present import csv_row, detail_text
from worker.review.sheet import WorklistFilters, patient_of, worklist
from worker.settings import Settings
from worker.store import AdvisoryStore, MemoryStore

CT = "73701^CT LOWER EXTREMITY W CONTRAST^CPT4"
MRI = "73720^MRI LOWER EXT WO/W CONTRAST^CPT4"
# (control id, procedure, reason, patient id, name, birth date, accession, facility)
ORDERS = (
    ("P1", CT, "^Left thigh mass 6 cm deep", "MRN101", "DOE^JANE^Q", "19610214", "ACC101", "HOSP"),
    (
        "P2",
        CT,
        "^Right thigh mass 8 cm deep, pacemaker",
        "MRN102",
        "ROE^RICHARD",
        "19550630",
        "ACC102",
        "HOSP",
    ),
    (
        "P3",
        MRI,
        "^Left thigh mass 7 cm deep, haematoma",
        "MRN103",
        "POE^ANNA",
        "19800101",
        "ACC103",
        "CLINIC",
    ),
    (
        "P4",
        "71046^XR CHEST 2 VIEWS^CPT4",
        "^cough",
        "MRN104",
        "LOE^LEE",
        "19900101",
        "ACC104",
        "HOSP",
    ),
)
PATIENT_DATA = ("MRN101", "DOE", "1961-02-14", "19610214", "MRN103")
SETTINGS = Settings(review_users={"alice": "correct horse"}, review_secret="s" * 32)


def _with(data: bytes, seg_id: str, n: int, value: str) -> bytes:
    """*data* with field n of its first *seg_id* segment set to *value*."""
    segs = data.decode().split("\r")
    i = next(k for k, s in enumerate(segs) if s.startswith(f"{seg_id}|"))
    fields = segs[i].split("|")
    fields += [""] * (n + 1 - len(fields))
    fields[n] = value
    segs[i] = "|".join(fields)
    return "\r".join(segs).encode()


def build(now: datetime | None = None) -> list[AdvisoryRecord]:
    now = now or datetime.now(UTC)
    checker = Checker(default_knowledge(), InMemoryHistory())
    out = []
    for age, (cid, proc, reason, pid, name, birth, acc, facility) in enumerate(ORDERS, start=1):
        data = order_message(
            control_id=cid,
            procedure=proc,
            reason=reason,
            patient_id=f"{pid}^^^HOSP^MR",
            birth=birth,
            placer=f"PL{cid}",
            facility=facility,
        )
        data = _with(_with(data, "PID", 5, name), "OBR", 18, acc)
        result = checker.check_message(data).results[0]
        out.append(
            AdvisoryRecord(
                id=advisory_id("EPIC", facility, cid, 0),
                received_at=now - timedelta(seconds=10 - age),
                result=result,
                raw_in=data.decode(),
                delivery="delivered",
            )
        )
    return out


def populate(store: AdvisoryStore) -> dict[str, AdvisoryRecord]:
    recs = build()
    for rec in recs:
        assert store.put(rec)
    return {r.result.message_control_id: r for r in recs}


def today() -> Any:
    from worker.review.filters import local_tz

    return datetime.now(local_tz()).date()


# -- the query layer, on every store ------------------------------------------------------------


@pytest.fixture
def store(any_store: AdvisoryStore) -> AdvisoryStore:
    """Each advisory store (conftest.any_store): memory, fakeredis, real Redis."""
    return any_store


def _ids(rows: list[AdvisoryRecord]) -> list[str]:
    return [r.result.message_control_id for r in rows]


def test_protocolled_joins_the_audit_trail_and_leaves_the_disposition(store: AdvisoryStore) -> None:
    recs = populate(store)
    rid = recs["P1"].id
    decide(store, rid, make_decision("overridden", "quinn", "mri-unavailable"))
    # A protocolled entry read "open" before the decision landed: it must not undo it.
    mark = Disposition(state="open", kind="protocolled", reviewer="dr bob", text="Protocolled.")
    rec = store.dispose(rid, mark)
    assert rec.disposition == "overridden"
    assert [(d.kind, d.reviewer) for d in rec.audit] == [
        ("decision", "quinn"),
        ("protocolled", "dr bob"),
    ]
    assert rec.protocolled is not None and rec.protocolled.reviewer == "dr bob"
    later = store.dispose(rid, make_decision("accepted", "quinn"))  # a decision after it
    assert later.disposition == "accepted" and later.protocolled == rec.protocolled
    assert "dr bob: protocolled" in detail_text(later)
    assert csv_row(rec)[17] == "quinn"  # the CSV's reviewer is the last decision's


def test_worklist_filters(store: AdvisoryStore) -> None:
    recs = populate(store)
    day = today()
    assert _ids(worklist(store, day, WorklistFilters())) == ["P1", "P2", "P3"]
    assert _ids(worklist(store, day, WorklistFilters(modality="ct"))) == ["P1", "P2"]
    assert _ids(worklist(store, day, WorklistFilters(modality="mri"))) == ["P3"]
    assert _ids(worklist(store, day, WorklistFilters(flagged=True))) == ["P1"]
    store.dispose(recs["P2"].id, Disposition(state="open", kind="protocolled", reviewer="bob"))
    assert _ids(worklist(store, day, WorklistFilters(open_only=True))) == ["P1", "P3"]
    assert _ids(worklist(store, day, WorklistFilters(modality="ct", open_only=True))) == ["P1"]
    assert WorklistFilters.from_args({"modality": "PET", "flagged": "1"}) == WorklistFilters(
        flagged=True
    )


def test_patient_and_accession_come_from_the_order() -> None:
    rec = build()[0]
    p = patient_of(rec)
    assert (p.name, p.mrn, p.birth_date, p.accession) == (
        "DOE, JANE Q",
        "MRN101 (HOSP)",
        "1961-02-14",
        "ACC101",
    )
    segs = rec.raw_in.split("\r")
    i = next(k for k, seg in enumerate(segs) if seg.startswith("OBR|"))
    segs.insert(i + 1, "IPC|IPCACC9^RIS|RP1|1.2.3|SPS1|CT")
    with_ipc = rec.model_copy(update={"raw_in": "\r".join(segs)})
    assert patient_of(with_ipc).accession == "IPCACC9"  # IPC-1 first, then OBR-18


# -- the page (Flask test client) --------------------------------------------------------------


def csrf(body: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', body)
    assert match
    return match.group(1)


@pytest.fixture
def mem() -> tuple[MemoryStore, dict[str, AdvisoryRecord]]:
    store = MemoryStore()
    return store, populate(store)


@pytest.fixture
def client(mem: tuple[MemoryStore, dict[str, AdvisoryRecord]]) -> Any:
    c = create_app(mem[0], SETTINGS).test_client()
    token = csrf(c.get("/login").get_data(as_text=True))
    c.post("/login", data={"user": "alice", "password": "correct horse", "csrf_token": token})
    return c


def _sheets(body: str) -> dict[str, str]:
    """The HTML of each sheet, by placer number."""
    parts = body.split('<article class="sheet card"')[1:]
    return {re.search(r"order (PLP\d)", p).group(1): p for p in parts}  # type: ignore[union-attr]


def test_each_sheet_names_patient_accession_and_has_a_header_and_print_button(client: Any) -> None:
    resp = client.get("/protocol")
    body = resp.get_data(as_text=True)
    sheets = _sheets(body)
    assert list(sheets) == ["PLP1", "PLP2", "PLP3"]
    p1 = sheets["PLP1"]
    for text in ("DOE, JANE Q", "MRN101 (HOSP)", "1961-02-14", "ACC101"):
        assert text in p1
    assert f"Protocol sheet · {today().isoformat()} · site HOSP" in p1
    assert "site CLINIC" in sheets["PLP3"]
    assert re.search(r"Protocolled by\s*<span class=\"blank\"", p1)
    assert all(s.count('class="print-one"') == 1 for s in sheets.values())
    assert "LOE" not in body  # the chest radiograph is not on the worklist
    # The page runs our one script; no other page runs any.
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert '<script src="/static/protocol.js"' in body
    assert "script-src" not in client.get("/").headers["Content-Security-Policy"]
    with client.get("/static/protocol.js") as js:  # a file response: closed after reading
        assert js.status_code == 200


def test_ct_sheets_say_when_the_mri_protocol_applies_and_show_mri_contraindicated(
    client: Any,
) -> None:
    sheets = _sheets(client.get("/protocol").get_data(as_text=True))
    flagged, contraindicated, mri = sheets["PLP1"], sheets["PLP2"], sheets["PLP3"]
    assert "CT_BEFORE_MRI" in flagged
    assert (
        "CT order: the MRI protocol applies once the order is converted to MRI (CPT 73720)"
        in flagged
    )
    assert "Pre-contrast first" in flagged and "OC-MR-THIGH-WWO" in flagged
    assert "MRI_CONTRAINDICATED" in contraindicated
    assert "MRI is contraindicated here, so CT with IV contrast" in contraindicated
    assert "converted" not in contraindicated and "OC-CT-THIGH-C" in contraindicated
    assert "converted" not in mri and "OC-MR-THIGH-SUB" in mri and "Subtraction" in mri


def test_filters_and_the_protocolled_mark(
    client: Any, mem: tuple[MemoryStore, dict[str, AdvisoryRecord]]
) -> None:
    assert list(_sheets(client.get("/protocol?modality=ct").get_data(as_text=True))) == [
        "PLP1",
        "PLP2",
    ]
    assert list(_sheets(client.get("/protocol?flagged=1").get_data(as_text=True))) == ["PLP1"]
    body = client.get("/protocol?modality=ct").get_data(as_text=True)
    rid = mem[1]["P2"].id
    resp = client.post(
        f"/protocol/{rid}/protocolled",
        data={"csrf_token": csrf(body), "back": "/protocol?modality=ct"},
    )
    assert resp.status_code == 302
    assert resp.headers["Location"] == f"/protocol?modality=ct#sheet-{rid}"
    rec = mem[0].get(rid)
    assert rec is not None and rec.disposition == "open"
    mark = rec.protocolled
    assert mark is not None and mark.reviewer == "alice" and mark.kind == "protocolled"
    assert (datetime.now(UTC) - mark.at) < timedelta(minutes=1)
    assert "ct_contrast, RIS code OC-CT-THIGH-C" in mark.text
    # A second press adds nothing; the sheet says who and when.
    client.post(f"/protocol/{rid}/protocolled", data={"csrf_token": csrf(body)})
    rec = mem[0].get(rid)
    assert rec is not None and len(rec.audit) == 1
    sheet = _sheets(client.get("/protocol").get_data(as_text=True))["PLP2"]
    assert re.search(r"Protocolled by\s*<strong>alice</strong>", sheet)
    assert 'data-protocolled="yes"' in sheet
    assert list(_sheets(client.get("/protocol?open=1").get_data(as_text=True))) == ["PLP1", "PLP3"]
    # Off-site return addresses are not followed; unknown ids are 404; no token, no mark.
    other = mem[1]["P3"].id
    resp = client.post(
        f"/protocol/{other}/protocolled", data={"csrf_token": csrf(body), "back": "//evil/x"}
    )
    assert resp.headers["Location"] == f"/protocol#sheet-{other}"
    assert (
        client.post("/protocol/nope/protocolled", data={"csrf_token": csrf(body)}).status_code
        == 404
    )
    assert client.post(f"/protocol/{mem[1]['P1'].id}/protocolled").status_code == 400
    # One sheet alone.
    alone = client.get(f"/protocol/{rid}").get_data(as_text=True)
    assert list(_sheets(alone)) == ["PLP2"]


def test_sheets_need_a_login_and_log_no_patient_data(
    mem: tuple[MemoryStore, dict[str, AdvisoryRecord]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    c = create_app(mem[0], SETTINGS).test_client()
    rid = mem[1]["P1"].id
    for path in ("/protocol", f"/protocol/{rid}"):
        resp = c.get(path)
        assert resp.status_code == 302 and resp.headers["Location"].startswith("/login")
    assert c.post(f"/protocol/{rid}/protocolled").status_code in (302, 400)
    token = csrf(c.get("/login").get_data(as_text=True))
    c.post("/login", data={"user": "alice", "password": "correct horse", "csrf_token": token})
    assert "DOE, JANE Q" in c.get("/protocol").get_data(as_text=True)
    body = c.get(f"/protocol/{rid}").get_data(as_text=True)
    c.post(f"/protocol/{rid}/protocolled", data={"csrf_token": csrf(body)})
    assert not any(p in caplog.text for p in PATIENT_DATA)


# -- in a real browser --------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
# window.print() counts its calls and opens no dialog.
FAKE_PRINT = "window.__printed = 0; window.print = () => { window.__printed += 1; };"


@pytest.fixture
def live() -> Iterator[tuple[str, MemoryStore, dict[str, AdvisoryRecord]]]:
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is not installed at /usr/bin/chromium (CI needs it)")
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    from worker.review.server import ReviewServer

    store = MemoryStore()
    recs = populate(store)
    server = ReviewServer(create_app(store, SETTINGS), "127.0.0.1", 0).start()
    yield server.url, store, recs
    server.stop()


@pytest.mark.browser
def test_protocol_worklist_in_headless_chromium(
    live: tuple[str, MemoryStore, dict[str, AdvisoryRecord]],
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, store, recs = live
    shots = os.environ.get("ORDERCHECK_SCREENSHOTS")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.set_default_timeout(10_000)
            page.add_init_script(FAKE_PRINT)
            errors: list[str] = []  # console errors, e.g. a Content-Security-Policy violation
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{url}/protocol")
            page.fill("input[name=user]", "alice")
            page.fill("input[name=password]", "correct horse")
            page.click("button[type=submit]")
            sheets = page.locator("article.sheet")
            expect(sheets).to_have_count(3)
            expect(page.locator("button.print-one")).to_have_count(3)
            first = sheets.nth(0)
            expect(first.locator("td.name")).to_have_text("DOE, JANE Q")
            expect(first.locator("td.mrn")).to_have_text("MRN101 (HOSP)")
            expect(first.locator("td.accession")).to_have_text("ACC101")
            expect(first.locator(".sheet-head")).to_contain_text("Protocolled by")
            expect(first.locator(".convert")).to_contain_text("converted to MRI")
            expect(sheets.nth(1).locator(".advice")).to_contain_text("MRI_CONTRAINDICATED")
            # Filters: CT only, then flagged only.
            page.select_option("select[name=modality]", "ct")
            page.click("form.filters button[type=submit]")
            expect(sheets).to_have_count(2)
            page.check("input[name=flagged]")
            page.click("form.filters button[type=submit]")
            expect(sheets).to_have_count(1)
            assert "modality=ct" in page.url and "flagged=1" in page.url
            # Mark the CT with the pacemaker protocolled; "not yet protocolled" hides it.
            page.goto(f"{url}/protocol?modality=ct")
            second = page.locator(f"#sheet-{recs['P2'].id}")
            second.locator("button.mark").click()
            expect(second.locator(".sheet-head")).to_contain_text("Protocolled by alice")
            expect(second.locator(".status.done")).to_contain_text("alice")
            assert "modality=ct" in page.url
            page.check("input[name=open]")
            page.click("form.filters button[type=submit]")
            expect(sheets).to_have_count(1)
            # Print one sheet: only it is printed (one A4 page), the others are hidden.
            page.goto(f"{url}/protocol")
            expect(sheets).to_have_count(3)
            page.locator(f"#sheet-{recs['P1'].id} button.print-one").click()
            assert page.evaluate("window.__printed") == 1
            page.emulate_media(media="print")
            expect(page.locator(f"#sheet-{recs['P1'].id}")).to_be_visible()
            expect(page.locator(f"#sheet-{recs['P2'].id}")).to_be_hidden()
            expect(page.locator(".sheet-actions").first).to_be_hidden()
            pdf = page.pdf(format="A4")
            assert re.findall(rb"/Count (\d+)", pdf) == [b"1"]
            if shots:
                page.set_viewport_size({"width": 794, "height": 1123})  # A4 at 96 dpi
                page.locator(f"#sheet-{recs['P1'].id}").screenshot(
                    path=f"{shots}/protocol-sheet.png"
                )
            # Printing the whole page: one sheet per order again.
            page.emulate_media(media="screen")
            page.reload()
            page.emulate_media(media="print")
            assert re.findall(rb"/Count (\d+)", page.pdf(format="A4")) == [b"3"]
            assert errors == []
        finally:
            browser.close()
    rec = store.get(recs["P2"].id)
    assert rec is not None and rec.protocolled is not None and rec.protocolled.reviewer == "alice"
