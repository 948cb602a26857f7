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
from urllib.parse import urlencode, urlsplit

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
from worker.review import chart, find_routes
from worker.review import protocol as protocol_pages
from worker.review.auth import Throttle, check_login, login_configured, throttle_key
from worker.review.decide import (
    STATES,
    DecisionError,
    allowed_states,
    decide,
    flag_rules,
    make_decision,
    missed_choices,
)
from worker.review.filters import (
    DELIVERIES,
    DISPOSITIONS,
    RULES,
    VERDICTS,
    FilterError,
    Filters,
    local_tz,
)
from worker.review.lookup import page_and_total
from worker.review.present import hl7_segments, local_time, procedure_of, reason_label
from worker.review.sessions import Sessions, sessions_for
from worker.review.summary import (
    UNKNOWN_PROVIDER,
    driving_facts,
    iso_week,
    percent,
    summarise,
    summarise_store,
    week_start,
)
from worker.settings import Settings
from worker.store import AdvisoryStore

log = logging.getLogger("ordercheck.review")

PAGE_SIZE = 50
SUMMARY_WEEKS = (4, 12, 26, 52)
PUBLIC_ENDPOINTS = frozenset({"login", "static"})
SESSION_HOURS = 8
REFRESH_SECONDS = 60  # the list's auto-refresh interval (app.config["ORDERCHECK_REFRESH"])

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def _filters(args: Any) -> Filters:
    return Filters(**{name: str(args.get(name, ""))[:200] for name in Filters.__dataclass_fields__})


def _safe_next(target: str | None) -> str | None:
    """A local path to return to after login; anything else (other hosts, schemes) is dropped.

    Browsers drop tabs and line breaks from a URL and read a backslash as a slash, so
    "/\t/evil.example" would be "//evil.example" (another host): any whitespace, control
    character or backslash refuses the target, and so does anything with a scheme or host.
    """
    if not target or len(target) > 2000 or not target.startswith("/"):
        return None
    if any(c.isspace() or not c.isprintable() for c in target) or "\\" in target:
        return None
    if target.startswith("//"):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


REFUSED_PAGE = 50  # refused messages per page of /refused


def create_app(store: AdvisoryStore, settings: Settings) -> Flask:
    """The review page over *store*; logins from *settings* (review_users, review_token)."""
    app = Flask("worker.review")
    _configure(app, settings)
    sessions = sessions_for(store, SESSION_HOURS * 3600)
    _add_guards(app, sessions)
    _add_login(app, settings, sessions)
    _add_list(app, store)
    _add_detail(app, store)
    _add_summary(app, store)
    find_routes.register(app, store, _filters, settings.retention_days)
    protocol_pages.register(app, store, settings, CSP)  # the worklist (worker/review/protocol.py)
    _add_refused(app, store)
    return app


def _configure(app: Flask, settings: Settings) -> None:
    """Session cookie, CSRF protection, limits; the templates' filters and globals."""
    secret = settings.review_secret.get_secret_value() if settings.review_secret else ""
    app.config.update(
        SECRET_KEY=secret or secrets.token_hex(32),
        SESSION_COOKIE_NAME="ordercheck_review",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        # Plain HTTP on loopback by default; behind a TLS proxy set
        # ORDERCHECK_REVIEW_COOKIE_SECURE (and ORDERCHECK_REVIEW_TRUSTED_PROXY).
        SESSION_COOKIE_SECURE=settings.review_cookie_secure,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
        WTF_CSRF_TIME_LIMIT=SESSION_HOURS * 3600,
        # Over HTTPS Flask-WTF also wants a Referer from this host, but every page asks for
        # no referrer (URLs carry filter values): the token and SameSite cookie guard forms.
        WTF_CSRF_SSL_STRICT=False,
        MAX_CONTENT_LENGTH=64 * 1024,
        ORDERCHECK_TRUSTED_PROXY=settings.review_trusted_proxy,  # read by ReviewServer
        ORDERCHECK_REFRESH=REFRESH_SECONDS,
    )
    CSRFProtect(app)
    app.jinja_env.filters.update(
        local_time=local_time, percent=percent, reason_label=reason_label, procedure=procedure_of
    )
    app.jinja_env.globals.update(
        OVERRIDE_REASONS=OVERRIDE_REASONS,
        STATES=STATES,
        FLAG_RULES=flag_rules(),
        search_by=find_routes.SEARCH_BY,
    )


def _add_guards(app: Flask, sessions: Sessions) -> None:
    """Login required (but on the public endpoints), security headers, the error pages."""

    def logged_in() -> bool:
        """A session cookie whose server-side id is still live (not logged out)."""
        sid = session.get("sid")
        if session.get("reviewer") and isinstance(sid, str) and sessions.alive(sid):
            return True
        if session:
            session.clear()
        return False

    @app.before_request
    def require_login() -> BaseResponse | None:
        if request.endpoint == "static" or logged_in() or request.endpoint in PUBLIC_ENDPOINTS:
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


def _add_login(app: Flask, settings: Settings, sessions: Sessions) -> None:
    """/login (throttled per user name and address) and /logout."""
    throttle = Throttle()

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        nxt = _safe_next(request.values.get("next"))
        if request.method == "GET":
            if session.get("reviewer"):  # logged_in() ran in require_login
                return redirect(nxt or url_for("advisories"))
            return render_template("login.html", next=nxt, configured=login_configured(settings))
        user = request.form.get("user", "")[:200]
        # Per user name and address together: one reviewer's typos (or an attack on one
        # name) do not lock out every reviewer behind the same proxy address.
        key = throttle_key(user, request.remote_addr or "?")
        if throttle.blocked(key):
            return render_template(
                "login.html",
                next=nxt,
                configured=True,
                user=user,
                error="Too many failed logins; wait a few minutes.",
            ), 429
        reviewer = check_login(
            settings, user, request.form.get("password", ""), request.form.get("token", "")
        )
        if reviewer is None:
            throttle.failed(key)
            return render_template(
                "login.html",
                next=nxt,
                configured=login_configured(settings),
                user=user,
                error="Wrong user, password or token.",
            ), 401
        throttle.succeeded(key)
        session.clear()  # a fresh session (and CSRF token) per login
        session["reviewer"] = reviewer
        session["sid"] = sessions.create()
        session.permanent = True
        return redirect(nxt or url_for("advisories"))

    @app.post("/logout")
    def logout() -> BaseResponse:
        sid = session.get("sid")
        if isinstance(sid, str):
            sessions.revoke(sid)  # the old cookie stops working everywhere, now
        session.clear()
        return redirect(url_for("login"))


def _add_list(app: Flask, store: AdvisoryStore) -> None:
    """/: the advisories, filtered and paged, newest first."""

    @app.get("/")
    def advisories() -> Any:
        filters = _filters(request.args)
        try:
            page = max(1, min(int(request.args.get("page", "1")), 10_000))
        except ValueError:
            page = 1
        refresh = request.args.get("refresh", "") == "1"
        error, total, exact = "", 0, True
        rows: list[Any] = []
        try:
            q = filters.query()
            rows, total, exact = page_and_total(store, q, (page - 1) * PAGE_SIZE, PAGE_SIZE)
        except FilterError as exc:
            error = str(exc)
        keep = filters.items()
        more = {**keep, "refresh": "1"} if refresh else keep
        body = render_template(
            "list.html",
            rows=rows,
            total=total,
            exact=exact,
            page=page,
            pages=max(1, -(-total // PAGE_SIZE)),
            filters=filters,
            error=error,
            refresh=refresh,
            refresh_seconds=app.config["ORDERCHECK_REFRESH"],
            export_url=url_for("export_csv") + (f"?{urlencode(keep)}" if keep else ""),
            prev_url=f"?{urlencode({**more, 'page': page - 1})}" if page > 1 else None,
            next_url=f"?{urlencode({**more, 'page': page + 1})}"
            if page * PAGE_SIZE < total
            else None,
            verdicts=VERDICTS,
            rules=RULES,
            deliveries=DELIVERIES,
            dispositions=DISPOSITIONS,
            filtered=bool(keep),
        )
        resp = Response(body)
        if refresh and page == 1:  # newest first: page 1 is where new advisories appear
            resp.headers["Refresh"] = str(app.config["ORDERCHECK_REFRESH"])
        return resp


def _add_detail(app: Flask, store: AdvisoryStore) -> None:
    """/advisories/<id>: one advisory, and the reviewer's decision on it."""

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
            states=allowed_states(rec),
            missed_choices=missed_choices(rec),
        ), status

    @app.get("/advisories/<advisory_id>")
    def advisory(advisory_id: str) -> Any:
        return _detail(advisory_id)

    @app.post("/advisories/<advisory_id>/decision")
    def decision(advisory_id: str) -> Any:
        form = {k: request.form.get(k, "") for k in ("state", "reason_code", "text", "rule")}
        try:
            made = make_decision(
                form["state"],
                str(session["reviewer"]),
                form["reason_code"] if form["state"] == "overridden" else "",
                form["text"],
                form["rule"] if form["state"] == "missed" else "",
            )
            decide(store, advisory_id, made)
        except DecisionError as exc:
            if store.get(advisory_id) is None:
                abort(404)
            return _detail(advisory_id, exc.page_message, form, 400)
        flash(f"Recorded: {made.state}" + (f" ({made.rule})." if made.rule else "."))
        return redirect(url_for("advisory", advisory_id=advisory_id) + "#audit")


def _add_summary(app: Flask, store: AdvisoryStore) -> None:
    """/summary: flags per ISO week, by rule and by ordering provider."""

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

        def week_link(i: int, **extra: str) -> str:
            start = week_start(labels[i])
            args = {
                "since": start.isoformat(),
                "until": (start + timedelta(days=6)).isoformat(),
                **extra,
            }
            return url_for("advisories") + "?" + urlencode(args)

        def rule_link(i: int, name: str) -> str:
            return week_link(i, rule=name)

        def provider_link(i: int, name: str) -> str | None:
            if name in ("other", UNKNOWN_PROVIDER):
                return None  # no list filter selects these
            return week_link(i, provider=name)

        return render_template(
            "summary.html",
            s=result,
            weeks=weeks,
            week_choices=SUMMARY_WEEKS,
            filters=filters,
            error=error,
            rules=RULES,
            rule_chart=chart.stacked_bars(
                labels, result.rule_series(), "Flags per ISO week, by rule", link=rule_link
            ),
            provider_chart=chart.stacked_bars(
                labels,
                result.provider_series(),
                "Flagged orders per ISO week, by ordering provider",
                link=provider_link,
            ),
        )


def _add_refused(app: Flask, store: AdvisoryStore) -> None:
    """/refused: the messages refused (AR/AE) and the dead letters, kept for review."""

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
