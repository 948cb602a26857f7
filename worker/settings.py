"""All of ordercheck's settings: one pydantic-settings object, env prefix ORDERCHECK_.

Read once at the edge (the CLI) and passed down; nothing else reads the environment. Nested
values use "__" (ORDERCHECK_ADVISORY_ROUTES__EPIC__PORT=2576) or JSON
(ORDERCHECK_ADVISORY_ROUTES='{"EPIC": {"host": "127.0.0.1", "port": 2576}}').
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as _SourceError

from worker.errors import OrdercheckError
from worker.models import SiteSettings

# Settings whose values are secrets (or may hold one): an error names them, never their value.
SECRET_FIELDS = frozenset({"review_users", "review_token", "review_secret"})


class Route(BaseModel):
    """Where the advisories for one sending application go."""

    host: str
    port: int = Field(ge=1, le=65535)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ORDERCHECK_", env_nested_delimiter="__", extra="ignore", env_ignore_empty=True
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
    # Runs of one message that may end with the worker killed (task time limit, pool process
    # lost) before it is set aside as a dead letter, listed by `ordercheck dead-letters`.
    max_attempts: int = Field(default=3, ge=1, le=100)
    # Test hook (off when empty): a worker process that takes a message with this MSH-10 kills
    # itself with SIGKILL, as a poison message would; for the dead-letter tests and bench runs.
    chaos_kill_control_id: str = ""
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
    # While the workers are behind (as above), a batch joins the task queued last if that task
    # still waits at the queue's newest end, up to max_task_messages messages a task (1: never).
    max_task_messages: int = Field(default=32, ge=1, le=500)

    # Seconds between the listener's returns of freed heap memory to the operating system
    # (glibc malloc_trim; 0: never). Without them its RSS creeps up with fragmentation.
    memory_release_interval: float = Field(default=60.0, ge=0)

    # MLLP listener.
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=2575, ge=0, le=65535)
    max_frame_bytes: int = Field(default=1024 * 1024, ge=1024)  # bytes
    idle_timeout: float = Field(default=300.0, gt=0)  # seconds without a byte before closing
    max_connections: int = Field(default=100, ge=1)
    # Connections from one address at once: one client cannot take every slot.
    max_connections_per_peer: int = Field(default=20, ge=1)
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
    protocols_file: Path | None = None  # the site protocol map (protocols.toml): RIS codes
    sarcoma_team_on_site: bool = False  # True turns REFER_SARCOMA_CENTRE off
    # Characters of text read per order (procedure text, order texts, notes, in that order);
    # the rest is not read and the advisory's reason says so. Keeps a huge NTE from stalling.
    max_text_chars: int = Field(default=32_000, ge=1_000)

    # Review page.
    review_host: str = "127.0.0.1"
    review_port: int = Field(default=8080, ge=0, le=65535)
    review_users: dict[str, SecretStr] = Field(default_factory=dict)  # user -> password
    review_token: SecretStr | None = None
    review_secret: SecretStr | None = None  # signs sessions; random per start when unset
    # Send the session cookie over HTTPS only (set it when a TLS reverse proxy serves the page).
    review_cookie_secure: bool = False
    # Address of the reverse proxy in front of the page: its X-Forwarded-For / -Proto / -Host
    # are trusted (client address for login throttling, https links). Unset: trust no header.
    review_trusted_proxy: str | None = None
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
    metrics_port: int | None = Field(default=None, ge=0, le=65535)  # the listener's
    # /metrics of a Celery worker started on its own (`celery -A worker.celery_app worker`,
    # docker-compose's `worker`): its pool processes' metrics, added up. `serve`'s own worker
    # reports through the listener's METRICS_PORT instead.
    worker_metrics_port: int | None = Field(default=None, ge=0, le=65535)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        """redis://[:password@]host[:port][/db], rediss://..., or unix:///path/to/socket."""
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("not a Redis URL (redis://host:6379/0, rediss://... or unix://...)")
        try:
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError:
            raise ValueError("the port is not a number") from None
        db = parts.path.strip("/")
        if parts.scheme != "unix" and db and not db.isdigit():
            raise ValueError(f"the database {db!r} is not a number (redis://host:6379/0)")
        return value

    def site(self) -> SiteSettings:
        return SiteSettings(
            sarcoma_team_on_site=self.sarcoma_team_on_site, max_text_chars=self.max_text_chars
        )

    def route_for(self, application: str, facility: str) -> Route | None:
        """The destination of advisories for orders from this sender, or None."""
        routes = {k.upper(): v for k, v in self.advisory_routes.items()}  # env keys lose case
        if "|" not in application:  # MSH-3 and MSH-4 compared as fields of their own
            for key in (f"{application}|{facility}".upper(), application.upper()):
                if key in routes:
                    return routes[key]
        if self.advisory_host and self.advisory_port:
            return Route(host=self.advisory_host, port=self.advisory_port)
        return None

    def sender_allowed(self, application: str, facility: str) -> bool:
        """Whether MSH-3 (and MSH-4) match an entry "APP" or "APP|FACILITY", each compared as a
        field of its own: an MSH-3 of EPIC\\F\\TESTHOSP (EPIC|TESTHOSP) matches no entry."""
        if not self.allowed_senders:
            return True
        app, fac = application.upper(), facility.upper()
        for entry in self.allowed_senders:
            want_app, sep, want_fac = entry.upper().partition("|")
            if want_app == app and (not sep or want_fac == fac):
                return True
        return False


class SettingsError(OrdercheckError):
    """Settings that do not validate; str() is one line per wrong setting, naming it."""


def redact_url(url: str) -> str:
    """*url* without its password (for messages and logs)."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def _env_name(field: str) -> str:
    return f"ORDERCHECK_{field.upper()}"


def _shown(field: str, value: object) -> str:
    if field in SECRET_FIELDS:
        return ""
    if field == "redis_url" and isinstance(value, str):
        value = redact_url(value)
    return f"={value!r}" if isinstance(value, str) else f"={str(value)!r}"


def _json_hint(field: str) -> str:
    info = Settings.model_fields.get(field)
    origin = typing.get_origin(info.annotation) if info is not None else None
    if origin is list:
        return 'not a JSON list (e.g. \'["EPIC", "RIS|RADIOLOGY"]\')'
    if origin is dict:
        return 'not a JSON object (e.g. \'{"quality": "..."}\')'
    return "not valid JSON"


def _reason(err: Any) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return "not an integer"
    if kind in ("float_parsing", "float_type"):
        return "not a number"
    if kind in ("bool_parsing", "bool_type"):
        return "not true or false"
    if kind == "greater_than_equal":
        return f"must be {ctx.get('ge')} or more"
    if kind == "less_than_equal":
        return f"must be {ctx.get('le')} or less"
    if kind == "greater_than":
        return f"must be more than {ctx.get('gt')}"
    if kind == "less_than":
        return f"must be less than {ctx.get('lt')}"
    if kind == "missing":
        return "not set (required)"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}"
    if kind in ("json_invalid", "list_type", "dict_type"):
        return _json_hint(str(err["loc"][0]))
    if kind == "value_error":
        return str(err.get("msg", "")).removeprefix("Value error, ")
    return str(err.get("msg", "invalid"))


def describe(exc: ValidationError | _SourceError) -> str:
    """One line per wrong setting: ORDERCHECK_WORKERS='abc': not an integer."""
    if isinstance(exc, _SourceError):
        found = re.search(r'field "([^"]+)"', str(exc))
        field = found.group(1) if found else ""
        if not field:
            return f"invalid settings: {exc}"
        raw = next(
            (v for k, v in os.environ.items() if k.upper() == _env_name(field)), "(not found)"
        )
        return f"{_env_name(field)}{_shown(field, raw)}: {_json_hint(field)}"
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        field = loc[0] if loc else ""
        name = _env_name(field) + "".join(f"__{p.upper()}" for p in loc[1:])
        shown = "" if err.get("type") == "missing" else _shown(field, err.get("input"))
        lines.append(f"{name}{shown}: {_reason(err)}")
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and *overrides*); SettingsError names what is wrong."""
    try:
        return Settings(**overrides)
    except (ValidationError, _SourceError) as exc:
        raise SettingsError(describe(exc)) from None
