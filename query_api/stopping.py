"""A stop that keeps its time: requests still running ``AUDIT_SHUTDOWN_TIMEOUT_S`` after
the stop began are cancelled then.

aiohttp's own graceful stop (``AppRunner(shutdown_timeout=T)``) waits ``T`` for running
requests, then cancels only what a request reads of its body, then waits ``T`` again
before it cancels the handler. An export whose client stopped reading (its COPY waiting
on the socket) or an open tail reads no body, so a stop took ``2 T``, past the
deployment's grace period (40 s for ``T`` = 20 s in ``deploy/k8s``). Here every request's
task is known while it runs (:func:`in_flight_middleware`), and the stop's first hook
(``on_shutdown``) schedules their cancellation at ``T``; a cancelled export cancels its
COPY too (``query_api.export``), so its connection goes back to the pool idle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from query_api.state import IN_FLIGHT, SETTINGS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The scheduled cancellation (set at install: a started app's state is not to change).
_CANCEL_AT: web.AppKey[list[asyncio.TimerHandle]] = web.AppKey("cancel_late_requests")


@web.middleware
async def in_flight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Keep the request's task in ``app[IN_FLIGHT]`` while it runs."""
    tasks = request.app[IN_FLIGHT]
    task = asyncio.current_task()
    assert task is not None
    tasks.add(task)
    try:
        return await handler(request)
    finally:
        tasks.discard(task)


async def _schedule_cancel(app: web.Application) -> None:
    tasks = app[IN_FLIGHT]

    def cancel() -> None:
        for task in list(tasks):
            task.cancel()

    timeout = app[SETTINGS].shutdown_timeout_s
    app[_CANCEL_AT].append(asyncio.get_running_loop().call_later(timeout, cancel))


async def _drop_schedule(app: web.Application) -> None:
    for handle in app[_CANCEL_AT]:
        handle.cancel()


def cancel_late_requests(app: web.Application) -> None:
    """Install on ``app`` (before it starts): its middleware must come first in
    ``middlewares`` (:func:`in_flight_middleware`)."""
    app[IN_FLIGHT] = set()
    app[_CANCEL_AT] = []
    app.on_shutdown.append(_schedule_cancel)
    app.on_cleanup.append(_drop_schedule)
