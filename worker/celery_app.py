"""The Celery application: Redis broker, late acknowledgement, no result backend.

Start more workers on any host with `celery -A worker.celery_app worker` and the same
ORDERCHECK_REDIS_URL. Settings are read once, here, from the environment.
"""

from __future__ import annotations

import os

from celery import Celery, signals

from worker.settings import Settings

QUEUE = "ordercheck"


def make_app(settings: Settings) -> Celery:
    app = Celery("ordercheck", include=["worker.tasks"])
    app.conf.update(
        broker_url=settings.redis_url or "memory://",
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,  # a killed worker's message runs again
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=settings.worker_prefetch,
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # Redis hands an unacknowledged message to another worker after this many seconds;
            # the sweep that does it runs every unacked_restore_interval seconds (kombu's
            # default scans only every 100 s, which would add up to 100 s to every recovery).
            "visibility_timeout": settings.broker_visibility_timeout,
            "unacked_restore_interval": max(1, min(10, settings.broker_visibility_timeout // 10)),
            "unacked_restore_throttle": 1,
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_disable_rate_limits=True,
        broker_pool_limit=10,
        task_time_limit=settings.task_time_limit,
    )
    return app


settings = Settings()
app = make_app(settings)


@signals.worker_init.connect
def _lower_priority(**_: object) -> None:
    """Celery's main process, and the pool processes it forks, yield the CPU to the listener."""
    if settings.worker_nice:
        os.nice(settings.worker_nice)


@signals.worker_init.connect
def _serve_metrics(**_: object) -> None:
    """/metrics of this worker on ORDERCHECK_WORKER_METRICS_PORT, when set (before the pool
    forks: the server runs in a thread of the main process)."""
    if settings.worker_metrics_port is not None:
        start_worker_metrics("0.0.0.0", settings.worker_metrics_port)


def start_worker_metrics(host: str, port: int) -> object:
    """A Prometheus /metrics server in a thread: the pool processes' metrics added up when
    PROMETHEUS_MULTIPROC_DIR is set (it must be, for a prefork pool), else this process's."""
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


@signals.setup_logging.connect
def _logging(**_: object) -> None:
    """Workers log JSON lines like the listener (worker/logs.py), not Celery's format."""
    from worker.logs import configure

    configure(settings.log_level)


@signals.worker_ready.connect
def _report_ready(**_: object) -> None:
    """Tell `ordercheck serve`, which started this worker, that it is ready (worker/serve.py)."""
    fd = os.environ.pop("ORDERCHECK_WORKER_READY_FD", "")
    if fd.isdigit():
        try:
            os.write(int(fd), b"ready\n")
            os.close(int(fd))
        except OSError:
            pass
