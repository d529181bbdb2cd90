"""One frozen Settings object, built once from the environment (CLI flags may override)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import msgspec

from infra.errors import ConfigError

_SECRET_IN_URL = re.compile(r"(://[^:/@]*:)[^@]*@")


def redact_url(url: str) -> str:
    """Hide the password in a DSN/URL for logs and reprs."""
    return _SECRET_IN_URL.sub(r"\1***@", url)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Service configuration. Field docs name the environment variable.

    ``database_url`` / ``nats_url`` empty means: start embedded servers under ``state_dir``.
    """

    database_url: str = ""  # AUDIT_DATABASE_URL (see "Database credentials" in the README)
    # The owner's (migration) credentials. Where set, this process migrates, provisions the
    # runtime login and may run retention; AUDIT_DATABASE_URL is then the runtime login
    # (may be empty: derived from this URL and the runtime password).
    database_owner_url: str = ""  # AUDIT_DATABASE_OWNER_URL
    # One nats:// or tls:// URL, or several comma-separated (the nodes of a cluster: the
    # first that answers is used, the others on reconnects). :func:`nats_servers` splits it.
    nats_url: str = ""  # AUDIT_NATS_URL
    state_dir: str = ".auditlog"  # AUDIT_STATE_DIR
    # Admin bearer tokens, comma-separated (several at once for rotation). Unset: the
    # tokens kept in <state dir>/admin-tokens, one made at the first start.
    admin_token: str = ""  # AUDIT_ADMIN_TOKEN
    token_secret: str = ""  # AUDIT_TOKEN_SECRET (page-token HMAC key; default: state dir)
    http_host: str = "127.0.0.1"  # AUDIT_HTTP_HOST
    http_port: int = 8080  # AUDIT_HTTP_PORT
    grpc_port: int = 50051  # AUDIT_GRPC_PORT
    # TLS for the HTTP listener and gRPC (PEM files). With a client CA, clients must present
    # a certificate it signed (mutual TLS).
    tls_cert: str = ""  # AUDIT_TLS_CERT
    tls_key: str = ""  # AUDIT_TLS_KEY
    tls_client_ca: str = ""  # AUDIT_TLS_CLIENT_CA
    metrics_port: int = 9464  # AUDIT_METRICS_PORT (pipeline-only workers)
    log_format: str = "text"  # AUDIT_LOG_FORMAT: text | json
    log_level: str = "INFO"  # AUDIT_LOG_LEVEL
    # Pipeline
    stream: str = "AUDIT"  # AUDIT_STREAM
    subject: str = "audit.events"  # AUDIT_SUBJECT
    consumer: str = "auditlog-pipeline"  # AUDIT_CONSUMER
    dlq_stream: str = "AUDIT_DLQ"  # AUDIT_DLQ_STREAM
    dlq_subject: str = "audit.dlq"  # AUDIT_DLQ_SUBJECT
    commit_subject: str = "audit.committed"  # AUDIT_COMMIT_SUBJECT (core NATS notifications)
    write_timeout_s: float = 10.0  # AUDIT_WRITE_TIMEOUT_S: sync writes wait this for commit
    batch_max_events: int = 20_000  # AUDIT_BATCH_MAX_EVENTS (most events per flush)
    batch_max_latency_ms: int = 0  # AUDIT_BATCH_MAX_LATENCY_MS (0: whenever a flush slot is free)
    fetch_batch: int = 2000  # AUDIT_FETCH_BATCH
    flush_concurrency: int = 2  # AUDIT_FLUSH_CONCURRENCY (transactions in flight per worker)
    ack_wait_s: float = 60.0  # AUDIT_ACK_WAIT_S
    dedup_window: int = 200_000  # AUDIT_DEDUP_WINDOW (ids remembered in memory)
    workers: int = 1  # AUDIT_WORKERS
    shutdown_timeout_s: float = 20.0  # AUDIT_SHUTDOWN_TIMEOUT_S
    db_pool_size: int = 8  # AUDIT_DB_POOL_SIZE (the API's pool)
    pipeline_pool_size: int = 5  # AUDIT_PIPELINE_POOL_SIZE (+1 kept for bucket claims)
    db_acquire_timeout_s: float = 5.0  # AUDIT_DB_ACQUIRE_TIMEOUT_S (API: then 503)
    partitions_ahead_months: int = 2  # AUDIT_PARTITIONS_AHEAD_MONTHS
    # Source stream: interest retention (a message goes once the pipeline acked it), and
    # at most this many bytes of backlog; beyond it JetStream refuses publishers.
    stream_max_bytes: int = 4 * 1024**3  # AUDIT_STREAM_MAX_BYTES
    # Copies of every stream the service makes (AUDIT, AUDIT_DLQ, AUDIT_CHECKPOINTS) on a
    # NATS cluster; raised in place on existing streams, never lowered (README, "NATS cluster").
    stream_replicas: int = 1  # AUDIT_STREAM_REPLICAS (1..5)
    # Dead letters (raw payloads): kept this long and at most this many bytes; when full,
    # new dead letters are refused and their messages wait in the source stream.
    dlq_max_age_days: float = 30.0  # AUDIT_DLQ_MAX_AGE_DAYS
    dlq_max_bytes: int = 1024**3  # AUDIT_DLQ_MAX_BYTES
    # Heavy reads (exports, stats): at once in one API process, and per key; 0 = no limit.
    heavy_read_concurrency: int = 2  # AUDIT_HEAVY_READ_CONCURRENCY
    heavy_read_per_key: int = 1  # AUDIT_HEAVY_READ_PER_KEY
    export_rows_per_s: int = 10_000  # AUDIT_EXPORT_ROWS_PER_S (pace of one export; 0 = off)
    # An export fails (visibly) when PostgreSQL sends nothing for this long.
    export_idle_timeout_s: float = 60.0  # AUDIT_EXPORT_IDLE_TIMEOUT_S
    # Accepted occurred_at, measured from when the event was received (JetStream's
    # timestamp, or when a write API took it). Importing older history: raise the age.
    max_future_skew_s: float = 900.0  # AUDIT_MAX_FUTURE_SKEW_S
    max_event_age_days: float = 366.0  # AUDIT_MAX_EVENT_AGE_DAYS
    # Bytes of delivered-but-unacked messages a worker holds (pull requests carry max_bytes).
    max_inflight_bytes: int = 64 * 1024 * 1024  # AUDIT_MAX_INFLIGHT_BYTES
    # /readyz says "degraded: stalled" after this long without a commit while messages wait.
    stall_after_s: float = 60.0  # AUDIT_STALL_AFTER_S
    # NATS authentication and TLS, applied to every connection the service makes.
    nats_user: str = ""  # AUDIT_NATS_USER
    nats_password: str = ""  # AUDIT_NATS_PASSWORD
    nats_token: str = ""  # AUDIT_NATS_TOKEN
    nats_creds: str = ""  # AUDIT_NATS_CREDS (a .creds file: JWT + nkey seed)
    nats_nkey_seed: str = ""  # AUDIT_NATS_NKEY_SEED (a file holding an nkey seed)
    nats_tls_ca: str = ""  # AUDIT_NATS_TLS_CA (CA bundle file; enables TLS)
    nats_tls_cert: str = ""  # AUDIT_NATS_TLS_CERT (client certificate file, mutual TLS)
    nats_tls_key: str = ""  # AUDIT_NATS_TLS_KEY
    # Retention: how long events stay readable (per-tenant overrides and legal holds in
    # audit.tenant_policies). Default 7 years.
    retention_days: int = 2557  # AUDIT_RETENTION_DAYS
    # How often `auditlog run` drops what retention allows (owner credentials); 0: never
    # (then run `auditlog retention apply` from cron).
    retention_interval_s: float = 86400.0  # AUDIT_RETENTION_INTERVAL_S
    # Before a month is dropped, each tenant's events in it are written as a gzipped
    # auditor bundle here and read back and verified: a directory, or s3://bucket/prefix
    # (credentials and region as boto3 finds them: AWS_* variables, ~/.aws, instance role).
    retention_archive: str = ""  # AUDIT_RETENTION_ARCHIVE ("": no archive unless a tenant asks)
    archive_s3_endpoint: str = ""  # AUDIT_ARCHIVE_S3_ENDPOINT (an S3-compatible server's URL)
    # The service logs in as <database>_runtime (a member of auditlog_app only) with this
    # password, set by the migration credentials at start; default: kept in the state dir.
    # Replicas on several hosts must share it.
    runtime_password: str = ""  # AUDIT_RUNTIME_PASSWORD
    # Signed checkpoints (C2SP signed notes of tlog-checkpoints over each tenant's log).
    checkpoint_interval_s: float = 60.0  # AUDIT_CHECKPOINT_INTERVAL_S (0: never)
    signing_key_file: str = ""  # AUDIT_SIGNING_KEY_FILE (default: <state dir>/signing-key)
    log_origin: str = "auditlog.local"  # AUDIT_LOG_ORIGIN (key name; origin <it>/<tenant>)
    checkpoint_stream: str = "AUDIT_CHECKPOINTS"  # AUDIT_CHECKPOINT_STREAM (the witness copy)
    checkpoint_subject: str = "audit.checkpoints"  # AUDIT_CHECKPOINT_SUBJECT (.<tenant token>)
    checkpoint_file: str = ""  # AUDIT_CHECKPOINT_FILE (also append every signed note here)
    # The search index is filled behind ingestion (pipeline/indexer.py) this often by the
    # process holding its lease (0: never; `q` stays exact, slower); /readyz is degraded
    # while its oldest unindexed event is older than the second bound. Each indexer call
    # costs PostgreSQL per tenant behind as well as per event: once a second instead of
    # every 0.25 s cut its CPU per event by ~7% under a drain (benchmarks/README.md).
    search_index_interval_s: float = 1.0  # AUDIT_SEARCH_INDEX_INTERVAL_S (0: off)
    search_lag_degraded_s: float = 60.0  # AUDIT_SEARCH_LAG_DEGRADED_S
    # Reads, exports and key/policy changes logged into the tenant's own log; reads are
    # summarised per key and filter over this window (query_api/access_log.py).
    access_log: bool = True  # AUDIT_ACCESS_LOG
    access_log_window_s: float = 60.0  # AUDIT_ACCESS_LOG_WINDOW_S
    # The viewer page (/ui/) and its tokens (query_api/viewer.py): the longest a viewer
    # token may live, and who may frame the page (CSP frame-ancestors sources).
    viewer_token_max_ttl_s: int = 3600  # AUDIT_VIEWER_TOKEN_MAX_TTL_S
    ui_frame_ancestors: str = "'none'"  # AUDIT_UI_FRAME_ANCESTORS
    # Kafka source (pipeline/source_kafka.py): consumed beside NATS when a bootstrap is set.
    kafka_bootstrap: str = ""  # AUDIT_KAFKA_BOOTSTRAP (host:port[,host:port...]; empty: off)
    kafka_topic: str = "audit.events"  # AUDIT_KAFKA_TOPIC
    kafka_group: str = "auditlog"  # AUDIT_KAFKA_GROUP (consumer group of every worker)
    kafka_dlq_topic: str = "audit.dlq"  # AUDIT_KAFKA_DLQ_TOPIC
    kafka_max_message_bytes: int = 1_048_576  # AUDIT_KAFKA_MAX_MESSAGE_BYTES (dead letters fit)
    kafka_session_timeout_s: float = 10.0  # AUDIT_KAFKA_SESSION_TIMEOUT_S
    nats_ingest: bool = True  # AUDIT_NATS_INGEST (false: consume audit.events from Kafka only)
    # API rate limit per tenant key (every protocol); 0 disables. The admin token is exempt.
    rate_limit_per_s: float = 1000.0  # AUDIT_RATE_LIMIT_PER_S
    rate_limit_burst: int = 2000  # AUDIT_RATE_LIMIT_BURST
    # Streams out (pipeline/streams.py): every `auditlog run` / `auditlog pipeline` process
    # delivers the streams whose lease it holds, unless this is false.
    streams_deliver: bool = True  # AUDIT_STREAMS_DELIVER
    # Destinations resolving to non-public addresses (loopback, private, link-local, cloud
    # metadata...) are refused unless inside these comma-separated networks (CIDR).
    streams_allow_private: str = ""  # AUDIT_STREAMS_ALLOW_PRIVATE (e.g. 10.0.0.0/8)
    streams_ca_file: str = ""  # AUDIT_STREAMS_CA_FILE (CA bundle outbound TLS trusts)
    streams_secret_key: str = ""  # AUDIT_STREAMS_SECRET_KEY (default: <state dir>/streams-key)
    streams_batch_max_events: int = 500  # AUDIT_STREAMS_BATCH_MAX_EVENTS
    streams_batch_max_bytes: int = 1_048_576  # AUDIT_STREAMS_BATCH_MAX_BYTES
    streams_batch_max_latency_ms: int = 1000  # AUDIT_STREAMS_BATCH_MAX_LATENCY_MS
    streams_poll_ms: int = 250  # AUDIT_STREAMS_POLL_MS (a caught-up stream looks this often)
    streams_timeout_s: float = 10.0  # AUDIT_STREAMS_TIMEOUT_S (one delivery request)
    streams_max_response_bytes: int = 65_536  # AUDIT_STREAMS_MAX_RESPONSE_BYTES
    streams_retry_max_s: float = 30.0  # AUDIT_STREAMS_RETRY_MAX_S (backoff cap)
    streams_pause_after_s: float = 900.0  # AUDIT_STREAMS_PAUSE_AFTER_S (failing this long)
    streams_cooldown_s: float = 3600.0  # AUDIT_STREAMS_COOLDOWN_S (0: only an operator resumes)
    streams_max_per_process: int = 64  # AUDIT_STREAMS_MAX_PER_PROCESS

    def __repr__(self) -> str:
        shown = {f: getattr(self, f) for f in self.__struct_fields__}
        shown["database_url"] = redact_url(self.database_url)
        shown["database_owner_url"] = redact_url(self.database_owner_url)
        shown["nats_url"] = redact_url(self.nats_url)
        shown["admin_token"] = "***" if self.admin_token else ""
        shown["token_secret"] = "***" if self.token_secret else ""
        shown["nats_password"] = "***" if self.nats_password else ""
        shown["nats_token"] = "***" if self.nats_token else ""
        shown["runtime_password"] = "***" if self.runtime_password else ""
        shown["streams_secret_key"] = "***" if self.streams_secret_key else ""
        inner = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"Settings({inner})"

    __str__ = __repr__

    @property
    def embedded(self) -> bool:
        """True when at least one server must be started by the service itself."""
        return not (self.database_url or self.database_owner_url) or not self.nats_url

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (flags overriding env)."""
        return msgspec.structs.replace(self, **{k: v for k, v in changes.items() if v is not None})


# Room for several of the largest messages (an event at the limit plus its headers).
MIN_INFLIGHT_BYTES = 1024 * 1024
NATS_SCHEMES = ("nats", "tls")


def nats_servers(url: str) -> list[str]:
    """The server URLs of ``AUDIT_NATS_URL``: one URL, or several separated by commas.

    nats-py takes a list but reads a comma-separated string as one (invalid) URL, so every
    connection the service makes passes this list instead.

    Raises:
        ValueError: an item is empty or not a ``nats://`` / ``tls://`` URL with a host (and
            a port from 1 to 65535, when given), saying which.
    """
    servers = [item.strip() for item in url.split(",")]
    for i, item in enumerate(servers, 1):
        where = f"item {i} of {len(servers)} ({redact_url(item)!r})"
        try:
            parts = urlsplit(item)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        if parts.scheme.lower() not in NATS_SCHEMES or not parts.hostname:
            raise ValueError(f"{where}: not a nats://host[:port] or tls://host[:port] URL")
        if port == 0 or parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{where}: only [user[:password]@]host[:port] after the scheme")
    return servers


_ENV: dict[str, str] = {f: "AUDIT_" + f.upper() for f in Settings.__struct_fields__}


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from ``env`` (default ``os.environ``) plus explicit overrides.

    Raises:
        ConfigError: naming the variable when a value does not parse.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    for field, var in _ENV.items():
        if var in env and env[var] != "":
            raw[field] = env[var]
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        field = str(exc).rsplit("$.", 1)[-1].rstrip("`")
        raise ConfigError(_ENV.get(field, field), str(exc)) from exc
    settings = settings.replace(**overrides)
    if settings.log_format not in ("text", "json"):
        raise ConfigError("AUDIT_LOG_FORMAT", "must be 'text' or 'json'")
    if not 1 <= settings.batch_max_events <= 100_000:
        raise ConfigError("AUDIT_BATCH_MAX_EVENTS", "must be between 1 and 100000")
    if not 1 <= settings.flush_concurrency <= 16:
        raise ConfigError("AUDIT_FLUSH_CONCURRENCY", "must be between 1 and 16")
    if settings.rate_limit_per_s < 0:
        raise ConfigError("AUDIT_RATE_LIMIT_PER_S", "must be 0 (off) or positive")
    if settings.rate_limit_burst < 1:
        raise ConfigError("AUDIT_RATE_LIMIT_BURST", "must be at least 1")
    if settings.batch_max_latency_ms < 0:
        raise ConfigError("AUDIT_BATCH_MAX_LATENCY_MS", "must be 0 or more")
    if not 0 <= settings.max_future_skew_s <= 366 * 86400:
        raise ConfigError("AUDIT_MAX_FUTURE_SKEW_S", "must be between 0 and 31622400 (366 days)")
    if not 1 <= settings.max_event_age_days <= 36500:
        raise ConfigError("AUDIT_MAX_EVENT_AGE_DAYS", "must be between 1 and 36500")
    if settings.max_inflight_bytes < MIN_INFLIGHT_BYTES:
        raise ConfigError("AUDIT_MAX_INFLIGHT_BYTES", f"must be at least {MIN_INFLIGHT_BYTES}")
    if settings.retention_interval_s < 0:
        raise ConfigError("AUDIT_RETENTION_INTERVAL_S", "must be 0 (off) or positive")
    if not 1 <= settings.retention_days <= 36500:
        raise ConfigError("AUDIT_RETENTION_DAYS", "must be between 1 and 36500")
    if settings.retention_archive.startswith("s3:") and not re.match(
        r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/|$)", settings.retention_archive
    ):
        raise ConfigError("AUDIT_RETENTION_ARCHIVE", "s3://<bucket>[/<prefix>], a valid bucket")
    if not 0.1 <= settings.access_log_window_s <= 3600:
        raise ConfigError("AUDIT_ACCESS_LOG_WINDOW_S", "must be between 0.1 and 3600 seconds")
    if not 10 <= settings.viewer_token_max_ttl_s <= 86400:
        raise ConfigError("AUDIT_VIEWER_TOKEN_MAX_TTL_S", "must be between 10 and 86400 seconds")
    if not re.fullmatch(r"[^;,\s][^;,\r\n]*", settings.ui_frame_ancestors):
        raise ConfigError("AUDIT_UI_FRAME_ANCESTORS", "CSP frame-ancestors sources, e.g. "
                          "'none', 'self' or https://app.example.com (no ';' or ',')")  # fmt: skip
    if settings.kafka_bootstrap and not re.fullmatch(
        r"[^\s,:]+:\d{1,5}(,[^\s,:]+:\d{1,5})*", settings.kafka_bootstrap
    ):
        raise ConfigError("AUDIT_KAFKA_BOOTSTRAP", "host:port[,host:port...]")
    for var, topic in (("AUDIT_KAFKA_TOPIC", settings.kafka_topic),
                       ("AUDIT_KAFKA_DLQ_TOPIC", settings.kafka_dlq_topic)):  # fmt: skip
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", topic):
            raise ConfigError(var, "a Kafka topic name: 1-249 of [A-Za-z0-9._-]")
    if settings.kafka_topic == settings.kafka_dlq_topic:
        raise ConfigError("AUDIT_KAFKA_DLQ_TOPIC", "must differ from AUDIT_KAFKA_TOPIC")
    if not 1024 <= settings.kafka_max_message_bytes <= 100 * 1024 * 1024:
        raise ConfigError("AUDIT_KAFKA_MAX_MESSAGE_BYTES", "must be between 1024 and 104857600")
    if not 1 <= settings.kafka_session_timeout_s <= 300:
        raise ConfigError("AUDIT_KAFKA_SESSION_TIMEOUT_S", "must be between 1 and 300 seconds")
    if settings.nats_url:
        try:
            nats_servers(settings.nats_url)
        except ValueError as exc:
            raise ConfigError("AUDIT_NATS_URL", f"{exc}; one URL or several, comma-separated, "
                              "e.g. nats://n1:4222,nats://n2:4222") from exc  # fmt: skip
    if not 1 <= settings.stream_replicas <= 5:
        raise ConfigError("AUDIT_STREAM_REPLICAS", "must be between 1 and 5 (JetStream's limit)")
    if settings.stream_replicas > 1 and not settings.nats_url:
        raise ConfigError("AUDIT_STREAM_REPLICAS", "more than 1 needs a NATS cluster in "
                          "AUDIT_NATS_URL (the embedded server is a single node)")  # fmt: skip
    _check_streams(settings)
    if not settings.nats_ingest and not settings.kafka_bootstrap:
        raise ConfigError("AUDIT_NATS_INGEST", "false needs AUDIT_KAFKA_BOOTSTRAP (no source)")
    if settings.checkpoint_interval_s < 0:
        raise ConfigError("AUDIT_CHECKPOINT_INTERVAL_S", "must be 0 (off) or positive")
    if settings.search_index_interval_s < 0:
        raise ConfigError("AUDIT_SEARCH_INDEX_INTERVAL_S", "must be 0 (off) or positive")
    if not settings.log_origin or any(c in settings.log_origin for c in " +\n"):
        raise ConfigError("AUDIT_LOG_ORIGIN", "must be non-empty, without spaces or '+'")
    if settings.nats_password and not settings.nats_user:
        raise ConfigError("AUDIT_NATS_USER", "AUDIT_NATS_PASSWORD needs a user")
    if bool(settings.nats_tls_cert) != bool(settings.nats_tls_key):
        raise ConfigError(
            "AUDIT_NATS_TLS_CERT", "a client certificate needs its key (both or neither)"
        )
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("AUDIT_TLS_CERT", "a certificate needs its key (both or neither)")
    if settings.tls_client_ca and not settings.tls_cert:
        raise ConfigError("AUDIT_TLS_CLIENT_CA", "mutual TLS needs AUDIT_TLS_CERT and _KEY")
    for var, path in (("AUDIT_TLS_CERT", settings.tls_cert),
                      ("AUDIT_TLS_KEY", settings.tls_key),
                      ("AUDIT_TLS_CLIENT_CA", settings.tls_client_ca),
                      ("AUDIT_NATS_CREDS", settings.nats_creds),
                      ("AUDIT_NATS_NKEY_SEED", settings.nats_nkey_seed),
                      ("AUDIT_NATS_TLS_CA", settings.nats_tls_ca),
                      ("AUDIT_NATS_TLS_CERT", settings.nats_tls_cert),
                      ("AUDIT_NATS_TLS_KEY", settings.nats_tls_key)):  # fmt: skip
        if path and not os.path.isfile(path):
            raise ConfigError(var, f"no such file: {path}")
    return settings


def _check_streams(settings: Settings) -> None:
    """The AUDIT_STREAMS_* settings (pipeline/streams.py).

    Raises:
        ConfigError: naming the variable.
    """
    import ipaddress

    for net in filter(None, (n.strip() for n in settings.streams_allow_private.split(","))):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise ConfigError("AUDIT_STREAMS_ALLOW_PRIVATE", f"{net!r}: {exc}") from exc
    bounds = (("AUDIT_STREAMS_BATCH_MAX_EVENTS", settings.streams_batch_max_events, 1, 10_000),
              ("AUDIT_STREAMS_BATCH_MAX_BYTES", settings.streams_batch_max_bytes, 65_536,
               64 * 1024 * 1024),
              ("AUDIT_STREAMS_BATCH_MAX_LATENCY_MS", settings.streams_batch_max_latency_ms, 0,
               600_000),
              ("AUDIT_STREAMS_POLL_MS", settings.streams_poll_ms, 10, 60_000),
              ("AUDIT_STREAMS_TIMEOUT_S", settings.streams_timeout_s, 0.1, 300),
              ("AUDIT_STREAMS_MAX_RESPONSE_BYTES", settings.streams_max_response_bytes, 1024,
               16 * 1024 * 1024),
              ("AUDIT_STREAMS_RETRY_MAX_S", settings.streams_retry_max_s, 0.1, 3600),
              ("AUDIT_STREAMS_PAUSE_AFTER_S", settings.streams_pause_after_s, 0, 30 * 86400),
              ("AUDIT_STREAMS_COOLDOWN_S", settings.streams_cooldown_s, 0, 30 * 86400),
              ("AUDIT_STREAMS_MAX_PER_PROCESS", settings.streams_max_per_process, 0,
               10_000))  # fmt: skip
    for var, value, low, high in bounds:
        if not low <= value <= high:
            raise ConfigError(var, f"must be between {low} and {high}")
    if settings.streams_ca_file and not os.path.isfile(settings.streams_ca_file):
        raise ConfigError("AUDIT_STREAMS_CA_FILE", f"no such file: {settings.streams_ca_file}")
