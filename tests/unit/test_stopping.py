"""query_api.stopping: a stop cancels the requests still running at AUDIT_SHUTDOWN_TIMEOUT_S."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from auditlog.embedded import free_port
from infra.settings import load_settings
from query_api.state import IN_FLIGHT, SETTINGS
from query_api.stopping import cancel_late_requests, in_flight_middleware


async def test_a_request_that_never_ends_is_cancelled_at_the_timeout_not_twice_it() -> None:
    timeout = 1.0
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        started.set()
        try:
            await asyncio.sleep(3600)  # reads no body: aiohttp's stop alone waits 2 x timeout
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return resp

    async def quick(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[in_flight_middleware])
    app[SETTINGS] = load_settings({"AUDIT_SHUTDOWN_TIMEOUT_S": str(timeout)})
    cancel_late_requests(app)
    app.router.add_get("/endless", endless)
    app.router.add_get("/quick", quick)
    runner = web.AppRunner(app, shutdown_timeout=timeout)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{port}/quick") as r:
            assert await r.text() == "ok"
        assert not app[IN_FLIGHT]  # a finished request is forgotten
        pending = asyncio.ensure_future(client.get(f"http://127.0.0.1:{port}/endless"))
        await asyncio.wait_for(started.wait(), 10)
        assert len(app[IN_FLIGHT]) == 1
        began = time.monotonic()
        await runner.cleanup()
        took = time.monotonic() - began
        pending.cancel()
    assert cancelled.is_set()
    assert timeout * 0.9 <= took < timeout * 1.5, took  # not at once, and not 2 x timeout
    assert not app[IN_FLIGHT]
