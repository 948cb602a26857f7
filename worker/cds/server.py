"""Runs the CDS Hooks app: waitress for plain HTTP (like the review page), and werkzeug's
threaded server when TLS is configured (waitress has no TLS of its own).
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server

from worker.cds.app import create_app
from worker.cds.auth import JwtVerifier
from worker.cds.service import CdsService
from worker.guideline import Knowledge
from worker.review.server import ReviewServer
from worker.settings import Settings
from worker.store import AdvisoryStore


class SettingsError(ValueError):
    """The CDS settings cannot be served as they are; the message says which to set."""


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def verifier_for(settings: Settings) -> JwtVerifier | None:
    """The JWT check the settings ask for; SettingsError when it is needed but not set."""
    if settings.cds_jwt_issuer:
        try:
            return JwtVerifier(
                settings.cds_jwt_issuer,
                settings.cds_jwt_key,
                settings.cds_jwt_jwks,
                settings.cds_jwt_audience,
            )
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
    if settings.cds_jwt_key or settings.cds_jwt_jwks:
        raise SettingsError("ORDERCHECK_CDS_JWT_ISSUER is needed with a CDS client key")
    if not is_loopback(settings.cds_host) and not settings.cds_allow_unauthenticated:
        raise SettingsError(
            f"{settings.cds_host} is not a loopback address: set ORDERCHECK_CDS_JWT_ISSUER and "
            "ORDERCHECK_CDS_JWT_KEY (or _JWKS) so that calls are authenticated, or "
            "ORDERCHECK_CDS_ALLOW_UNAUTHENTICATED=true"
        )
    return None


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.cds_tls_cert is None and settings.cds_tls_key is None:
        return None
    if settings.cds_tls_cert is None:
        raise SettingsError("ORDERCHECK_CDS_TLS_KEY is set without ORDERCHECK_CDS_TLS_CERT")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(settings.cds_tls_cert, settings.cds_tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"cannot load the CDS TLS certificate: {exc}") from None
    return ctx


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:  # no URLs in the logs
        return None


class TlsServer:
    """werkzeug's threaded WSGI server over TLS, with ReviewServer's start/stop/run."""

    def __init__(self, app: Any, host: str, port: int, context: ssl.SSLContext) -> None:
        self._server = make_server(
            host, port, app, threaded=True, ssl_context=context, request_handler=_QuietHandler
        )
        self._thread: threading.Thread | None = None
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._server.server_address[0])
        return f"https://{f'[{host}]' if ':' in host else host}:{self.port}"

    def run(self) -> None:
        self._server.serve_forever()

    def start(self) -> TlsServer:
        self._thread = threading.Thread(target=self.run, name="cds-tls-server", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)


def build_server(
    settings: Settings,
    knowledge: Knowledge,
    store: AdvisoryStore,
    host: str | None = None,
    port: int | None = None,
) -> ReviewServer | TlsServer:
    """The CDS Hooks server the settings describe (not started); SettingsError, OSError."""
    host = host or settings.cds_host
    port = settings.cds_port if port is None else port
    settings = settings.model_copy(update={"cds_host": host, "cds_port": port})
    verifier = verifier_for(settings)
    context = tls_context(settings)
    service = CdsService(knowledge, store, settings.site(), settings.cds_fhir_timeout)
    app = create_app(service, verifier)
    if context is not None:
        return TlsServer(app, host, port, context)
    return ReviewServer(app, host, port)
