"""`ordercheck cds`: the CDS Hooks 2.0 service (design.md, "Contracts")."""

from __future__ import annotations

import argparse
import contextlib
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cds",
        help="serve the guideline as CDS Hooks 2.0 services (order-sign, order-select)",
        description="Serve CDS Hooks 2.0 on ORDERCHECK_CDS_HOST:ORDERCHECK_CDS_PORT "
        "(127.0.0.1:8090 unless set): GET /cds-services lists the order-sign and "
        "order-select services; POST /cds-services/{id} answers cards for the draft "
        "ServiceRequests; POST /cds-services/{id}/feedback records accepted and overridden "
        "cards in the advisory audit trail (ORDERCHECK_REDIS_URL, else in memory).",
    )
    p.add_argument("--host", default=None, help="address to listen on (ORDERCHECK_CDS_HOST)")
    p.add_argument("--port", type=int, default=None, help="port (ORDERCHECK_CDS_PORT)")
    p.set_defaults(handler=run_cds)


def run_cds(args: argparse.Namespace) -> int:
    from worker.cds.server import SettingsError, build_server
    from worker.errors import GuidelineError
    from worker.guideline import load_knowledge
    from worker.logs import configure
    from worker.runtime import open_store
    from worker.settings import Settings

    try:
        settings = Settings()
    except ValueError as exc:
        print(f"ordercheck cds: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_level)
    host = args.host or settings.cds_host
    port = settings.cds_port if args.port is None else args.port
    if not 0 <= port <= 65535:
        print(f"ordercheck cds: port {port} is out of range", file=sys.stderr)
        return 2
    try:
        knowledge = load_knowledge(settings.code_map)
        server = build_server(settings, knowledge, open_store(settings), host, port)
    except (GuidelineError, SettingsError) as exc:
        print(f"ordercheck cds: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"ordercheck cds: cannot listen on {host}:{port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    print(
        f"ordercheck cds: CDS Hooks on {server.url}/cds-services (Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return 0
