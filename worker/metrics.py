"""Prometheus metrics. Labels carry codes and rule ids only, never patient data.

In Redis mode the Celery workers are separate processes: `ordercheck serve` sets
PROMETHEUS_MULTIPROC_DIR before starting them so the listener's /metrics adds theirs up. The
gauges of the delivery view (queue depth, pending and undelivered by destination, workers up)
are computed at each scrape of the listener: worker/opsview.py.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RECEIVED = Counter("ordercheck_messages_received", "HL7 frames received by the listener")
ACKED = Counter("ordercheck_acks", "ACKs sent, by MSA-1 code", ["code"])
REJECTED = Counter(
    "ordercheck_messages_refused", "Messages answered AR/AE/CR/CE", ["code", "reason"]
)
RESENDS = Counter("ordercheck_resends", "Resent messages answered with the first ACK")
CHECKED = Counter("ordercheck_orders_checked", "Orders checked, by verdict", ["verdict"])
FLAGGED = Counter("ordercheck_flags", "Flags raised, by rule", ["rule"])
DELIVERED = Counter("ordercheck_advisories_delivered", "Advisories delivered and ACKed")
DELIVERY_FAILED = Counter("ordercheck_delivery_failures", "Failed delivery attempts")
UNDELIVERED = Counter(
    "ordercheck_advisories_undelivered", "Advisories marked undelivered after the last retry"
)
ACK_LATENCY = Histogram(
    "ordercheck_ack_seconds",
    "Frame received to ACK ready (seconds)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1),
)
DELIVERY_LATENCY = Histogram(
    "ordercheck_delivery_seconds",
    "End to end: order message received by the listener to its advisory ACKed by the "
    "ordering system (seconds; includes queueing, checking and delivery retries)",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300),
)
INGEST_BATCH = Histogram(
    "ordercheck_ingest_batch_messages",
    "Frames the listener handled together (one broker call per batch)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 100),
)
