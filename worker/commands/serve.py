"""`ordercheck serve`: the MLLP listener and workers (design.md, "Contracts")."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

from worker.errors import GuidelineError
from worker.settings import Settings


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0-65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535)")
    return port


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the MLLP listener and the workers",
        description="Listen for HL7 orders over MLLP (127.0.0.1:2575 unless "
        "ORDERCHECK_LISTEN_HOST/PORT say otherwise), ACK them once queued, check "
        "them and deliver advisories to ORDERCHECK_ADVISORY_HOST/PORT. Without "
        "ORDERCHECK_REDIS_URL it runs on the embedded default (one process, no "
        "Redis). In Redis mode it pings Redis and checks the Celery worker's imports, "
        "binds every port, starts the worker and waits until it is ready before it "
        "says 'listening'. Exit status: 0 stopped, 2 a setting, a port or Redis, 3 the "
        "Celery worker could not start.",
    )
    p.add_argument(
        "--host", help="listen address (default: ORDERCHECK_LISTEN_HOST, 127.0.0.1 unless set)"
    )
    p.add_argument(
        "--port",
        type=port_number,
        help="listen port (default: ORDERCHECK_LISTEN_PORT, 2575 unless set)",
    )
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


@contextlib.contextmanager
def metrics_folder(settings: Settings) -> Iterator[None]:
    """In Redis mode with metrics on, a folder the listener and the Celery worker processes
    write their metrics to (PROMETHEUS_MULTIPROC_DIR, before prometheus_client is imported);
    /metrics adds them up. A folder made here is removed on exit."""
    made = None
    if (
        settings.redis_url
        and settings.metrics_port is not None
        and not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    ):
        made = tempfile.mkdtemp(prefix="ordercheck-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    try:
        yield
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    updates = {
        k: v for k, v in (("listen_host", args.host), ("listen_port", args.port)) if v is not None
    }
    if updates:
        settings = settings.model_copy(update=updates)
    with metrics_folder(settings):
        from worker import serve
        from worker.cds.server import SettingsError as CdsSettingsError
        from worker.cds.server import tls_context, verifier_for

        try:
            if args.cds:  # refuse bad CDS settings before the listener starts
                verifier_for(settings)
                tls_context(settings)
            return serve.run(settings, with_review=args.review, with_cds=args.cds)
        except (GuidelineError, CdsSettingsError) as exc:
            print(f"ordercheck: {exc}", file=sys.stderr)
            return 2
