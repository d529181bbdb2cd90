"""Process runtime: embedded servers, migrations, the HTTP app and pipeline workers.

``auditlog run`` = servers (embedded unless URLs are set) + migrate + HTTP API + one
pipeline worker in this process. ``auditlog pipeline`` runs workers only.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import asyncpg
import nats.errors
from aiohttp import web

from auditlog.credentials import Credentials, prepare
from infra.db import TimedPool, create_pool
from infra.errors import ConfigError, MigrationError
from infra.memory import tune_malloc
from infra.metrics import Metrics
from infra.nats_streams import ensure_stream
from infra.settings import Settings, redact_url
from infra.signing import load_signer
from infra.tls import server_context, server_pem
from ledger.checkpoints import Checkpointer
from pipeline.bucket_claims import PgBucketClaims
from pipeline.commits import encode_keys
from pipeline.dlq_kafka import KafkaDeadLetters
from pipeline.dlq_nats import NatsDeadLetters
from pipeline.flush import PgStore
from pipeline.indexer import SearchIndexer
from pipeline.source_kafka import KafkaSource
from pipeline.source_nats import JetStreamSource, connect
from pipeline.streams import StreamAgent
from pipeline.worker import Worker, waited_for
from query_api.app import create_app

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoints:
    """Where PostgreSQL and NATS are, after embedded ones (if any) started.

    ``database_url`` is AUDIT_DATABASE_URL (the runtime login, or a single URL whose rights
    are read at start; "" = derived from ``owner_url``); ``owner_url`` the owner's
    credentials when configured (AUDIT_DATABASE_OWNER_URL, or the embedded superuser).
    """

    database_url: str
    nats_url: str
    owner_url: str = ""


@contextlib.contextmanager
def servers(settings: Settings) -> Iterator[Endpoints]:
    """Start the embedded servers that ``settings`` lacks URLs for; stop them on exit.

    PostgreSQL is embedded only when neither AUDIT_DATABASE_URL nor
    AUDIT_DATABASE_OWNER_URL is set; its superuser is then the owner.
    """
    db_url, nats_url = settings.database_url, settings.nats_url
    owner_url = settings.database_owner_url
    pg = nats_srv = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from auditlog.embedded import EmbeddedNats, EmbeddedPostgres
    try:
        state = Path(settings.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        if not db_url and not owner_url:
            pg = EmbeddedPostgres(state)
            owner_url = pg.start()
            log.info("embedded postgresql listening on 127.0.0.1:%d (data in %s)",
                     pg.port, pg.data)  # fmt: skip
        if not nats_url:
            nats_srv = EmbeddedNats(state)
            nats_url = nats_srv.start()
            log.info("embedded nats listening on %s (data in %s)", nats_url, nats_srv.dir)
        yield Endpoints(db_url, nats_url, owner_url)
    finally:
        # Servers adopted from another running `auditlog` process are left running.
        if nats_srv is not None and nats_srv.owned:
            nats_srv.stop()
            log.info("embedded nats stopped")
        if pg is not None and pg.owned:
            pg.stop()
            log.info("embedded postgresql stopped")


async def database_ready(settings: Settings, ends: Endpoints,
                         stop: asyncio.Event | None = None) -> Credentials:  # fmt: skip
    """Ready PostgreSQL as this process's credentials allow (``auditlog.credentials``):
    migrate and provision the runtime login with the owner's, else wait for current
    migrations; each step waited for while PostgreSQL is away.

    Raises:
        asyncio.CancelledError: ``stop`` was set while waiting.
        ConfigError: credentials refused.
        MigrationError: a migration failed, or the database is newer than this code.
    """
    stop = stop or asyncio.Event()

    def wait(what: str, attempt: Callable[[], Awaitable[Any]], var: str) -> Awaitable[Any]:
        return until_up(what, attempt, stop, var)

    return await prepare(settings, ends.owner_url, ends.database_url, wait)


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)


T = TypeVar("T")
_AUTH_ERRORS = (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError,
                nats.errors.AuthorizationError)  # fmt: skip


async def until_up(what: str, attempt: Callable[[], Awaitable[T]], stop: asyncio.Event,
                   var: str) -> T:  # fmt: skip
    """``attempt()`` until it works, with capped exponential backoff and jitter.

    A dependency that is down at start is waited for (logged at each try); refused
    credentials are a configuration error that stops the process (naming ``var``).

    Raises:
        ConfigError: credentials refused.
        asyncio.CancelledError: ``stop`` was set while waiting.
    """
    delay = 0.5
    while True:
        try:
            return await attempt()
        except _AUTH_ERRORS as exc:
            raise ConfigError(var, f"{what} refused the credentials: {exc}") from exc
        except (ConfigError, MigrationError):
            raise
        except Exception as exc:
            wait = delay * random.uniform(0.5, 1.0)
            log.warning("%s unavailable (%s: %s); retrying in %.1fs", what,
                        type(exc).__name__, exc, wait)  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                raise asyncio.CancelledError from exc
            delay = min(delay * 2, 30.0)


def commit_announcer(nc: Any, settings: Settings) -> Callable[..., Awaitable[None]]:
    """A worker's ``on_commit``: the keys it committed (and refused) on the commit subject,
    where the write API of every replica waits for them."""

    async def announce(stored: list[Any], duplicates: list[Any], rejected: list[Any]) -> None:
        if stored or duplicates or rejected:
            payload = encode_keys([*stored, *duplicates], rejected)
            await nc.publish(settings.commit_subject, payload)

    return announce


class Pipeline:
    """One pipeline worker in this process for one source (``nats`` or ``kafka``),
    restarted with backoff if it ever fails.

    Dependency outages do not end a worker (it waits them out); this catches the rest
    (a bug), logs why, and starts a fresh worker on the same connections.
    """

    def __init__(self, settings: Settings, pool: asyncpg.Pool, nc: Any, metrics: Metrics,
                 announce: Any, kind: str = "nats") -> None:  # fmt: skip
        self.settings, self.pool, self.nc, self.metrics = settings, pool, nc, metrics
        self.announce = announce
        self.kind = kind
        self.worker = self._new()
        self.restarts = 0
        self._stopping = False
        self._stopped = asyncio.Event()

    def _new(self) -> Worker:
        inflight = 3 * self.settings.batch_max_events
        if self.kind == "kafka":
            kafka = KafkaSource(self.settings, max_inflight=inflight, metrics=self.metrics)
            return Worker(self.settings, PgStore(self.pool),
                          KafkaDeadLetters(kafka.app, self.settings), kafka, self.metrics,
                          on_commit=self.announce, notify=waited_for,
                          claims=PgBucketClaims(self.pool))  # fmt: skip
        source = JetStreamSource(self.nc, self.settings, max_inflight=inflight,
                                 metrics=self.metrics)  # fmt: skip
        return Worker(self.settings, PgStore(self.pool), NatsDeadLetters(self.nc, self.settings),
                      source, self.metrics, on_commit=self.announce,
                      notify=waited_for, claims=PgBucketClaims(self.pool))  # fmt: skip

    async def _close_source(self) -> None:
        close = getattr(self.worker.source, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()

    async def run(self) -> None:
        """Run workers until :meth:`stop`; the source is closed on every way out (a faust
        App left running would keep its consumer thread, and the process, alive)."""
        delay = 1.0
        try:
            while not self._stopping:
                try:
                    await self.worker.run()
                except Exception as exc:
                    if self._stopping:
                        raise
                    self.restarts += 1
                    self.metrics.internal_errors.labels("worker").inc()
                    log.exception("%s pipeline worker failed (%r); restarting in %.0fs",
                                  self.kind, exc, delay)  # fmt: skip
                    with contextlib.suppress(Exception):
                        await self.worker.stop()
                    await self._close_source()
                    with contextlib.suppress(TimeoutError):  # a stop ends the wait at once
                        await asyncio.wait_for(self._stopped.wait(),
                                               delay * random.uniform(0.5, 1.0))  # fmt: skip
                    delay = min(delay * 2, 60.0)
                    if not self._stopping:
                        self.worker = self._new()
                    continue
                await self._close_source()
                if not self._stopping:
                    if why := getattr(self.worker.source, "restart_reason", None):
                        log.warning("%s pipeline worker restarting: %s", self.kind, why)
                    else:
                        log.error("%s pipeline worker ended unasked; restarting", self.kind)
                    self.worker = self._new()
        finally:
            await self._close_source()

    async def stop(self) -> None:
        """Stop fetching; the batch in hand is flushed and acked before :meth:`run` returns."""
        self._stopping = True
        self._stopped.set()
        await self.worker.stop()

    def status(self) -> str:
        """The current worker's status (for /readyz); a Kafka worker also says when the
        broker is unreachable or partitions are paused."""
        status = self.worker.status()
        source = self.worker.source
        if isinstance(source, KafkaSource):
            if source.broker_problem is not None:
                return f"degraded: kafka broker unreachable ({source.broker_problem[:200]})"
            paused = source.paused()
            if paused and status == "ok":
                return (f"degraded: kafka partition(s) {', '.join(paused[:10])} paused: a "
                        f"record's dead letter could not be published (retried)")  # fmt: skip
        return status

    @property
    def totals(self) -> dict[str, int]:
        """The current worker's totals."""
        return self.worker.totals


# API pool, pipeline pool, NATS client, and the credentials the pools were opened with
Pools = tuple[asyncpg.Pool, asyncpg.Pool, Any, Credentials]


async def _connect(settings: Settings, ends: Endpoints, stop: asyncio.Event,
                   stack: contextlib.AsyncExitStack) -> Pools:  # fmt: skip
    """Ready the database (:func:`database_ready`), then open the API pool, the pipeline
    pool (both as the runtime login) and NATS, waiting for each; each is closed by ``stack``.

    Raises:
        asyncio.CancelledError: stopped while waiting.
        ConfigError: credentials refused (no point in waiting).
    """
    db_var, nats_var = "AUDIT_DATABASE_URL", "AUDIT_NATS_URL"
    creds = await database_ready(settings, ends, stop)
    # Least privilege: the pools log in as the runtime login, which cannot alter or drop
    # tables, or disable triggers, whatever credentials migrated.
    dsn = creds.runtime
    pools = []
    for size in (settings.db_pool_size, settings.pipeline_pool_size):

        def open_pool(size: int = size) -> Awaitable[asyncpg.Pool]:
            return create_pool(dsn, max_size=size)

        pool = await until_up("postgresql", open_pool, stop, db_var)
        stack.push_async_callback(pool.close)
        pools.append(pool)
    name = f"auditlog-{os.getpid()}"
    nc = await until_up("nats", lambda: connect(ends.nats_url, name=name, settings=settings),
                        stop, nats_var)  # fmt: skip
    stack.push_async_callback(_drain_nats, nc)
    await until_up("nats", lambda: ensure_stream(nc, settings), stop, nats_var)
    return pools[0], pools[1], nc, creds


async def _drain_nats(nc: Any) -> None:
    with contextlib.suppress(Exception):
        await nc.drain()


async def _listen(app: web.Application, settings: Settings, http: bool,
                  stack: contextlib.AsyncExitStack) -> None:  # fmt: skip
    """Serve ``app`` (the API, or only health and metrics) and, for the API, gRPC; both are
    stopped by ``stack``. With ``AUDIT_TLS_CERT``, every listener (the metrics-only one of
    pipeline workers too) speaks TLS only, with the same certificate and client CA.

    Raises:
        ConfigError: a port cannot be bound, or a TLS file cannot be used.
    """
    context = server_context(settings)
    # On stop, requests still running (an export, a tail) get AUDIT_SHUTDOWN_TIMEOUT_S to
    # finish, then are cancelled (aiohttp's own default waits 60 s).
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_timeout_s)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    port = settings.http_port if http else settings.metrics_port
    try:
        await web.TCPSite(runner, settings.http_host, port, ssl_context=context).start()
    except OSError as exc:
        var = "AUDIT_HTTP_PORT" if http else "AUDIT_METRICS_PORT"
        raise ConfigError(
            var, f"cannot listen on {settings.http_host}:{port}: {exc.strerror}"
        ) from exc
    what = "HTTP API (REST + Connect)" if http else "metrics"
    scheme = "https" if context else "http"
    mutual = " (mutual TLS)" if settings.tls_client_ca else ""
    log.info("%s listening on %s://%s:%d%s", what, scheme, settings.http_host, port, mutual)
    if not http:
        return
    from query_api.rpc import start_grpc

    try:
        grpc_server = await start_grpc(app, settings.http_host, settings.grpc_port,
                                       tls=server_pem(settings))  # fmt: skip
    except OSError as exc:
        raise ConfigError("AUDIT_GRPC_PORT", str(exc)) from exc
    stack.push_async_callback(grpc_server.stop, 5)
    log.info("gRPC listening on %s:%d%s", settings.http_host, settings.grpc_port,
             f" (TLS{mutual})" if context else " (plaintext)")  # fmt: skip


async def _start_checkpointer(settings: Settings, pool: asyncpg.Pool, nc: Any,
                              stack: contextlib.AsyncExitStack,
                              metrics: Metrics) -> Checkpointer:  # fmt: skip
    """Run the checkpointer until the stack closes, then let it sign once more.

    Raises:
        ConfigError: the signing key cannot be read.
    """
    checkpointer = Checkpointer(settings, pool, nc, load_signer(settings), metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(checkpointer.run(stop), name="checkpointer")

    async def finish() -> None:
        stop.set()
        try:
            await asyncio.wait_for(task, timeout=settings.shutdown_timeout_s)
        except TimeoutError:
            log.error("the last checkpoint did not finish in %.0fs", settings.shutdown_timeout_s)

    stack.push_async_callback(finish)
    log.info("checkpoints every %gs, signed by %s", settings.checkpoint_interval_s,
             checkpointer.signer.verifier_key)  # fmt: skip
    return checkpointer


def _start_indexer(settings: Settings, pool: asyncpg.Pool, stack: contextlib.AsyncExitStack,
                   metrics: Metrics) -> SearchIndexer:  # fmt: skip
    """Run the search indexer (pipeline/indexer.py) until the stack closes."""
    indexer = SearchIndexer(settings, pool, metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(indexer.run(stop), name="search-indexer")

    async def finish() -> None:
        stop.set()
        try:
            await asyncio.wait_for(task, timeout=settings.shutdown_timeout_s)
        except TimeoutError:
            log.error("the search indexer did not stop in %.0fs", settings.shutdown_timeout_s)

    stack.push_async_callback(finish)
    log.info("search index kept up to date every %gs", settings.search_index_interval_s)
    return indexer


def _start_streams(settings: Settings, dsn: str, stack: contextlib.AsyncExitStack,
                   metrics: Metrics) -> StreamAgent:  # fmt: skip
    """Deliver streams out (pipeline/streams.py) until the stack closes: the streams whose
    lease this process takes, each from its cursor.

    Raises:
        ConfigError: the stream key (AUDIT_STREAMS_SECRET_KEY or the state dir's) is bad.
    """
    agent = StreamAgent(settings, dsn, metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop), name="streams")

    async def finish() -> None:
        stop.set()
        try:
            await asyncio.wait_for(task, timeout=settings.shutdown_timeout_s)
        except TimeoutError:
            log.error("stream delivery did not stop in %.0fs", settings.shutdown_timeout_s)

    stack.push_async_callback(finish)
    return agent


async def _retention_loop(owner_dsn: str, settings: Settings, metrics: Metrics) -> None:
    """Drop what retention allows, every AUDIT_RETENTION_INTERVAL_S (the first round a
    minute after start, or one interval when that is shorter), with the owner's
    credentials. A round runs only in the process holding the retention lease (one at a
    time in the deployment); errors are logged and retried next time."""
    from ledger.retention import run_job

    await asyncio.sleep(min(60.0, settings.retention_interval_s))
    while True:
        try:
            await run_job(owner_dsn, settings, load_signer(settings), metrics)
        except Exception as exc:
            log.warning("retention round failed (retrying next interval): %r", exc)
        await asyncio.sleep(settings.retention_interval_s)


def _tune_gc() -> None:
    # Long-lived objects move out of the collector's sight, and young-generation
    # collections run less often: the ingest path allocates many short-lived objects.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def _drain(pipelines: list[Pipeline], tasks: list[asyncio.Task[None]],
                 within_s: float) -> None:  # fmt: skip
    """Stop fetching and wait (up to ``within_s``) for what is in flight to be settled."""
    running = [(p, t) for p, t in zip(pipelines, tasks, strict=True) if not t.done()]
    if not running:
        return
    for pipeline, _ in running:
        await pipeline.stop()
    try:
        await asyncio.wait_for(asyncio.gather(*(t for _, t in running)), timeout=within_s)
    except TimeoutError:
        log.error("pipeline did not drain in %.0fs; unacked events will be redelivered",
                  within_s)  # fmt: skip


def _status(pipelines: list[Pipeline]) -> str:
    """``ok``, or every pipeline's reason (``nats: ...; kafka: ...``)."""
    bad = [(p.kind, p.status()) for p in pipelines]
    bad = [(k, v) for k, v in bad if v != "ok"]
    if not bad:
        return "ok"
    if len(pipelines) == 1:
        return bad[0][1]
    return "; ".join(f"{k}: {v}" for k, v in bad)


async def serve(settings: Settings, ends: Endpoints, *, http: bool = True,
                ingest: bool = True) -> dict[str, int]:  # fmt: skip
    """Run the HTTP app (if ``http``) and one pipeline worker per source (if ``ingest``)
    until SIGINT/SIGTERM.

    Without ``ingest`` (``auditlog api``) the process serves the API only: its writes are
    stored by separate ``auditlog pipeline`` workers, whose commit notices reach it over
    NATS as they reach any replica.

    PostgreSQL and NATS that are down at start are waited for; outages later are ridden
    out (the API answers 503 where it needs what is missing, the pipeline retries). The
    pipeline and the API have separate PostgreSQL pools, so readers never starve flushes.
    Whatever was opened is closed on every path out (an exit stack), the pipeline drained
    first.

    Returns:
        Totals of the worker (stored, duplicates, dead_lettered) for the shutdown summary.
    """
    started = time.monotonic()
    stop = asyncio.Event()
    _install_signals(stop)
    async with contextlib.AsyncExitStack() as stack:
        try:
            api_pool, pipe_pool, nc, creds = await _connect(settings, ends, stop, stack)
        except asyncio.CancelledError:
            log.info("stopped while waiting for dependencies")
            return {"stored": 0, "duplicates": 0, "dead_lettered": 0}
        metrics = Metrics()
        announce = commit_announcer(nc, settings)
        kinds = ((["nats"] if settings.nats_ingest else [])
                 + (["kafka"] if settings.kafka_bootstrap else [])) if ingest else []  # fmt: skip
        pipelines = [Pipeline(settings, pipe_pool, nc, metrics, announce, k) for k in kinds]
        if http and ingest and not settings.nats_ingest:
            log.warning(
                "AUDIT_NATS_INGEST=false in a process serving the write API: its "
                "writes wait in JetStream until a worker with it on consumes them"
            )
        if settings.checkpoint_interval_s > 0:
            # Registered before the drain: on the way out the pipeline drains first, then
            # the checkpointer signs what it stored.
            await _start_checkpointer(settings, pipe_pool, nc, stack, metrics)
            # Retention needs the owner's credentials; a lease picks one runner per round.
            if settings.retention_interval_s > 0 and creds.owner:
                job = _retention_loop(creds.owner, settings, metrics)
                stack.callback(asyncio.create_task(job, name="retention").cancel)
        if settings.search_index_interval_s > 0:  # one process at a time indexes (a lease)
            _start_indexer(settings, pipe_pool, stack, metrics)
        if ingest and settings.streams_deliver:  # streams out: each under its own lease
            _start_streams(settings, creds.runtime, stack, metrics)
        # Before the pipelines start: a full collection then walks only the set-up's
        # objects, not tens of thousands of messages already pulled (60-240 ms per worker
        # process when it ran after the HTTP listener, measured by py-spy in a drain).
        _tune_gc()
        tune_malloc()  # per-batch COPY buffers from the heap, not fresh pages
        tasks = [asyncio.create_task(p.run(), name=f"pipeline-{p.kind}") for p in pipelines]
        stack.push_async_callback(_drain, pipelines, tasks, settings.shutdown_timeout_s)
        reads = cast(asyncpg.Pool, TimedPool(api_pool, settings.db_acquire_timeout_s))
        app = create_app(settings, reads, nc, metrics, api=http,
                         consumer_bound=lambda: not any(t.done() for t in tasks),
                         pipeline_status=lambda: _status(pipelines))  # fmt: skip
        await _listen(app, settings, http, stack)
        log.info("postgresql: %s%s | nats: %s%s", redact_url(creds.runtime),
                 f" (owner credentials held: {redact_url(creds.owner)})" if creds.owner else "",
                 ends.nats_url,
                 f" | kafka: {settings.kafka_bootstrap} topic {settings.kafka_topic}"
                 if settings.kafka_bootstrap else "")  # fmt: skip
        for job in (_update_gauges(metrics, api_pool, pipe_pool, pipelines),
                    partitions_ahead(pipe_pool, settings.partitions_ahead_months)):  # fmt: skip
            stack.callback(asyncio.create_task(job).cancel)
        stopper = asyncio.create_task(stop.wait())
        stack.callback(stopper.cancel)
        await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        log.info("shutting down: draining the pipeline")
        await _drain(pipelines, tasks, settings.shutdown_timeout_s)
    totals = {k: sum(p.totals[k] for p in pipelines) for k in
              ("stored", "duplicates", "dead_lettered")}  # fmt: skip
    log.info(
        "stopped: %d stored, %d dead-lettered, %d duplicates, uptime %.1fs",
        totals["stored"], totals["dead_lettered"], totals["duplicates"],
        time.monotonic() - started,
    )  # fmt: skip
    return totals


async def partitions_ahead(pool: asyncpg.Pool, months: int, every: float = 3600.0) -> None:
    """Create this month's partition and the next ``months`` now and every hour after.

    A month rollover then never creates a partition (an ACCESS EXCLUSIVE lock on
    ``audit.events``) under full load. Failures (PostgreSQL away) are retried next time.
    """
    while True:
        try:
            now = datetime.now(UTC).replace(day=15)
            async with pool.acquire() as conn:
                for i in range(months + 1):
                    await conn.execute("SELECT audit.ensure_partition($1)",
                                       now + timedelta(days=31 * i))  # fmt: skip
        except Exception as exc:
            log.warning("could not create partitions ahead (will retry): %r", exc)
            every_now = min(every, 60.0)
        else:
            every_now = every
        await asyncio.sleep(every_now)


async def _update_gauges(metrics: Metrics, api_pool: asyncpg.Pool, pipe_pool: asyncpg.Pool,
                         pipelines: list[Pipeline], every: float = 5.0) -> None:  # fmt: skip
    """Refresh the consumer, pool and progress gauges (they are states, not events); for
    Kafka also lag per partition and whether the broker answers (for /readyz)."""
    while True:
        metrics.pool_in_use.labels("api").set(api_pool.get_size() - api_pool.get_idle_size())
        metrics.pool_in_use.labels("pipeline").set(
            pipe_pool.get_size() - pipe_pool.get_idle_size())  # fmt: skip
        for pipeline in pipelines:
            await _source_gauges(metrics, pipeline.worker)
        await asyncio.sleep(every)


async def _source_gauges(metrics: Metrics, worker: Worker) -> None:
    source = worker.source
    kind = getattr(source, "kind", "nats")
    metrics.last_progress_age.labels(kind).set(worker.last_progress_age_s())
    if isinstance(source, JetStreamSource | KafkaSource):
        metrics.oldest_unacked.labels(kind).set(source.oldest_held_age_s(time.time_ns()))
    try:
        if isinstance(source, JetStreamSource):
            pending, ack_pending = await asyncio.wait_for(source.consumer_state(), 2)
            metrics.consumer_pending.set(pending)
            metrics.consumer_ack_pending.set(ack_pending)
        elif isinstance(source, KafkaSource):
            await source.probe_broker()
            metrics.kafka_lag.clear()
            for (topic, partition), lag in (await source.lag()).items():
                metrics.kafka_lag.labels(topic, str(partition)).set(lag)
    except Exception as exc:  # the broker away: keep the last values, say why once per tick
        log.debug("%s consumer state unavailable: %r", kind, exc)


def run_event_loop(coro: object) -> object:
    """Run ``coro`` on uvloop when available."""
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)  # type: ignore[arg-type]


def worker_endpoints(settings: Settings, ends: Endpoints) -> Endpoints:
    """For ``auditlog pipeline --workers N``: ready the database here, in the parent
    (:func:`database_ready`), and return what its workers get: the runtime login alone.
    Retention therefore runs in none of them, whatever credentials the parent holds.
    """
    creds = asyncio.run(database_ready(settings, ends))
    if creds.owner and settings.retention_interval_s > 0:
        log.info("retention does not run in pipeline workers (they hold the runtime login "
                 "only): run it where AUDIT_DATABASE_OWNER_URL is set, or `auditlog retention "
                 "apply` from cron")  # fmt: skip
    return Endpoints(creds.runtime, ends.nats_url)


def spawn_workers(settings: Settings, ends: Endpoints, n: int) -> int:
    """Run ``n`` single-worker processes sharing the durable consumer, until a signal.

    A worker process that dies (killed, crashed) is restarted with backoff (1 s doubling
    to 60 s, reset after a minute of running), and why is logged. SIGINT/SIGTERM are
    forwarded; the exit code is the largest of the workers' last codes.

    The workers get ``ends.database_url`` (:func:`worker_endpoints`: the runtime login)
    and never the owner's credentials.
    """
    env = dict(os.environ, AUDIT_DATABASE_URL=ends.database_url, AUDIT_NATS_URL=ends.nats_url)
    env.pop("AUDIT_DATABASE_OWNER_URL", None)
    stopping = False

    def launch(i: int) -> subprocess.Popen[bytes]:
        child_env = dict(env, AUDIT_METRICS_PORT=str(settings.metrics_port + i))
        return subprocess.Popen(
            [sys.executable, "-m", "auditlog.cli", "pipeline", "--workers", "1"], env=child_env
        )

    procs = [launch(i) for i in range(n)]
    started = [time.monotonic()] * n
    delays = [1.0] * n
    due: list[float | None] = [None] * n

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    while True:
        if stopping:
            return max((p.wait() for p in procs), default=0)
        for i, p in enumerate(procs):
            code = p.poll()
            now = time.monotonic()
            if code is None or stopping:
                continue
            if due[i] is None:
                if now - started[i] > 60:
                    delays[i] = 1.0
                due[i] = now + delays[i]
                log.error("worker %d (pid %d) exited with code %s; restarting in %.0fs",
                          i, p.pid, code, delays[i])  # fmt: skip
                delays[i] = min(delays[i] * 2, 60.0)
            elif now >= due[i]:  # type: ignore[operator]
                procs[i], started[i], due[i] = launch(i), now, None
                log.info("worker %d restarted (pid %d)", i, procs[i].pid)
        time.sleep(0.2)
