"""The CDS Hooks web layer (Flask): routes, the JWT check, CORS and JSON errors.

Nothing here logs request bodies (they hold patient data); errors are logged by type only.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from worker.cds.auth import AuthError, JwtVerifier
from worker.cds.service import Answer, CdsService

log = logging.getLogger("ordercheck.cds")

MAX_BODY = 5 * 1024 * 1024


def create_app(service: CdsService, verifier: JwtVerifier | None = None) -> Flask:
    app = Flask("ordercheck.cds")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.json.sort_keys = False  # type: ignore[attr-defined]

    def reply(answer: Answer) -> Response:
        resp = jsonify(answer.body)
        resp.status_code = answer.status
        return resp

    def authorised() -> Response | None:
        if verifier is None:
            return None
        try:
            verifier.verify(request.headers.get("Authorization"), request.base_url)
        except AuthError as exc:
            resp = reply(Answer(401, {"error": str(exc)}))
            resp.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            return resp
        return None

    @app.get("/cds-services", strict_slashes=False)
    def discovery() -> Response:
        return reply(service.discovery())

    @app.post("/cds-services/<service_id>")
    def call(service_id: str) -> Response:
        return authorised() or reply(service.call(service_id, request.get_data()))

    @app.post("/cds-services/<service_id>/feedback")
    def feedback(service_id: str) -> Response:
        return authorised() or reply(service.feedback(service_id, request.get_data()))

    @app.after_request
    def headers(resp: Response) -> Response:
        # Browser-based CDS clients (the CDS Hooks sandbox, SMART apps) call across origins.
        resp.headers["Access-Control-Allow-Origin"] = "*"
        resp.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        resp.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        if request.method == "OPTIONS" and exc.code == 405:
            return Response(status=204)
        return reply(Answer(exc.code or 500, {"error": exc.description or exc.name}))

    @app.errorhandler(Exception)
    def internal(exc: Exception) -> Response:
        log.error("cds: internal error %s", type(exc).__name__)
        return reply(Answer(500, {"error": "internal error"}))

    return app
