"""Delivers an advisory to the ordering system over MLLP and checks its ACK.

The reply must be AA or CA with MSA-2 equal to our MSH-10; anything else is a failed attempt.
Connections are kept per destination and reopened after any error. Retries and backoff belong
to the caller (a Celery retry task, or the embedded scheduler).
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass

from worker.hl7.ack import ack_fields
from worker.hl7.mllp import MLLPClient, MLLPError
from worker.settings import Route, Settings

log = logging.getLogger("ordercheck.publish")
ACCEPTED = ("AA", "CA")


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    ok: bool
    error: str = ""
    destination: str = ""


class Publisher:
    """Sends advisories; one open connection per destination, reused between advisories."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clients: dict[tuple[str, int], MLLPClient] = {}
        self._lock = threading.Lock()
        self._ssl = self._context(settings)

    @staticmethod
    def _context(settings: Settings) -> ssl.SSLContext | None:
        if settings.advisory_tls_ca is None:
            return None
        ctx = ssl.create_default_context(cafile=str(settings.advisory_tls_ca))
        if settings.advisory_tls_cert is not None:
            ctx.load_cert_chain(str(settings.advisory_tls_cert),
                                str(settings.advisory_tls_key) if settings.advisory_tls_key
                                else None)
        return ctx

    def route(self, application: str, facility: str) -> Route | None:
        return self.settings.route_for(application, facility)

    def send(self, route: Route, message: bytes, control_id: str) -> DeliveryOutcome:
        """One delivery attempt of *message* (whose MSH-10 is *control_id*)."""
        dest = f"{route.host}:{route.port}"
        key = (route.host, route.port)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = MLLPClient(route.host, route.port, ssl=self._ssl,
                                    connect_timeout=self.settings.advisory_ack_timeout,
                                    server_hostname=route.host if self._ssl else None)
                self._clients[key] = client
            try:
                reply = client.send(message, timeout=self.settings.advisory_ack_timeout)
            except (MLLPError, OSError) as exc:
                client.close()
                self._clients.pop(key, None)
                return DeliveryOutcome(False, f"{type(exc).__name__}: {exc}"[:200], dest)
        code, echoed = ack_fields(reply)
        if code not in ACCEPTED:
            return DeliveryOutcome(False, f"ACK {code or 'missing'} from the ordering system",
                                   dest)
        if echoed != control_id:
            return DeliveryOutcome(False, "ACK MSA-2 does not match the advisory MSH-10", dest)
        return DeliveryOutcome(True, "", dest)

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
