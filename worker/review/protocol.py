"""The protocol worklist pages: the day's sheets with filters, one sheet alone, and the
"protocolled" mark (who and when, appended to the advisory's audit trail).

These pages load one script of ours (static/protocol.js: a print button per sheet), so their
Content-Security-Policy adds `script-src 'self'`; every other page runs no script at all.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from flask import Flask, abort, flash, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response as BaseResponse

from worker.guideline import Knowledge, default_knowledge, load_knowledge
from worker.records import Disposition
from worker.review.filters import local_tz
from worker.review.sheet import MODALITIES, WorklistFilters, sheet_of, worklist
from worker.review.summary import driving_facts
from worker.settings import Settings
from worker.store import AdvisoryStore


def _knowledge(settings: Settings) -> Knowledge:
    """The guideline with the site's maps (a bad protocols.toml fails here, at start-up)."""
    if settings.code_map is None and settings.protocols_file is None:
        return default_knowledge()
    return load_knowledge(settings.code_map, protocols=settings.protocols_file)


def _back(target: str, fallback: str) -> str:
    """A worklist URL to return to after a mark; anything else is replaced by *fallback*."""
    ok = target.startswith("/protocol") and "//" not in target and "\\" not in target
    return target if ok else fallback


def register(app: Flask, store: AdvisoryStore, settings: Settings, csp: str) -> None:
    """Adds the protocol pages to *app* (the review page, worker.review.app)."""
    knowledge = _knowledge(settings)
    page_csp = f"{csp}; script-src 'self'"

    def _page(template: str, status: int = 200, **context: Any) -> BaseResponse:
        resp = app.make_response((render_template(template, **context), status))
        resp.headers["Content-Security-Policy"] = page_csp
        return resp

    @app.get("/protocol")
    def protocol() -> BaseResponse:
        today = datetime.now(local_tz()).date()
        try:
            day = date.fromisoformat(request.args.get("day", "") or today.isoformat())
        except ValueError:
            day = today
        filters = WorklistFilters.from_args({k: str(v)[:20] for k, v in request.args.items()})
        orders = worklist(store, day, filters)
        return _page(
            "protocol.html",
            sheets=[sheet_of(rec, knowledge) for rec in orders],
            day=day,
            today=today,
            filters=filters,
            modalities=MODALITIES,
            facts={rec.id: driving_facts(rec.result.facts) for rec in orders},
            single=False,
        )

    @app.get("/protocol/<advisory_id>")
    def protocol_sheet(advisory_id: str) -> BaseResponse:
        rec = store.get(advisory_id)
        if rec is None:
            abort(404)
        today = datetime.now(local_tz()).date()
        return _page(
            "protocol.html",
            sheets=[sheet_of(rec, knowledge)],
            day=rec.received_at.astimezone(local_tz()).date(),
            today=today,
            filters=WorklistFilters(),
            modalities=MODALITIES,
            facts={rec.id: driving_facts(rec.result.facts)},
            single=True,
        )

    @app.post("/protocol/<advisory_id>/protocolled")
    def protocolled(advisory_id: str) -> BaseResponse:
        rec = store.get(advisory_id)
        if rec is None:
            abort(404)
        back = _back(request.form.get("back", ""), url_for("protocol"))
        done = rec.protocolled
        if done is not None:
            flash(f"Already protocolled by {done.reviewer}.")
            return redirect(f"{back}#sheet-{advisory_id}")
        choice = knowledge.protocol_choice(rec.result)
        what = ""
        if choice is not None:
            code = f", RIS code {choice.code.code}" if choice.code else ""
            what = f"{choice.variant}{code}"
        entry = Disposition(
            state=rec.disposition,
            kind="protocolled",
            reviewer=str(session["reviewer"]),
            text=f"Protocolled ({what})." if what else "Protocolled.",
        )
        store.dispose(advisory_id, entry)
        flash(f"Protocolled: order {rec.result.placer_order_number or advisory_id}.")
        return redirect(f"{back}#sheet-{advisory_id}")
