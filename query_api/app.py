"""The aiohttp application: health, readiness, metrics, OpenAPI, and (for the API role) the
REST and Connect routes over one :class:`AuditService`.

``create_app(settings, ...)`` is the factory; state lives under ``web.AppKey``s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import msgspec
from aiohttp import web
from nats.aio.client import Client

from infra.admin_tokens import AdminTokenSource
from infra.metrics import Metrics
from infra.migrate import is_current
from infra.settings import Settings
from infra.signing import load_signer, trusted_verifiers
from pipeline.indexer import lag_status, read_lag
from pipeline.stages import limits_for
from pipeline.stream_secrets import SecretBox
from pipeline.stream_store import status_summary
from query_api import contract
from query_api.access_log import AccessLog
from query_api.admission import Admission
from query_api.auth import Authenticator
from query_api.openapi import render as render_openapi
from query_api.publisher import Publisher
from query_api.ratelimit import RateLimiter
from query_api.rest import add_routes, error_middleware, metrics_middleware
from query_api.rest_streams import add_stream_routes
from query_api.rpc import add_connect_routes
from query_api.service import AuditService
from query_api.state import (
    CONSUMER_BOUND,
    METRICS,
    NATS,
    PIPELINE_STATUS,
    POOL,
    SERVICE,
    SETTINGS,
    STARTED,
    STREAMS,
)
from query_api.stopping import cancel_late_requests, in_flight_middleware
from query_api.streams import StreamService
from query_api.ui import add_ui_routes
from query_api.waiters import Waiters
from query_api.writes import Writes

OPENAPI = render_openapi().encode()


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(body), status=status,
                        content_type="application/json")  # fmt: skip


async def healthz(request: web.Request) -> web.Response:
    """The process is alive."""
    uptime = round(time.monotonic() - request.app[STARTED], 3)
    return _json(contract.Health("ok", uptime))


async def _check_db(pool: asyncpg.Pool) -> str | None:
    try:
        async with asyncio.timeout(2):
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
                if not await is_current(conn):
                    return "migrations pending: run `auditlog migrate`"
    except Exception as exc:
        return f"postgresql unreachable: {type(exc).__name__}: {exc}"
    return None


async def _check_search(pool: asyncpg.Pool, degraded_after_s: float) -> str:
    try:
        async with asyncio.timeout(2), pool.acquire() as conn:
            return lag_status(await read_lag(conn), degraded_after_s)
    except Exception as exc:
        return f"degraded: search index lag unknown: {type(exc).__name__}: {exc}"


async def _check_streams(pool: asyncpg.Pool) -> str:
    """``ok``, or ``degraded: ...`` naming streams out that are paused or failing (a
    receiver's trouble: never a reason to be unready)."""
    try:
        async with asyncio.timeout(2), pool.acquire() as conn:
            rows = await status_summary(conn)
    except Exception as exc:
        return f"degraded: streams unknown: {type(exc).__name__}: {exc}"
    if not rows:
        return "ok"
    parts = [f"{r['stream_id']} of {r['tenant_id']} paused: {r['paused_reason']}"
             if r["state"] == "paused" else
             f"{r['stream_id']} of {r['tenant_id']} failing ({r['failures']} attempts): "
             f"{r['last_error']}" for r in rows]  # fmt: skip
    return "degraded: " + "; ".join(p[:300] for p in parts)


async def readyz(request: web.Request) -> web.Response:
    """Readiness per role, with every check and its reason in the body.

    The API (REST, Connect, gRPC) is ready when it can serve reads: PostgreSQL answers and
    migrations are current. NATS away or the pipeline stuck make it ``degraded`` (writes
    answer 503, reads go on), never unready. A pipeline-only worker is ready when its
    consumer can make progress: PostgreSQL and NATS answer and it is not stalled. A search
    index far behind (``AUDIT_SEARCH_LAG_DEGRADED_S``), or a stream out paused or failing
    (``streams``, naming them), is ``degraded``, never unready.
    """
    app = request.app
    checks: dict[str, str] = {}
    db = await _check_db(app[POOL])
    checks["postgresql"] = db or "ok"
    checks["search"] = (await _check_search(app[POOL], app[SETTINGS].search_lag_degraded_s)
                        if db is None else "unknown: postgresql unreachable")  # fmt: skip
    checks["streams"] = (await _check_streams(app[POOL]) if db is None
                         else "unknown: postgresql unreachable")  # fmt: skip
    nc = app[NATS]
    nats_ok = nc.is_connected
    if nats_ok:
        try:
            await asyncio.wait_for(nc.flush(), timeout=2)
        except Exception:
            nats_ok = False
    checks["nats"] = "ok" if nats_ok else "nats unreachable: writes answer 503"
    checks["consumer"] = "ok" if app[CONSUMER_BOUND]() else "pipeline consumer not bound"
    checks["pipeline"] = app[PIPELINE_STATUS]()
    if SERVICE in app:  # the API: reads need PostgreSQL only
        blocking = [checks["postgresql"]]
    else:  # a pipeline-only worker: ready when it can make progress
        stalled = checks["pipeline"].startswith("degraded: stalled")
        blocking = [checks["postgresql"], checks["nats"], checks["consumer"],
                    checks["pipeline"] if stalled else "ok"]  # fmt: skip
    if any(v != "ok" for v in blocking):
        word, status = "unready", 503
    elif any(v != "ok" for v in checks.values()):
        word, status = "degraded", 200
    else:
        word, status = "ready", 200
    return _json(contract.Readiness(word, checks), status=status)  # type: ignore[arg-type]


async def metrics_handler(request: web.Request) -> web.Response:
    """Prometheus text exposition of this process's registry."""
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def openapi_handler(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this API."""
    return web.Response(body=OPENAPI, content_type="application/json")


def token_secret(settings: Settings) -> bytes:
    """The page-token signing secret: AUDIT_TOKEN_SECRET, else one kept in the state dir.

    Replicas behind one load balancer must share it (set AUDIT_TOKEN_SECRET).
    """
    if settings.token_secret:
        return settings.token_secret.encode()
    path = Path(settings.state_dir) / "token-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def create_app(
    settings: Settings,
    pool: asyncpg.Pool,
    nc: Client,
    metrics: Metrics,
    consumer_bound: Callable[[], bool] = lambda: True,
    pipeline_status: Callable[[], str] = lambda: "ok",
    *,
    api: bool = True,
) -> web.Application:
    """Build the HTTP application over already-open PostgreSQL and NATS connections.

    With ``api=False`` (pipeline-only workers) it serves /healthz, /readyz and /metrics only.
    """
    app = web.Application(
        client_max_size=5 * 1024 * 1024,
        middlewares=[in_flight_middleware, metrics_middleware, error_middleware],
    )
    cancel_late_requests(app)
    app[SETTINGS] = settings
    app[POOL] = pool
    app[NATS] = nc
    app[METRICS] = metrics
    app[CONSUMER_BOUND] = consumer_bound
    app[PIPELINE_STATUS] = pipeline_status
    app[STARTED] = time.monotonic()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    if api:
        app[SERVICE] = build_service(settings, pool, nc, metrics)
        app.cleanup_ctx.append(_commit_subscription)
        app.router.add_get("/openapi.json", openapi_handler)
        app[STREAMS] = StreamService(settings, pool, SecretBox.from_settings(settings),
                                     app[SERVICE].access)  # fmt: skip
        add_routes(app)
        add_stream_routes(app)
        add_connect_routes(app)
        add_ui_routes(app)
    return app


def build_service(settings: Settings, pool: asyncpg.Pool, nc: Client,
                  metrics: Metrics) -> AuditService:  # fmt: skip
    """The API's service object over open connections (its publisher starts with the app)."""
    limiter = (RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
               if settings.rate_limit_per_s > 0 else None)  # fmt: skip
    writes = Writes(settings=settings, limits=limits_for(settings), pool=pool, nc=nc,
                    publisher=Publisher(nc), waiters=Waiters())  # fmt: skip
    signer = load_signer(settings)
    secret = token_secret(settings)  # page tokens, and (derived) viewer tokens
    access = AccessLog(writes.publish_own, window_s=settings.access_log_window_s,
                       enabled=settings.access_log, metrics=metrics)  # fmt: skip
    return AuditService(
        settings=settings, pool=pool, metrics=metrics,
        auth=Authenticator(pool, AdminTokenSource(settings).tokens, limiter, secret),
        admission=Admission(settings.heavy_read_concurrency, settings.heavy_read_per_key),
        token_secret=secret, writes=writes,
        verifier_key=signer.verifier_key, verifiers=trusted_verifiers(settings), access=access,
    )  # fmt: skip


async def _commit_subscription(app: web.Application) -> AsyncIterator[None]:
    """While the app runs: listen for commit notices (for synchronous writes) and collect
    JetStream acks of the write API's publishes."""
    writes, access = app[SERVICE].writes, app[SERVICE].access
    sub = await app[NATS].subscribe(app[SETTINGS].commit_subject, cb=writes.waiters.on_message)
    await writes.publisher.start()
    access.start()
    yield
    with contextlib.suppress(Exception):
        await access.stop()  # publishes what it holds, open read windows included
    with contextlib.suppress(Exception):
        await writes.publisher.stop()
    with contextlib.suppress(Exception):
        await sub.unsubscribe()
