"""Typed application state keys (``web.AppKey``), shared by the app factory and handlers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
from aiohttp import web
from nats.aio.client import Client

from infra.metrics import Metrics
from infra.settings import Settings
from query_api.service import AuditService
from query_api.streams import StreamService

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
NATS = web.AppKey("nats", Client)
METRICS = web.AppKey("metrics", Metrics)
CONSUMER_BOUND: web.AppKey[Callable[[], bool]] = web.AppKey("consumer_bound")
# "ok", or "degraded: ..." while the pipeline runs but holds messages back.
PIPELINE_STATUS: web.AppKey[Callable[[], str]] = web.AppKey("pipeline_status")
STARTED = web.AppKey("started", float)
SERVICE = web.AppKey("service", AuditService)  # the API only (not pipeline-only workers)
STREAMS = web.AppKey("streams", StreamService)  # the API only: streams out (admin)
# The tasks of the requests running now (query_api.stopping cancels them late in a stop).
IN_FLIGHT: web.AppKey[set[asyncio.Task[object]]] = web.AppKey("in_flight")
