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
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from pipeline.commits import encode_keys
from pipeline.db import create_pool, ensure_database
from pipeline.errors import ConfigError
from pipeline.metrics import Metrics
from pipeline.migrate import migrate
from pipeline.settings import Settings, redact_url
from pipeline.source_nats import JetStreamSource, connect, ensure_stream
from pipeline.worker import Worker
from query_api.app import create_app

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoints:
    """Where PostgreSQL and NATS are, after embedded ones (if any) started."""

    database_url: str
    nats_url: str


@contextlib.contextmanager
def servers(settings: Settings) -> Iterator[Endpoints]:
    """Start the embedded servers that ``settings`` lacks URLs for; stop them on exit."""
    db_url, nats_url = settings.database_url, settings.nats_url
    pg = nats_srv = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from pipeline.embedded import EmbeddedNats, EmbeddedPostgres
    try:
        state = Path(settings.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        if not db_url:
            pg = EmbeddedPostgres(state)
            db_url = pg.start()
            log.info("embedded postgresql listening on 127.0.0.1:%d (data in %s)",
                     pg.port, pg.data)  # fmt: skip
        if not nats_url:
            nats_srv = EmbeddedNats(state)
            nats_url = nats_srv.start()
            log.info("embedded nats listening on %s (data in %s)", nats_url, nats_srv.dir)
        yield Endpoints(db_url, nats_url)
    finally:
        # Servers adopted from another running `auditlog` process are left running.
        if nats_srv is not None and nats_srv.owned:
            nats_srv.stop()
            log.info("embedded nats stopped")
        if pg is not None and pg.owned:
            pg.stop()
            log.info("embedded postgresql stopped")


async def prepare_database(database_url: str) -> list[int]:
    """Create the database if missing and apply migrations."""
    await ensure_database(database_url)
    return await migrate(database_url)


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)


async def serve(settings: Settings, ends: Endpoints, *, http: bool = True) -> dict[str, int]:
    """Run the HTTP app (if ``http``) and one pipeline worker until SIGINT/SIGTERM.

    Returns:
        Totals of the worker (stored, duplicates, dead_lettered) for the shutdown summary.
    """
    started = time.monotonic()
    await prepare_database(ends.database_url)
    pool = await create_pool(ends.database_url, max_size=settings.db_pool_size)
    nc = await connect(ends.nats_url, name=f"auditlog-{os.getpid()}", settings=settings)
    await ensure_stream(nc, settings)
    metrics = Metrics()
    source = JetStreamSource(nc, settings, max_inflight=3 * settings.batch_max_events)

    async def announce(stored: list[Any], duplicates: list[Any], rejected: list[Any]) -> None:
        if stored or duplicates or rejected:
            payload = encode_keys([*stored, *duplicates], rejected)
            await nc.publish(settings.commit_subject, payload)

    worker = Worker(settings, pool, nc, source, metrics, on_commit=announce)
    stop = asyncio.Event()
    _install_signals(stop)
    worker_task = asyncio.create_task(worker.run(), name="worker")
    app = create_app(
        settings,
        pool,
        nc,
        metrics,
        consumer_bound=lambda: not worker_task.done(),
        api=http,
        pipeline_status=worker.status,
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = settings.http_port if http else settings.metrics_port
    try:
        await web.TCPSite(runner, settings.http_host, port).start()
    except OSError as exc:
        await worker.stop()
        await runner.cleanup()
        var = "AUDIT_HTTP_PORT" if http else "AUDIT_METRICS_PORT"
        raise ConfigError(
            var, f"cannot listen on {settings.http_host}:{port}: {exc.strerror}"
        ) from exc
    what = "HTTP API (REST + Connect)" if http else "metrics"
    log.info("%s listening on http://%s:%d", what, settings.http_host, port)
    grpc_server = None
    if http:
        from query_api.rpc import start_grpc

        try:
            grpc_server = await start_grpc(app, settings.http_host, settings.grpc_port)
        except OSError as exc:
            await worker.stop()
            await runner.cleanup()
            raise ConfigError("AUDIT_GRPC_PORT", str(exc)) from exc
        log.info("gRPC listening on %s:%d", settings.http_host, settings.grpc_port)
    log.info("postgresql: %s | nats: %s", redact_url(ends.database_url), ends.nats_url)
    # Long-lived objects move out of the collector's sight, and young-generation
    # collections run less often: the ingest path allocates many short-lived objects.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    gauges = asyncio.create_task(_update_gauges(metrics, pool, source), name="gauges")
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({stopper, worker_task}, return_when=asyncio.FIRST_COMPLETED)
    log.info("shutting down: draining the pipeline")
    await worker.stop()
    try:
        await asyncio.wait_for(worker_task, timeout=settings.shutdown_timeout_s)
    except TimeoutError:
        log.error("pipeline did not drain in %.0fs; unacked events will be redelivered",
                  settings.shutdown_timeout_s)  # fmt: skip
    stopper.cancel()
    gauges.cancel()
    if grpc_server is not None:
        await grpc_server.stop(grace=5)
    await runner.cleanup()
    with contextlib.suppress(Exception):
        await nc.drain()
    await pool.close()
    totals = dict(worker.totals)
    log.info(
        "stopped: %d stored, %d dead-lettered, %d duplicates, uptime %.1fs",
        totals["stored"], totals["dead_lettered"], totals["duplicates"],
        time.monotonic() - started,
    )  # fmt: skip
    if worker_task.done() and not worker_task.cancelled() and worker_task.exception():
        raise worker_task.exception()  # type: ignore[misc]
    return totals


async def _update_gauges(
    metrics: Metrics, pool: asyncpg.Pool, source: JetStreamSource, every: float = 5.0
) -> None:
    """Refresh the consumer and pool gauges (they are states, not events)."""
    while True:
        metrics.pool_in_use.set(pool.get_size() - pool.get_idle_size())
        try:
            pending, ack_pending = await asyncio.wait_for(source.consumer_state(), 2)
            metrics.consumer_pending.set(pending)
            metrics.consumer_ack_pending.set(ack_pending)
        except Exception as exc:  # NATS away: keep the last values, say why once per tick
            log.debug("consumer state unavailable: %r", exc)
        await asyncio.sleep(every)


def run_event_loop(coro: object) -> object:
    """Run ``coro`` on uvloop when available."""
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)  # type: ignore[arg-type]


def spawn_workers(settings: Settings, ends: Endpoints, n: int) -> int:
    """Run ``n`` single-worker processes sharing the durable consumer; forward signals."""
    env = dict(os.environ, AUDIT_DATABASE_URL=ends.database_url, AUDIT_NATS_URL=ends.nats_url)
    procs = []
    for i in range(n):
        child_env = dict(env, AUDIT_METRICS_PORT=str(settings.metrics_port + i))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "pipeline", "--workers", "1"],
                env=child_env,
            )
        )

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes = [p.wait() for p in procs]
    return max(codes, default=0)
