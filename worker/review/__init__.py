"""The review page and the helpers it shares with `ordercheck flags`.

    create_app(store, settings) -> flask.Flask      the web page (worker.review.app)
    filters.Filters                                 filters as typed -> AdvisoryQuery
    summary.summarise / protocol_worklist           weekly counts, override share, worklist
    present                                         HL7 lines, table, CSV and detail text
    decide.make_decision / decide                   checked review decisions (audit trail)
    server.ReviewServer                             the WSGI server (waitress) in a thread

Flask is imported only when the page is built, so the CLI's `flags` commands stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from worker.settings import Settings
    from worker.store import AdvisoryStore

__all__ = ["create_app"]


def create_app(store: AdvisoryStore, settings: Settings) -> Flask:
    """The review web page over *store*, logins from *settings* (see worker.review.app)."""
    from worker.review.app import create_app as _create_app

    return _create_app(store, settings)
