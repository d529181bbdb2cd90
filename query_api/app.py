"""The aiohttp application: health, readiness and metrics (query/write routes join later).

``create_app(settings, ...)`` is the factory; state lives under ``web.AppKey``s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web
from nats.aio.client import Client

from pipeline.metrics import Metrics
from pipeline.migrate import is_current
from pipeline.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
NATS = web.AppKey("nats", Client)
METRICS = web.AppKey("metrics", Metrics)
CONSUMER_BOUND: web.AppKey[Callable[[], bool]] = web.AppKey("consumer_bound")
STARTED = web.AppKey("started", float)


async def healthz(request: web.Request) -> web.Response:
    """The process is alive."""
    return web.json_response(
        {"status": "ok", "uptime_seconds": round(time.monotonic() - request.app[STARTED], 3)}
    )


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


async def readyz(request: web.Request) -> web.Response:
    """Ready when PostgreSQL and NATS answer, migrations are current, the consumer bound."""
    app = request.app
    checks: dict[str, str] = {}
    problems: list[str] = []
    db = await _check_db(app[POOL])
    checks["postgresql"] = db or "ok"
    nc = app[NATS]
    nats_ok = nc.is_connected
    if nats_ok:
        try:
            await asyncio.wait_for(nc.flush(), timeout=2)
        except Exception:
            nats_ok = False
    checks["nats"] = "ok" if nats_ok else "nats unreachable"
    bound = app[CONSUMER_BOUND]()
    checks["consumer"] = "ok" if bound else "pipeline consumer not bound"
    problems = [v for v in checks.values() if v != "ok"]
    status = 200 if not problems else 503
    return web.json_response(
        {"status": "ready" if status == 200 else "unready", "checks": checks}, status=status
    )


async def metrics_handler(request: web.Request) -> web.Response:
    """Prometheus text exposition of this process's registry."""
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


def create_app(
    settings: Settings,
    pool: asyncpg.Pool,
    nc: Client,
    metrics: Metrics,
    consumer_bound: Callable[[], bool] = lambda: True,
    extra_routes: Callable[[web.Application], Awaitable[None] | None] | None = None,
) -> web.Application:
    """Build the HTTP application over already-open PostgreSQL and NATS connections."""
    app = web.Application(client_max_size=5 * 1024 * 1024)
    app[SETTINGS] = settings
    app[POOL] = pool
    app[NATS] = nc
    app[METRICS] = metrics
    app[CONSUMER_BOUND] = consumer_bound
    app[STARTED] = time.monotonic()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app
