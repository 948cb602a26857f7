"""The review page's WSGI server: waitress, run in the foreground or in a background thread.

Waitress does not log requests, so no URL (and no filter value) reaches a log from here.

Behind a TLS reverse proxy (docs/review-proxy.md), the proxy's address goes in
ORDERCHECK_REVIEW_TRUSTED_PROXY (the app carries it as config["ORDERCHECK_TRUSTED_PROXY"]):
waitress then takes the client address and https from its X-Forwarded-For / -Proto / -Host
headers, and from no one else.
"""

from __future__ import annotations

import threading
from typing import Any

from waitress.server import create_server


class ReviewServer:
    """A waitress server bound to (host, port); port 0 picks a free port (see .port)."""

    def __init__(
        self, app: Any, host: str, port: int, threads: int = 8, trusted_proxy: str | None = None
    ) -> None:
        config = getattr(app, "config", None)
        proxy = trusted_proxy or (config.get("ORDERCHECK_TRUSTED_PROXY") if config else None)
        proxy_options: dict[str, Any] = {}
        if proxy:
            proxy_options = {
                "trusted_proxy": proxy,
                "trusted_proxy_count": 1,
                "trusted_proxy_headers": {
                    "x-forwarded-for",
                    "x-forwarded-proto",
                    "x-forwarded-host",
                },
            }
        self._server: Any = create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            ident="ordercheck",
            clear_untrusted_proxy_headers=True,
            **proxy_options,
        )
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._server.effective_host)

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        """Serve until interrupted (the `ordercheck review` foreground)."""
        self._server.run()

    def start(self) -> ReviewServer:
        """Serve in a daemon thread (tests, embedding); stop() ends it."""
        self._thread = threading.Thread(target=self._server.run, name="review-server", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listening socket and every open connection, in the server's own thread."""
        server = self._server
        if self._thread is None or not self._thread.is_alive():
            server.close()
            server.task_dispatcher.shutdown()
            return

        def close_all() -> None:
            for channel in list(server._map.values()):  # the server, connections, trigger
                channel.close()

        server.trigger.pull_trigger(close_all)
        self._thread.join(timeout)
        server.task_dispatcher.shutdown()
