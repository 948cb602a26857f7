"""The review web page (Flask): login, advisory list, one advisory with its decision form,
weekly summary and the protocol worklist.

Every page but the login form needs a session. Forms carry a CSRF token (Flask-WTF). Pages hold
patient data (raw HL7) and are sent with `Cache-Control: no-store`; nothing here logs request
data: errors are logged by type and page only.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from flask import (
    Flask,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from worker.records import OVERRIDE_REASONS
from worker.review import chart
from worker.review import protocol as protocol_pages
from worker.review.auth import Throttle, check_login, login_configured
from worker.review.decide import STATES, DecisionError, decide, make_decision
from worker.review.filters import (
    DELIVERIES,
    DISPOSITIONS,
    RULES,
    VERDICTS,
    FilterError,
    Filters,
    local_tz,
)
from worker.review.present import hl7_segments, local_time, procedure_of, reason_label
from worker.review.summary import (
    driving_facts,
    iso_week,
    percent,
    summarise,
    summarise_store,
    week_start,
)
from worker.settings import Settings
from worker.store import AdvisoryStore, query

log = logging.getLogger("ordercheck.review")

PAGE_SIZE = 50
SUMMARY_WEEKS = (4, 12, 26, 52)
PUBLIC_ENDPOINTS = frozenset({"login", "static"})
SESSION_HOURS = 8

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def _filters(args: Any) -> Filters:
    return Filters(**{name: str(args.get(name, ""))[:200] for name in Filters.__dataclass_fields__})


def _safe_next(target: str | None) -> str | None:
    """A local path to return to after login; anything else (other hosts, schemes) is dropped."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target


REFUSED_PAGE = 50  # refused messages per page of /refused


def create_app(store: AdvisoryStore, settings: Settings) -> Flask:
    """The review page over *store*; logins from *settings* (review_users, review_token)."""
    app = Flask("worker.review")
    secret = settings.review_secret.get_secret_value() if settings.review_secret else ""
    app.config.update(
        SECRET_KEY=secret or secrets.token_hex(32),
        SESSION_COOKIE_NAME="ordercheck_review",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        # Plain HTTP on loopback by default; behind a TLS proxy set SESSION_COOKIE_SECURE.
        SESSION_COOKIE_SECURE=False,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
        WTF_CSRF_TIME_LIMIT=SESSION_HOURS * 3600,
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    CSRFProtect(app)
    throttle = Throttle()
    app.jinja_env.filters.update(
        local_time=local_time, percent=percent, reason_label=reason_label, procedure=procedure_of
    )
    app.jinja_env.globals.update(OVERRIDE_REASONS=OVERRIDE_REASONS, STATES=STATES)

    # -- guards ----------------------------------------------------------------------------------
    @app.before_request
    def require_login() -> BaseResponse | None:
        if request.endpoint in PUBLIC_ENDPOINTS or session.get("reviewer"):
            return None
        target = request.full_path.rstrip("?") if request.method == "GET" else None
        return redirect(
            url_for("login", next=target) if target and target != "/" else url_for("login")
        )

    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers.setdefault("Content-Security-Policy", CSP)  # a page may add to it
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "no-referrer"
        if request.endpoint != "static":
            resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.errorhandler(CSRFError)
    def csrf_failed(exc: CSRFError) -> tuple[str, int]:
        return render_template(
            "error.html",
            title="Form refused",
            message="The form had no valid security token (it may have "
            "expired, or come from another site). Reload the page and "
            "try again.",
        ), 400

    @app.errorhandler(Exception)
    def failed(exc: Exception) -> Any:
        if isinstance(exc, HTTPException):
            return exc
        # Never the message or traceback: both could quote patient data from a record.
        log.error("review page %s failed: %s", request.endpoint, type(exc).__name__)
        return render_template(
            "error.html",
            title="Something went wrong",
            message="The page could not be built (is the advisory store "
            "reachable?). The error was logged without its details.",
        ), 500

    # -- login -----------------------------------------------------------------------------------
    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        nxt = _safe_next(request.values.get("next"))
        if request.method == "GET":
            if session.get("reviewer"):
                return redirect(nxt or url_for("advisories"))
            return render_template("login.html", next=nxt, configured=login_configured(settings))
        client = request.remote_addr or "?"
        if throttle.blocked(client):
            return render_template(
                "login.html",
                next=nxt,
                configured=True,
                error="Too many failed logins; wait a few minutes.",
            ), 429
        reviewer = check_login(
            settings,
            request.form.get("user", ""),
            request.form.get("password", ""),
            request.form.get("token", ""),
        )
        if reviewer is None:
            throttle.failed(client)
            return render_template(
                "login.html",
                next=nxt,
                configured=login_configured(settings),
                error="Wrong user, password or token.",
            ), 401
        throttle.succeeded(client)
        session.clear()  # a fresh session (and CSRF token) per login
        session["reviewer"] = reviewer
        session.permanent = True
        return redirect(nxt or url_for("advisories"))

    @app.post("/logout")
    def logout() -> BaseResponse:
        session.clear()
        return redirect(url_for("login"))

    # -- list --------------------------------------------------------------------------------
    @app.get("/")
    def advisories() -> Any:
        filters = _filters(request.args)
        try:
            page = max(1, min(int(request.args.get("page", "1")), 10_000))
        except ValueError:
            page = 1
        error = ""
        try:
            q = filters.query()
            rows = query(store, q, (page - 1) * PAGE_SIZE, PAGE_SIZE + 1)
        except FilterError as exc:
            error, rows = str(exc), []
        keep = filters.items()
        return render_template(
            "list.html",
            rows=rows[:PAGE_SIZE],
            page=page,
            filters=filters,
            error=error,
            prev_url=f"?{urlencode({**keep, 'page': page - 1})}" if page > 1 else None,
            next_url=f"?{urlencode({**keep, 'page': page + 1})}" if len(rows) > PAGE_SIZE else None,
            verdicts=VERDICTS,
            rules=RULES,
            deliveries=DELIVERIES,
            dispositions=DISPOSITIONS,
            filtered=bool(keep),
        )

    # -- one advisory --------------------------------------------------------------------------
    def _detail(
        advisory_id: str, error: str = "", form: dict[str, str] | None = None, status: int = 200
    ) -> tuple[str, int]:
        rec = store.get(advisory_id)
        if rec is None:
            abort(404)
        return render_template(
            "detail.html",
            rec=rec,
            r=rec.result,
            raw_in=hl7_segments(rec.raw_in),
            raw_out=hl7_segments(rec.raw_out),
            facts=driving_facts(rec.result.facts),
            error=error,
            form=form or {},
        ), status

    @app.get("/advisories/<advisory_id>")
    def advisory(advisory_id: str) -> Any:
        return _detail(advisory_id)

    @app.post("/advisories/<advisory_id>/decision")
    def decision(advisory_id: str) -> Any:
        form = {k: request.form.get(k, "") for k in ("state", "reason_code", "text")}
        try:
            made = make_decision(
                form["state"],
                str(session["reviewer"]),
                form["reason_code"] if form["state"] == "overridden" else "",
                form["text"],
            )
            decide(store, advisory_id, made)
        except DecisionError as exc:
            if store.get(advisory_id) is None:
                abort(404)
            return _detail(advisory_id, str(exc), form, 400)
        flash(f"Recorded: {made.state}.")
        return redirect(url_for("advisory", advisory_id=advisory_id) + "#audit")

    # -- summary -----------------------------------------------------------------------------
    @app.get("/summary")
    def summary() -> Any:
        try:
            weeks = int(request.args.get("weeks", "12"))
        except ValueError:
            weeks = 12
        weeks = weeks if weeks in SUMMARY_WEEKS else 12
        filters = _filters(request.args)
        error = ""
        if not filters.since:
            first = week_start(iso_week(datetime.now(local_tz()))) - timedelta(weeks=weeks - 1)
            filters = Filters(**{**filters.items(), "since": first.isoformat()})
        try:
            result = summarise_store(store, filters.query())
        except FilterError as exc:
            error, result = str(exc), summarise([])
        labels = [w.week for w in result.weeks]
        return render_template(
            "summary.html",
            s=result,
            weeks=weeks,
            week_choices=SUMMARY_WEEKS,
            filters=filters,
            error=error,
            rules=RULES,
            rule_chart=chart.stacked_bars(
                labels, result.rule_series(), "Flags per ISO week, by rule"
            ),
            provider_chart=chart.stacked_bars(
                labels,
                result.provider_series(),
                "Flagged orders per ISO week, by ordering provider",
            ),
        )

    # -- protocol worklist (worker/review/protocol.py) ------------------------------------------
    protocol_pages.register(app, store, settings, CSP)

    # -- refused messages (AR/AE), kept for review -----------------------------------------------
    @app.get("/refused")
    def refused() -> Any:
        try:
            page = max(1, min(int(request.args.get("page", "1")), 10_000))
        except ValueError:
            page = 1
        entries = store.rejected(REFUSED_PAGE + 1, offset=(page - 1) * REFUSED_PAGE)
        return render_template(
            "refused.html",
            entries=entries[:REFUSED_PAGE],
            dead=store.dead_letters(50) if page == 1 else [],
            page=page,
            more=len(entries) > REFUSED_PAGE,
        )

    return app
