"""All of ordercheck's settings: one pydantic-settings object, env prefix ORDERCHECK_.

Read once at the edge (the CLI) and passed down; nothing else reads the environment. Nested
values use "__" (ORDERCHECK_ADVISORY_ROUTES__EPIC__PORT=2576) or JSON
(ORDERCHECK_ADVISORY_ROUTES='{"EPIC": {"host": "127.0.0.1", "port": 2576}}').
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.models import SiteSettings


class Route(BaseModel):
    """Where the advisories for one sending application go."""

    host: str
    port: int = Field(ge=1, le=65535)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ORDERCHECK_", env_nested_delimiter="__", extra="ignore"
    )

    # Broker and store. None: the embedded default (one process, in memory, no Redis).
    redis_url: str | None = None
    workers: int | None = Field(default=None, ge=1, le=256)  # None: one per CPU core
    # Seconds before Redis gives a message taken by a worker that never acknowledged it (the
    # worker died, or lost Redis while holding it) to another worker. Keep it above the longest
    # task (task_time_limit) and delivery_backoff_max, or a delivery retry waiting that long
    # runs twice.
    broker_visibility_timeout: int = Field(default=300, ge=5)
    # Seconds after which a task is killed and its message runs again. A batch normally takes
    # milliseconds; its slow parts are bounded on their own (Redis socket timeout 10 s, one
    # advisory_ack_timeout per destination and batch, queueing a retry for half this limit).
    # Celery keeps a timer entry per task for this long, so the main process's memory grows
    # with task rate x limit: keep it short.
    task_time_limit: int = Field(default=60, ge=10)
    # Nice increment of the Celery worker processes: on a host shared with a listener, the
    # listener's ACKs go first and the checks absorb a burst a few milliseconds later.
    worker_nice: int = Field(default=5, ge=0, le=19)
    # Tasks each pool process may hold reserved (Celery's worker_prefetch_multiplier). 2 keeps a
    # next task ready in the main process, but gave no measurable throughput here, and the
    # tasks reserved when Redis is lost wait for broker_visibility_timeout: 1 strands fewer.
    worker_prefetch: int = Field(default=1, ge=1, le=16)
    # When more than batch_when_queued tasks wait in the broker queue (the workers are behind),
    # the listener waits batch_linger_behind seconds before each batch to make it larger: fewer
    # tasks cost the workers less per message (batch_linger_behind 0 turns it off).
    batch_when_queued: int = Field(default=4, ge=0)
    batch_linger_behind: float = Field(default=0.004, ge=0, le=0.1)

    # Seconds between the listener's returns of freed heap memory to the operating system
    # (glibc malloc_trim; 0: never). Without them its RSS creeps up with fragmentation.
    memory_release_interval: float = Field(default=60.0, ge=0)

    # MLLP listener.
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=2575, ge=0, le=65535)
    max_frame_bytes: int = Field(default=1024 * 1024, ge=1024)  # bytes
    idle_timeout: float = Field(default=300.0, gt=0)  # seconds without a byte before closing
    max_connections: int = Field(default=100, ge=1)
    allowed_senders: list[str] = Field(default_factory=list)  # "APP" or "APP|FACILITY"; empty: all
    processing_ids: list[str] = Field(default_factory=lambda: ["P", "T", "D"])  # MSH-11
    versions: list[str] = Field(
        default_factory=lambda: [
            "2.1",
            "2.2",
            "2.3",
            "2.3.1",
            "2.4",
            "2.5",
            "2.5.1",
            "2.6",
            "2.7",
            "2.7.1",
            "2.8",
            "2.8.1",
            "2.8.2",
            "2.9",
        ]
    )
    tls_cert: Path | None = None  # PEM certificate chain for the listener (TLS when set)
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # when set, client certificates are required
    recheck_window_seconds: int = Field(default=900, ge=0)  # re-check flags on a newer MRI
    dedup_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)  # resend window (MSH-10)

    # Our own identity in the messages we send (MSH-3 / MSH-4).
    application: str = "ORDERCHECK"
    facility: str = "ORDERCHECK"

    # Advisory delivery.
    advisory_host: str | None = None
    advisory_port: int | None = Field(default=None, ge=1, le=65535)
    advisory_routes: dict[str, Route] = Field(default_factory=dict)  # by MSH-3 or "MSH-3|MSH-4"
    advisory_format: Literal["oru", "order-echo"] = "oru"
    advisory_for_no_criteria: bool = False
    advisory_ack_timeout: float = Field(default=10.0, gt=0)  # seconds to wait for the ACK
    # Advisories of one batch (different patients) a worker process delivers at once, each on
    # a connection of its own: the batch waits about one ACK, not one per advisory. 1: one at
    # a time, on one connection per worker process (an ordering system that takes few).
    delivery_concurrency: int = Field(default=4, ge=1, le=32)
    delivery_retries: int = Field(default=8, ge=0)
    delivery_backoff: float = Field(default=2.0, gt=0)  # seconds; doubles each retry
    delivery_backoff_max: float = Field(default=300.0, gt=0)
    advisory_tls_ca: Path | None = None  # verify the ordering system's certificate (TLS when set)
    advisory_tls_cert: Path | None = None  # our client certificate, if asked for
    advisory_tls_key: Path | None = None

    # Guideline.
    code_map: Path | None = None  # the site code-map TOML file (local procedure codes)
    sarcoma_team_on_site: bool = False  # True turns REFER_SARCOMA_CENTRE off

    # Review page.
    review_host: str = "127.0.0.1"
    review_port: int = Field(default=8080, ge=0, le=65535)
    review_users: dict[str, SecretStr] = Field(default_factory=dict)  # user -> password
    review_token: SecretStr | None = None
    review_secret: SecretStr | None = None  # signs sessions; random per start when unset
    retention_days: int = Field(default=365, ge=1)  # advisories and raw messages kept this long

    # CDS Hooks service (`ordercheck cds`, `serve --cds`). JWT: per the CDS Hooks security
    # section (iss, aud, exp, jti), checked when an issuer and its key (PEM) or JWKS file are set.
    # A non-loopback address needs the JWT check unless cds_allow_unauthenticated says otherwise.
    cds_host: str = "127.0.0.1"
    cds_port: int = Field(default=8090, ge=0, le=65535)
    cds_tls_cert: Path | None = None  # PEM certificate chain (HTTPS when set, with cds_tls_key)
    cds_tls_key: Path | None = None
    cds_jwt_issuer: str | None = None  # the CDS client's iss
    cds_jwt_key: Path | None = None  # its public key (PEM)
    cds_jwt_jwks: Path | None = None  # or its JSON Web Key Set file
    cds_jwt_audience: list[str] = Field(default_factory=list)  # empty: the URL that was called
    cds_allow_unauthenticated: bool = False
    cds_fhir_timeout: float = Field(default=2.0, gt=0, le=30)  # seconds for all FHIR reads

    # Logs, metrics and health.
    log_level: str = "INFO"  # JSON lines on stderr; never patient data
    metrics_port: int | None = Field(default=None, ge=0, le=65535)

    def site(self) -> SiteSettings:
        return SiteSettings(sarcoma_team_on_site=self.sarcoma_team_on_site)

    def route_for(self, application: str, facility: str) -> Route | None:
        """The destination of advisories for orders from this sender, or None."""
        routes = {k.upper(): v for k, v in self.advisory_routes.items()}  # env keys lose case
        for key in (f"{application}|{facility}".upper(), application.upper()):
            if key in routes:
                return routes[key]
        if self.advisory_host and self.advisory_port:
            return Route(host=self.advisory_host, port=self.advisory_port)
        return None

    def sender_allowed(self, application: str, facility: str) -> bool:
        if not self.allowed_senders:
            return True
        allowed = {a.upper() for a in self.allowed_senders}
        return application.upper() in allowed or f"{application}|{facility}".upper() in allowed
