"""The review page and its query layer: filters, decisions (audit trail), summary, worklist.

Stores: memory, fakeredis and the real Redis (marked `redis`), through one parametrised
fixture, so every query test runs against each. The page is driven with Flask's test client,
and once end to end in headless Chromium through a real server (marked `browser`).
"""

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

from tests.reviewdata import FLAGGED, populate
from worker.records import AdvisoryQuery, AdvisoryRecord
from worker.review import create_app
from worker.review.chart import stacked_bars
from worker.review.decide import DecisionError, decide, make_decision
from worker.review.filters import FilterError, Filters, local_tz
from worker.review.present import detail_text, hl7_segments
from worker.review.summary import driving_facts, iso_week, protocol_worklist, summarise_store
from worker.settings import Settings
from worker.store import AdvisoryStore, MemoryStore, RedisStore, query

PATIENT_IDS = ("PAT001", "PAT002", "PAT003", "PAT004")


# -- stores --------------------------------------------------------------------------------------


@pytest.fixture
def store(any_store: AdvisoryStore) -> AdvisoryStore:
    """Each advisory store (conftest.any_store): memory, fakeredis, real Redis."""
    return any_store


@pytest.fixture
def recs(store: AdvisoryStore) -> dict[str, AdvisoryRecord]:
    return populate(store)


def ids(rows: list[AdvisoryRecord]) -> list[str]:
    return [r.result.message_control_id for r in rows]


# -- the query layer -------------------------------------------------------------------------


def test_list_is_newest_first_and_pages(
    store: AdvisoryStore, recs: dict[str, AdvisoryRecord]
) -> None:
    assert ids(query(store, AdvisoryQuery(), 0, None)) == ["C1", "C2", "C3", "C4", "C5", "C6", "C7"]
    assert ids(query(store, AdvisoryQuery(), 2, 3)) == ["C3", "C4", "C5"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(rule="CT_BEFORE_MRI"), ["C1", "C2", "C6"]),
        (Filters(rule="ct_before_mri"), ["C1", "C2", "C6"]),
        (Filters(verdict="appropriate"), ["C3"]),
        (Filters(provider="smith"), ["C2", "C6"]),
        (Filters(facility="clinic"), ["C2", "C7"]),
        (Filters(delivery="undelivered"), ["C4"]),
        (Filters(disposition="open", rule="PET_INITIAL"), ["C7"]),
        (Filters(rule="CT_BEFORE_MRI", provider="SMITH", facility="HOSP"), ["C6"]),
    ],
)
def test_filters(
    store: AdvisoryStore, recs: dict[str, AdvisoryRecord], filters: Filters, expected: list[str]
) -> None:
    assert ids(query(store, filters.query(), 0, None)) == expected


def test_date_range_is_local_days_until_inclusive(
    store: AdvisoryStore, recs: dict[str, AdvisoryRecord]
) -> None:
    today = datetime.now(local_tz()).date()
    week_ago = (today - timedelta(days=7)).isoformat()
    assert ids(query(store, Filters(since=week_ago).query(), 0, None)) == [
        "C1",
        "C2",
        "C3",
        "C4",
        "C5",
    ]
    until = (today - timedelta(days=1)).isoformat()
    assert ids(query(store, Filters(until=until).query(), 0, None)) == ["C6", "C7"]
    assert ids(
        query(store, Filters(since=today.isoformat(), until=today.isoformat()).query(), 0, None)
    )[:1] == ["C1"]


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (Filters(since="yesterday"), "since"),
        (Filters(verdict="bad"), "verdict"),
        (Filters(delivery="lost"), "delivery"),
        (Filters(since="2026-11-20", until="2026-11-01"), "until"),
    ],
)
def test_bad_filters_say_which(filters: Filters, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        filters.query()


def test_decisions_append_to_the_audit_trail(
    store: AdvisoryStore, recs: dict[str, AdvisoryRecord]
) -> None:
    rid = recs["C1"].id
    decide(store, rid, make_decision("accepted", "alice"))
    rec = decide(store, rid, make_decision("overridden", "bob", "mri-unavailable", "no slot"))
    assert rec.disposition == "overridden"
    assert [(d.state, d.reviewer, d.reason_code) for d in rec.audit] == [
        ("accepted", "alice", ""),
        ("overridden", "bob", "mri-unavailable"),
    ]
    again = store.get(rid)
    assert again is not None and len(again.audit) == 2 and again.audit[1].text == "no slot"
    assert again.audit[0].at <= again.audit[1].at
    assert ids(query(store, Filters(disposition="overridden").query(), 0, None)) == ["C1"]
    with pytest.raises(DecisionError, match="no advisory"):
        decide(store, "nope", make_decision("accepted", "alice"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("overridden", "alice"), "needs a reason code"),
        (("overridden", "alice", "because"), "unknown reason code"),
        (("overridden", "alice", "other"), "needs a text"),
        (("accepted", "alice", "other"), "only with overridden"),
        (("maybe", "alice"), "must be one of"),
        (("accepted", " "), "reviewer"),
    ],
)
def test_incomplete_decisions_are_refused(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(DecisionError, match=message):
        make_decision(*args)


def test_summary_counts_weeks_rules_providers_and_override_share(
    store: AdvisoryStore, recs: dict[str, AdvisoryRecord]
) -> None:
    s = summarise_store(store, AdvisoryQuery())
    assert s.flagged == len(FLAGGED) and s.overridden == 0 and s.override_share == 0
    assert s.rules[0] == "CT_BEFORE_MRI" and s.rule_total("CT_BEFORE_MRI") == 3
    assert s.provider_total("5678 SMITH ANNA") == 2
    this_week = iso_week(recs["C1"].received_at)
    assert s.weeks[-1].week == this_week and s.weeks[-1].flagged == 3
    assert len(s.weeks) >= 3 and sum(w.flagged for w in s.weeks) == s.flagged
    decide(store, recs["C2"].id, make_decision("overridden", "alice", "patient-specific"))
    after = summarise_store(store, AdvisoryQuery())
    assert after.overridden == 1 and after.override_share == pytest.approx(1 / len(FLAGGED))
    assert after.weeks[-1].override_share == pytest.approx(1 / 3)


def test_protocol_worklist_is_todays_in_scope_mri_and_ct(
    store: AdvisoryStore, recs: dict[str, AdvisoryRecord]
) -> None:
    today = datetime.now(local_tz()).date()
    assert ids(protocol_worklist(store, today)) == ["C3", "C2", "C1"]  # oldest first
    rows = {r.label: r for r in driving_facts(recs["C3"].result.facts)}
    assert rows["Size"].value == "7 cm" and "OBR-31: 7 cm" in rows["Size"].sources
    assert rows["Suspected haemorrhage"].present
    assert rows["MRI contraindications"].value == "device"
    assert any("pacemaker" in s for s in rows["MRI contraindications"].sources)


def test_hl7_segments_one_per_line_whatever_the_ends() -> None:
    raw = "\x0bMSH|^~\\&|A\r\nPID|1||X\nOBR|1\r\r\x1c\r"
    assert hl7_segments(raw) == ["MSH|^~\\&|A", "PID|1||X", "OBR|1"]


def test_detail_text_has_facts_sources_audit_and_raw(
    store: AdvisoryStore, recs: dict[str, AdvisoryRecord]
) -> None:
    rec = decide(store, recs["C1"].id, make_decision("false-positive", "alice", text="MRI done"))
    text = detail_text(rec)
    for part in (
        "FLAG CT_BEFORE_MRI",
        "ACR22",
        "size_cm = 6 cm <- OBR-31",
        "alice: false-positive",
        "HL7 received:",
        "PID|1||PAT001",
        "OBX|1|CWE|76515-6",
    ):
        assert part in text


def test_chart_escapes_names() -> None:
    svg = str(stacked_bars(["2026-W47"], {"<script>x</script>": [2]}, "t & t"))
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "t &amp; t" in svg
    assert svg.startswith("<svg") and "<rect" in svg


# -- the page (Flask test client) ----------------------------------------------------------------

SETTINGS = Settings(
    review_users={"alice": "correct horse"}, review_token="tok-123", review_secret="s" * 32
)


def csrf(body: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', body)
    assert match, "no CSRF token in the form"
    return match.group(1)


def login(client: Any, user: str = "alice", password: str = "correct horse") -> Any:
    token = csrf(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"user": user, "password": password, "csrf_token": token})


@pytest.fixture
def mem() -> tuple[MemoryStore, dict[str, AdvisoryRecord]]:
    store = MemoryStore()
    return store, populate(store)


@pytest.fixture
def client(mem: tuple[MemoryStore, dict[str, AdvisoryRecord]]) -> Any:
    return create_app(mem[0], SETTINGS).test_client()


def test_every_page_but_login_needs_a_session(
    client: Any, mem: tuple[MemoryStore, dict[str, Any]]
) -> None:
    rid = mem[1]["C1"].id
    for path in (
        "/",
        "/?rule=CT_BEFORE_MRI",
        f"/advisories/{rid}",
        "/summary",
        "/protocol",
        "/advisories/unknown",
        "/refused",
    ):
        resp = client.get(path)
        assert resp.status_code == 302, path
        assert resp.headers["Location"].startswith("/login"), path
        body = resp.get_data(as_text=True)
        assert not any(p in body for p in PATIENT_IDS) and "C1" not in body
    resp = client.post(f"/advisories/{rid}/decision", data={"state": "accepted"})
    assert resp.status_code in (302, 400)
    assert mem[0].get(rid).audit == []  # type: ignore[union-attr]
    page = client.get("/login").get_data(as_text=True)
    assert 'name="password"' in page and "PAT001" not in page and "Advisories" not in page


def test_login_with_password_or_token_and_logout(client: Any) -> None:
    assert login(client, password="wrong").status_code == 401
    assert login(client, user="mallory").status_code == 401
    resp = login(client)
    assert resp.status_code == 302 and resp.headers["Location"] == "/"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    page = client.get("/")
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and "CT_BEFORE_MRI" in body and "alice" in body
    assert page.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    client.post("/logout", data={"csrf_token": csrf(body)})
    assert client.get("/").status_code == 302
    token = csrf(client.get("/login").get_data(as_text=True))
    resp = client.post("/login", data={"user": "carol", "token": "tok-123", "csrf_token": token})
    assert resp.status_code == 302
    assert "token:carol" in client.get("/").get_data(as_text=True)


def test_login_returns_only_to_local_pages(client: Any) -> None:
    resp = client.get("/summary?weeks=4")
    assert resp.headers["Location"] == "/login?next=/summary?weeks%3D4"
    token = csrf(client.get("/login?next=/summary").get_data(as_text=True))
    resp = client.post(
        "/login?next=//evil.example/x",
        data={"user": "alice", "password": "correct horse", "csrf_token": token},
    )
    assert resp.headers["Location"] == "/"


def test_posts_without_csrf_token_are_refused(
    client: Any, mem: tuple[MemoryStore, dict[str, Any]]
) -> None:
    resp = client.post("/login", data={"user": "alice", "password": "correct horse"})
    assert resp.status_code == 400 and "security token" in resp.get_data(as_text=True)
    login(client)
    rid = mem[1]["C1"].id
    resp = client.post(
        f"/advisories/{rid}/decision",
        data={"state": "overridden", "reason_code": "other", "text": "x"},
    )
    assert resp.status_code == 400
    resp = client.post(
        f"/advisories/{rid}/decision", data={"state": "accepted", "csrf_token": "forged"}
    )
    assert resp.status_code == 400
    assert mem[0].get(rid).audit == []  # type: ignore[union-attr]


def test_detail_shows_facts_sources_raw_hl7_escaped(
    client: Any, mem: tuple[MemoryStore, Any]
) -> None:
    store, recs = mem
    rec = recs["C1"]
    store._records[rec.id] = rec.model_copy(update={"raw_in": rec.raw_in + "NTE|1||<b>x</b>\r"})
    login(client)
    body = client.get(f"/advisories/{rec.id}").get_data(as_text=True)
    assert "&lt;b&gt;x&lt;/b&gt;" in body and "<b>x</b>" not in body
    assert "PID|1||PAT001^^^HOSP^MR" in body and "OBX|1|CWE|76515-6" in body
    pre = re.search(r'<pre class="hl7">(.*?)</pre>', body, re.S)
    assert pre and pre.group(1).splitlines()[0].startswith("MSH|")
    assert len(pre.group(1).splitlines()) == 5  # MSH PID ORC OBR NTE, one per line
    for part in (
        "CT_BEFORE_MRI",
        "ACR22",
        "OBR-31",
        "OBR-4 code (CPT4)",
        "6 cm",
        "73720",
        "Deep to fascia",
    ):
        assert part in body, part
    assert client.get("/advisories/nope").status_code == 404


def test_decision_form_appends_and_validates(client: Any, mem: tuple[MemoryStore, Any]) -> None:
    store, recs = mem
    rid = recs["C2"].id
    login(client)
    page = client.get(f"/advisories/{rid}").get_data(as_text=True)
    resp = client.post(
        f"/advisories/{rid}/decision", data={"state": "overridden", "csrf_token": csrf(page)}
    )
    assert resp.status_code == 400
    alert = re.search(r'<p class="error" role="alert">(.*?)</p>', resp.get_data(as_text=True), re.S)
    # The readable labels the reviewer picks from, not the codes the CLI takes.
    assert alert and "Overridden needs a reason" in alert.group(1)
    assert "MRI not available in time" in alert.group(1) and "mri-unavailable" not in alert.group(1)
    for state, reason in (("accepted", "mri-unavailable"), ("overridden", "mri-unavailable")):
        resp = client.post(
            f"/advisories/{rid}/decision",
            data={
                "state": state,
                "reason_code": reason,
                "text": "<i>n</i>",
                "csrf_token": csrf(page),
            },
        )
        assert resp.status_code == 302
    rec = store.get(rid)
    assert rec is not None
    audit = rec.audit
    assert [(d.state, d.reviewer, d.reason_code) for d in audit] == [
        ("accepted", "alice", ""),
        ("overridden", "alice", "mri-unavailable"),
    ]
    body = client.get(f"/advisories/{rid}").get_data(as_text=True)
    assert "MRI not available in time" in body and "&lt;i&gt;n&lt;/i&gt;" in body
    assert "Recorded: overridden" in body


def test_list_filters_and_paging(client: Any, mem: tuple[MemoryStore, Any]) -> None:
    login(client)
    body = client.get("/?rule=CT_BEFORE_MRI&provider=smith").get_data(as_text=True)
    assert body.count('<td class="when"><a href="/advisories/') == 2
    body = client.get("/?since=notadate").get_data(as_text=True)
    assert "since: &#39;notadate&#39; is not a date" in body
    store, recs = mem
    for i in range(55):
        rec = recs["C5"].model_copy(
            update={"id": f"x{i}", "received_at": datetime.now(UTC) - timedelta(days=30, minutes=i)}
        )
        store.put(rec)
    page1 = client.get("/").get_data(as_text=True)
    assert 'rel="next"' in page1 and 'rel="prev"' not in page1
    page2 = client.get("/?page=2").get_data(as_text=True)
    assert 'rel="prev"' in page2 and 'rel="next"' not in page2


def test_summary_and_protocol_pages(client: Any, mem: tuple[MemoryStore, Any]) -> None:
    login(client)
    body = client.get("/summary").get_data(as_text=True)
    assert "<svg" in body and 'id="override-share">0%<' in body
    assert "CT_BEFORE_MRI" in body and "5678 SMITH ANNA" in body
    body = client.get("/protocol").get_data(as_text=True)
    assert body.count('class="sheet card"') == 3
    assert "Suspected haemorrhage" in body and "pacemaker" in body
    with client.get("/static/review.css") as css:  # a file response: closed after reading
        assert "break-after: page" in css.get_data(as_text=True)


def test_no_patient_identifier_reaches_a_log(
    client: Any, mem: tuple[MemoryStore, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    login(client)
    for rec in mem[1].values():
        client.get(f"/advisories/{rec.id}")
    mem[0].get = _broken  # type: ignore[method-assign]
    resp = client.get(f"/advisories/{mem[1]['C1'].id}")
    assert resp.status_code == 500
    assert "review page advisory failed: RuntimeError" in caplog.text
    assert not any(p in caplog.text for p in PATIENT_IDS)


def _broken(advisory_id: str) -> AdvisoryRecord:
    raise RuntimeError("PID|1||PAT001^^^HOSP^MR")


# -- the page in a real browser ------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is not installed at /usr/bin/chromium (CI needs it)")
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    return CHROMIUM


@pytest.fixture
def live_server(redis_url: str) -> Iterator[tuple[str, RedisStore, dict[str, AdvisoryRecord]]]:
    import redis

    from worker.review.server import ReviewServer

    client = redis.Redis.from_url(redis_url)
    store = RedisStore(client)
    recs = populate(store)
    server = ReviewServer(create_app(store, SETTINGS), "127.0.0.1", 0).start()
    yield server.url, store, recs
    server.stop()
    client.close()


@pytest.mark.browser
@pytest.mark.redis
def test_review_in_headless_chromium(
    chromium: Path, live_server: tuple[str, RedisStore, Any]
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, store, recs = live_server
    shots = os.environ.get("ORDERCHECK_SCREENSHOTS")  # a folder to keep screenshots in
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(10_000)
            errors: list[str] = []  # console errors, e.g. a Content-Security-Policy violation
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            # Refused without login: the login form, nothing else.
            page.goto(f"{url}/summary")
            assert page.url.startswith(f"{url}/login")
            content = page.content()
            assert "PAT001" not in content and "CT_BEFORE_MRI" not in content
            # Log in; back to the summary asked for; note the override share.
            page.fill("input[name=user]", "alice")
            page.fill("input[name=password]", "correct horse")
            page.click("button[type=submit]")
            expect(page.locator("#override-share")).to_have_text("0%")
            if shots:
                page.screenshot(path=f"{shots}/summary-before.png", full_page=True)
            # Filter by rule.
            page.click("text=Advisories")
            page.select_option("select[name=rule]", "CT_BEFORE_MRI")
            page.click("form.filters button[type=submit]")
            assert "rule=CT_BEFORE_MRI" in page.url
            rows = page.locator("table.list tbody tr")
            expect(rows).to_have_count(3)
            for i in range(3):
                expect(rows.nth(i)).to_contain_text("CT_BEFORE_MRI")
            if shots:
                page.screenshot(path=f"{shots}/list.png", full_page=True)
            # Open a flag and resolve it as overridden with a reason.
            rows.first.locator("a").first.click()
            expect(page.locator("h1")).to_contain_text("not-appropriate")
            expect(page.locator("pre.hl7").first).to_contain_text("PID|1||PAT001")
            page.check("input[name=state][value=overridden]")
            page.select_option("select[name=reason_code]", "mri-unavailable")
            page.fill("textarea[name=text]", "No MRI slot this week")
            page.click("#decision button[type=submit]")
            audit = page.locator("ol.audit li")
            expect(audit).to_have_count(1)
            expect(audit.first).to_contain_text("alice")
            expect(audit.first).to_contain_text("overridden")
            expect(audit.first).to_contain_text("MRI not available in time")
            expect(audit.first).to_contain_text("No MRI slot this week")
            if shots:
                page.screenshot(path=f"{shots}/detail.png", full_page=True)
            # The summary shows the share overridden changed (1 of 5 flagged orders).
            page.click("text=Summary")
            expect(page.locator("#override-share")).to_have_text("20%")
            if shots:
                page.screenshot(path=f"{shots}/summary.png", full_page=True)
            # The protocol worklist prints one A4 sheet per in-scope MRI or CT order of today.
            page.click("text=Protocol worklist")
            expect(page.locator("article.sheet")).to_have_count(3)
            page.wait_for_load_state("networkidle")
            pdf = page.pdf(format="A4")
            assert re.findall(rb"/Count (\d+)", pdf) == [b"3"]
            assert errors == []
            if shots:
                page.emulate_media(media="print")
                page.screenshot(path=f"{shots}/protocol-print.png", full_page=True)
        finally:
            browser.close()
    rec = store.get(recs["C1"].id)
    assert rec is not None and rec.disposition == "overridden"
    assert rec.audit[0].reviewer == "alice" and rec.audit[0].reason_code == "mri-unavailable"


def test_refused_messages_are_listed_behind_the_login(
    client: Any, mem: tuple[MemoryStore, dict[str, Any]]
) -> None:
    from datetime import UTC, datetime

    from worker.store import RejectedEntry

    mem[0].keep_rejected(
        RejectedEntry(
            control_id="BAD1",
            ack_code="AE",
            reason="MSH-9 message type is missing at MSH-9",
            received_at=datetime.now(UTC),
            raw="MSH|^~\\&|X|Y|||2026||<script>|BAD1|P|2.3",
        )
    )
    assert client.get("/refused").status_code == 302
    login(client)
    body = client.get("/refused").get_data(as_text=True)
    assert "BAD1" in body and "MSH-9 message type is missing" in body
    assert "<script>" not in body and "&lt;script&gt;" in body


@pytest.fixture
def quality_server(redis_url: str) -> Iterator[tuple[str, RedisStore, dict[str, AdvisoryRecord]]]:
    """live_server with the list's auto-refresh every second (so a test can watch it)."""
    import redis

    from worker.review.server import ReviewServer

    client = redis.Redis.from_url(redis_url)
    store = RedisStore(client)
    recs = populate(store)
    app = create_app(store, SETTINGS)
    app.config["ORDERCHECK_REFRESH"] = 1
    server = ReviewServer(app, "127.0.0.1", 0).start()
    yield server.url, store, recs
    server.stop()
    client.close()


@pytest.mark.browser
@pytest.mark.redis
def test_quality_team_in_headless_chromium(
    chromium: Path, quality_server: tuple[str, RedisStore, Any], tmp_path: Path
) -> None:
    """Issue 14's quality team, as a reviewer sees it: the login keeps the name, the list counts
    and fits 800 px, the search box finds by advisory MSH-10 and placer number, a missed flag
    is recorded (and an advisory without a flag has nothing to judge), the override error
    speaks in labels, the summary counts the missed flag and its bars open the week's list,
    the CSV export downloads neutralised rows, auto-refresh shows a new advisory, and logging
    out kills the old cookie."""
    from playwright.sync_api import expect, sync_playwright

    from worker.hl7.build import advisory_control_id

    url, store, recs = quality_server
    shots = os.environ.get("ORDERCHECK_SCREENSHOTS")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                viewport={"width": 800, "height": 900}, accept_downloads=True
            )
            page = context.new_page()
            page.set_default_timeout(10_000)
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            # A wrong password keeps the user name; then in.
            page.goto(f"{url}/")
            page.fill("input[name=user]", "alice")
            page.fill("input[name=password]", "wrong")
            page.click("button[type=submit]")
            expect(page.locator("p.error")).to_contain_text("Wrong user, password or token")
            expect(page.locator("input[name=user]")).to_have_value("alice")
            page.fill("input[name=password]", "correct horse")
            page.click("form.stack button[type=submit]")
            # The list: a total count, and it fits 800 px (no sideways scrolling).
            expect(page.locator("#total-count")).to_have_text("7")
            expect(page.locator("table.list tbody tr")).to_have_count(7)
            assert page.evaluate("document.documentElement.scrollWidth") <= 800
            box = page.locator("table.list").bounding_box()
            assert box is not None and box["x"] + box["width"] <= 800
            # The search box: the advisory's own MSH-10 opens it; a placer number lists all.
            c3 = recs["C3"]
            page.fill("form.search input[name=q]", advisory_control_id(c3.id))
            page.click("form.search button[type=submit]")
            assert page.url == f"{url}/advisories/{c3.id}"
            # C3 raised no flag: nothing to judge, but a missed flag can be recorded.
            expect(page.locator("#no-flag")).to_be_visible()
            expect(page.locator("text=The flag was")).to_have_count(0)
            page.select_option("#missed select[name=rule]", "CT_BEFORE_MRI")
            page.fill("#missed textarea[name=text]", "CT ordered first for a deep mass")
            page.click("#missed button[type=submit]")
            audit = page.locator("ol.audit li")
            expect(audit).to_have_count(1)
            expect(audit.first).to_contain_text("missed")
            expect(audit.first).to_contain_text("CT_BEFORE_MRI")
            page.click("nav >> text=Advisories")
            page.fill("form.search input[name=q]", "PL0001")
            page.click("form.search button[type=submit]")
            expect(page.locator("#found-count")).to_contain_text("7 advisories match")
            # A flagged one: overridden without a reason says so in the labels shown.
            page.goto(f"{url}/advisories/{recs['C1'].id}")
            page.check("input[name=state][value=overridden]")
            page.click("#judge button[type=submit]")
            alert = page.locator("p.error[role=alert]")
            expect(alert).to_contain_text("MRI not available in time")
            assert "mri-unavailable" not in alert.inner_text()
            page.set_viewport_size({"width": 1000, "height": 900})
            if shots:
                page.check("input[name=state][value=overridden]")
                page.select_option("#judge select[name=reason_code]", "mri-unavailable")
                page.click("#judge button[type=submit]")
                page.screenshot(path=f"{shots}/quality-detail.png")
            # The summary counts the missed flag; a bar opens its week's list for its rule.
            page.click("nav >> text=Summary")
            expect(page.locator("table#missed tfoot")).to_contain_text("1")
            expect(page.locator("table#missed thead")).to_contain_text("CT_BEFORE_MRI")
            expect(page.locator("table#providers thead")).to_contain_text("Share overridden")
            if shots:
                page.screenshot(path=f"{shots}/quality-summary.png")
            bar = page.locator("a.bar[data-series=CT_BEFORE_MRI]").last
            count = int((bar.locator("title").text_content() or "").rsplit(":", 1)[1])
            week = bar.get_attribute("data-week")
            bar.click()
            page.wait_for_url(re.compile(r".*rule=CT_BEFORE_MRI.*"))
            assert "since=" in page.url and "until=" in page.url and week
            expect(page.locator("table.list tbody tr")).to_have_count(count)
            # The CSV export button: the rows of the list, neutralised and quoted.
            page.goto(f"{url}/")
            with page.expect_download() as info:
                page.click("#export-csv")
            path = tmp_path / "export.csv"
            info.value.save_as(path)
            text = path.read_text(encoding="utf-8")
            assert text.startswith('"id","received_at"') and len(text.splitlines()) == 1 + 7
            # Auto-refresh, newest first: a new advisory shows without touching the page.
            page.check("input[name=refresh]")
            page.click("form.filters button[type=submit]")
            expect(page.locator("#refreshing")).to_be_visible()
            if shots:
                page.screenshot(path=f"{shots}/quality-list.png")
            new = recs["C5"].model_copy(update={"id": "fresh", "received_at": datetime.now(UTC)})
            store.put(new)
            expect(page.locator("#total-count")).to_have_text("8")
            expect(page.locator("table.list tbody tr").first).to_contain_text(
                local_time_of(new.received_at)
            )
            # Logging out ends the session: the old cookie no longer opens anything.
            cookies = context.cookies()
            page.click("button:has-text('Log out')")
            # put the old cookie back, as a thief would (Playwright types a read Cookie and a
            # SetCookieParam apart though one is the other's fields)
            context.add_cookies(cookies)  # type: ignore[arg-type]
            page.goto(f"{url}/summary")
            assert page.url.startswith(f"{url}/login")
            # The 401 and 400 above are expected; nothing else (no CSP violation, no script).
            assert [e for e in errors if "Failed to load resource" not in e] == []
        finally:
            browser.close()


def local_time_of(when: datetime) -> str:
    from worker.review.present import local_time

    return local_time(when)
