"""`ordercheck serve`: the MLLP listener and workers (design.md, "Contracts")."""

from __future__ import annotations

import argparse
import sys

from worker.errors import GuidelineError
from worker.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the MLLP listener and the workers",
        description="Listen for HL7 orders over MLLP (127.0.0.1:2575 unless "
        "ORDERCHECK_LISTEN_HOST/PORT say otherwise), ACK them once queued, check "
        "them and deliver advisories to ORDERCHECK_ADVISORY_HOST/PORT. Without "
        "ORDERCHECK_REDIS_URL it runs on the embedded default (one process, no "
        "Redis).",
    )
    p.add_argument("--host", help="listen address (ORDERCHECK_LISTEN_HOST)")
    p.add_argument("--port", type=int, help="listen port (ORDERCHECK_LISTEN_PORT)")
    p.add_argument(
        "--review",
        action="store_true",
        help="also serve the review page (ORDERCHECK_REVIEW_HOST/PORT) from this "
        "process: the way to review advisories on the embedded default",
    )
    p.add_argument(
        "--cds",
        action="store_true",
        help="also serve CDS Hooks (ORDERCHECK_CDS_HOST/PORT) from this process, on the same "
        "advisory store: order-entry feedback joins the review page's audit trail",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    if settings.redis_url and settings.metrics_port is not None:
        # Before prometheus_client is imported: the listener and the Celery worker processes
        # write their metrics to this folder and /metrics adds them up.
        import os
        import tempfile

        os.environ.setdefault(
            "PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="ordercheck-metrics-")
        )
    from worker import serve
    from worker.cds.server import SettingsError, tls_context, verifier_for

    updates = {
        k: v for k, v in (("listen_host", args.host), ("listen_port", args.port)) if v is not None
    }
    if updates:
        settings = settings.model_copy(update=updates)
    try:
        if args.cds:  # refuse bad CDS settings before the listener starts
            verifier_for(settings)
            tls_context(settings)
        return serve.run(settings, with_review=args.review, with_cds=args.cds)
    except (GuidelineError, SettingsError) as exc:
        print(f"ordercheck: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"ordercheck: cannot listen on {settings.listen_host}:{settings.listen_port}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
