"""The listener's direct queueing (worker/broker.py) writes the message Celery itself would."""

from __future__ import annotations

import base64
import json
from typing import Any

import fakeredis
import pytest

from worker.broker import task_message
from worker.celery_app import QUEUE


def _celery_message(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What `validate_batch.apply_async` pushes to Redis, captured from kombu's own publish."""
    from kombu.transport.redis import Channel

    from worker import celery_app, tasks

    pushed: list[tuple[str, dict[str, Any]]] = []

    def put(self: Any, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        pushed.append((queue, json.loads(json.dumps(message))))

    monkeypatch.setattr(Channel, "_put", put)
    monkeypatch.setattr(
        Channel, "_create_client", lambda self, asynchronous=False: fakeredis.FakeRedis()
    )
    celery_app.app.conf.broker_url = "redis://127.0.0.1:6399/0"  # never reached: _put is replaced
    try:
        with celery_app.app.connection_for_write() as conn:
            tasks.validate_batch.apply_async(([("MSH|x", 1.5)],), connection=conn, retry=False)
    finally:
        celery_app.app.conf.broker_url = celery_app.settings.redis_url or "memory://"
    assert len(pushed) == 1
    queue, message = pushed[0]
    assert queue == QUEUE
    return message


def test_the_envelope_matches_celerys(monkeypatch: pytest.MonkeyPatch) -> None:
    ours = json.loads(task_message("ordercheck.validate_batch", [[["MSH|x", 1.5]]], QUEUE, 60))
    theirs = _celery_message(monkeypatch)
    assert set(ours) == set(theirs)
    assert set(ours["headers"]) == set(theirs["headers"])
    assert set(ours["properties"]) == set(theirs["properties"])
    for key in ("content-type", "content-encoding"):
        assert ours[key] == theirs[key]
    for key in ("lang", "task", "retries", "timelimit", "ignore_result", "eta", "expires"):
        assert ours["headers"][key] == theirs["headers"][key], key
    for key in ("delivery_mode", "delivery_info", "priority", "body_encoding"):
        assert ours["properties"][key] == theirs["properties"][key], key
    assert base64.b64decode(ours["body"]) == base64.b64decode(theirs["body"])
    assert (
        ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"]
    )
    assert "MSH" not in ours["headers"]["argsrepr"]  # no message text in Celery's logs


def test_each_message_has_its_own_ids() -> None:
    a = json.loads(task_message("t", [[]], "q", None))
    b = json.loads(task_message("t", [[]], "q", None))
    assert a["headers"]["id"] != b["headers"]["id"]
    assert a["properties"]["delivery_tag"] != b["properties"]["delivery_tag"]
