"""Delivers an advisory to the ordering system over MLLP and checks its ACK.

The reply must be AA or CA with MSA-2 equal to our MSH-10; anything else is a failed attempt.
Connections are kept per destination and reused; one that failed is closed. Each send takes an
idle connection (or opens one), so callers sending at once from several threads each have their
own: as many connections as sends at once, no more. Retries and backoff belong to the caller (a
Celery retry task, or the embedded scheduler).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from worker.errors import DeliveryError
from worker.hl7.ack import ack_fields
from worker.hl7.mllp import MLLPClient, MLLPError
from worker.settings import Route, Settings

log = logging.getLogger("ordercheck.publish")
ACCEPTED = ("AA", "CA")


@contextlib.contextmanager
def delivery_errors(destination: str) -> Iterator[None]:
    """Maps the MLLP client's and the socket's errors to DeliveryError where they enter
    ordercheck (its text, "<class>: <message>", is what the advisory keeps as delivery_error)."""
    try:
        yield
    except (MLLPError, OSError) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}"[:200], destination) from exc


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    ok: bool
    error: str = ""
    destination: str = ""


class Publisher:
    """Sends advisories over connections kept open per destination; thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._idle: dict[tuple[str, int], list[MLLPClient]] = {}
        self._lock = threading.Lock()
        self._ssl = self._context(settings)

    @staticmethod
    def _context(settings: Settings) -> ssl.SSLContext | None:
        """TLS when a CA or a client certificate is set, never plain TCP then: a certificate
        without ORDERCHECK_ADVISORY_TLS_CA verifies the ordering system against the system's
        CA store (with a warning), where it once meant plain TCP, silently."""
        if settings.advisory_tls_ca is None and settings.advisory_tls_cert is None:
            if settings.advisory_tls_key is not None:
                log.warning("ORDERCHECK_ADVISORY_TLS_KEY is set without a certificate: ignored")
            return None
        if settings.advisory_tls_ca is None:
            log.warning(
                "ORDERCHECK_ADVISORY_TLS_CERT is set without ORDERCHECK_ADVISORY_TLS_CA: "
                "advisories go over TLS, the ordering system checked against the system's CAs"
            )
            ctx = ssl.create_default_context()
        else:
            ctx = ssl.create_default_context(cafile=str(settings.advisory_tls_ca))
        if settings.advisory_tls_cert is not None:
            ctx.load_cert_chain(
                str(settings.advisory_tls_cert),
                str(settings.advisory_tls_key) if settings.advisory_tls_key else None,
            )
        return ctx

    def route(self, application: str, facility: str) -> Route | None:
        return self.settings.route_for(application, facility)

    def send(self, route: Route, message: bytes, control_id: str) -> DeliveryOutcome:
        """One delivery attempt of *message* (whose MSH-10 is *control_id*)."""
        dest = f"{route.host}:{route.port}"
        try:
            reply = self.exchange(route, message)
        except DeliveryError as exc:
            return DeliveryOutcome(False, str(exc), dest)
        code, echoed = ack_fields(reply)
        if code not in ACCEPTED:
            return DeliveryOutcome(False, f"ACK {code or 'missing'} from the ordering system", dest)
        if echoed != control_id:
            return DeliveryOutcome(False, "ACK MSA-2 does not match the advisory MSH-10", dest)
        return DeliveryOutcome(True, "", dest)

    def exchange(self, route: Route, message: bytes) -> bytes:
        """Send *message* to *route* and return the reply frame; raises DeliveryError."""
        key = (route.host, route.port)
        with self._lock:
            idle = self._idle.get(key)
            client = idle.pop() if idle else None
        try:
            with delivery_errors(f"{route.host}:{route.port}"):
                if client is None:
                    client = MLLPClient(
                        route.host,
                        route.port,
                        ssl=self._ssl,
                        connect_timeout=self.settings.advisory_ack_timeout,
                        server_hostname=route.host if self._ssl else None,
                    )
                reply = client.send(message, timeout=self.settings.advisory_ack_timeout)
        except DeliveryError:
            if client is not None:
                client.close()
            with self._lock:  # the others went through the same failure (a restart) or soon will
                stale = self._idle.pop(key, [])
            for other in stale:
                other.close()
            raise
        with self._lock:
            self._idle.setdefault(key, []).append(client)
        return reply

    def close(self) -> None:
        with self._lock:
            for clients in self._idle.values():
                for client in clients:
                    client.close()
            self._idle.clear()
