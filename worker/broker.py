"""Celery task messages written straight to the Redis queue, in the journal's transaction.

The listener queues one `ordercheck.validate_batch` task per batch. Through Celery's
`apply_async` that costs about half of the listener's CPU per batch (message building, argument
repr, kombu's producer) and one round trip of its own after the journal's (bench/PERFORMANCE.md).
Here the same message, in Celery's task protocol 2 as kombu's Redis transport stores it (a JSON
envelope, the body base64 JSON `[args, kwargs, embed]`), is pushed with LPUSH in the same
MULTI/EXEC as the journal entry: one round trip, and the message is queued if and only if it is
journaled. tests/test_broker.py checks the envelope against the one Celery builds, and every
Redis-mode test has a real Celery worker consume these messages.

Only for the Redis broker with no priorities (the queue key is the queue name).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"


def task_message(
    task: str, args: list[Any], queue: str, time_limit: int | None, task_id: str | None = None
) -> str:
    """The queued form of `task.apply_async(args)` on *queue* (the payload kombu LPUSHes);
    *task_id*: the task's id (default: a new one)."""
    task_id = task_id or str(uuid.uuid4())
    body = json.dumps([args, {}, _EMBED]).encode("utf-8")
    return json.dumps(
        {
            "body": base64.b64encode(body).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": task,
                "id": task_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [time_limit, None],
                "root_id": task_id,
                "parent_id": None,
                # Celery puts a repr of the arguments here for its logs: never patient data.
                "argsrepr": f"<{_count(args)} messages>",
                "kwargsrepr": "{}",
                "origin": _ORIGIN,
                "ignore_result": True,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def _count(args: list[Any]) -> int:
    return len(args[0]) if args and isinstance(args[0], list) else len(args)
