"""`ordercheck review [--host H] [--port P]`: serves the review web page (waitress)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "review",
        help="serve the review web page",
        description="Serve the review web page on ORDERCHECK_REVIEW_HOST:"
        "ORDERCHECK_REVIEW_PORT (127.0.0.1:8080 unless set). It reads the "
        "advisory store at ORDERCHECK_REDIS_URL; logins come from "
        "ORDERCHECK_REVIEW_USERS or ORDERCHECK_REVIEW_TOKEN.",
    )
    p.add_argument("--host", default=None, help="address to listen on (overrides the settings)")
    p.add_argument("--port", type=int, default=None, help="port (overrides the settings)")
    p.set_defaults(handler=run_review)


def run_review(args: argparse.Namespace) -> int:
    from worker.errors import GuidelineError
    from worker.review import create_app
    from worker.review.auth import login_configured
    from worker.review.server import ReviewServer
    from worker.runtime import open_store
    from worker.settings import Settings

    settings = Settings()  # a wrong setting: one line per setting at the CLI edge
    host = args.host or settings.review_host
    port = settings.review_port if args.port is None else args.port
    if not 0 <= port <= 65535:
        print(f"ordercheck review: port {port} is out of range", file=sys.stderr)
        return 2
    if settings.redis_url:
        from worker.preflight import redis_problem

        problem = redis_problem(settings.redis_url)
        if problem is not None:
            print(f"ordercheck review: {problem}", file=sys.stderr)
            return 2
    else:
        print(
            "ordercheck review: note: ORDERCHECK_REDIS_URL is not set, so the page shows an "
            "empty in-memory store. Set it to the Redis of the running `ordercheck serve` "
            "to review its advisories.",
            file=sys.stderr,
        )
    if not login_configured(settings):
        print(
            "ordercheck review: note: no login is configured (ORDERCHECK_REVIEW_USERS or "
            "ORDERCHECK_REVIEW_TOKEN), so nobody can log in.",
            file=sys.stderr,
        )
    try:
        app = create_app(open_store(settings), settings)
    except GuidelineError as exc:  # a bad site protocols.toml or code map: one line, no traceback
        print(f"ordercheck review: {exc}", file=sys.stderr)
        return 2
    try:
        server = ReviewServer(app, host, port)
    except OSError as exc:
        print(
            f"ordercheck review: cannot listen on {host}:{port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    print(f"ordercheck review: serving on {server.url}/ (Ctrl-C to stop)", file=sys.stderr)
    server.run()
    return 0
