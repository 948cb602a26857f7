"""Review page routes of the quality team's list: the search box (`/find`) and the CSV export
(`/export.csv`). Registered by worker.review.app; behind its login like every page.

The search takes what `ordercheck flags show KEY` takes (advisory id, advisory MSH-10, placer
number, order MSH-10) or, when asked, a patient's MRN. An MRN search is logged as an access
(who, how many advisories and their ids) without the MRN itself.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Flask, Response, redirect, render_template, request, session, url_for

from worker.review.filters import FilterError, Filters
from worker.review.lookup import MAX_KEY, find, find_by_mrn
from worker.review.present import write_csv
from worker.store import AdvisoryStore, query

access_log = logging.getLogger("ordercheck.review.access")

SEARCH_BY = {"key": "id, MSH-10 or placer number", "mrn": "patient MRN"}


def register(
    app: Flask, store: AdvisoryStore, filters_of: Callable[[Any], Filters], keep_days: int = 400
) -> None:
    """Add /find and /export.csv to *app*; keep_days: the retention period (lookup index)."""

    @app.get("/find")
    def find_advisory() -> Any:
        key = request.args.get("q", "").strip()[:MAX_KEY]
        by = request.args.get("by", "key")
        by = by if by in SEARCH_BY else "key"
        if not key:
            return redirect(url_for("advisories"))
        if by == "mrn":
            rows = find_by_mrn(store, key, keep_days=keep_days)
            access_log.info(
                "reviewer %s searched advisories by MRN: %d found%s",
                session.get("reviewer", "?"),
                len(rows),
                f" ({', '.join(r.id for r in rows[:50])})" if rows else "",
            )
        else:
            rows = find(store, key, keep_days=keep_days)
        if len(rows) == 1 and by == "key":
            return redirect(url_for("advisory", advisory_id=rows[0].id))
        return render_template(
            "found.html", rows=rows, q=key, by=by, search_by=SEARCH_BY
        ), 200 if rows else 404

    @app.get("/export.csv")
    def export_csv() -> Any:
        try:
            q = filters_of(request.args).query()
        except FilterError as exc:
            return Response(f"{exc}\n", status=400, mimetype="text/plain")
        out = io.StringIO()
        write_csv(query(store, q, 0, None), out)
        stamp = datetime.now().strftime("%Y%m%d-%H%M")
        return Response(
            out.getvalue(),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="advisories-{stamp}.csv"'},
        )
