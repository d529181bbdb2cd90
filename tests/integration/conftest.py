"""Helpers for integration tests: a running worker, publishing, reading results."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import asyncpg
import nats
import pytest
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client

from infra.db import create_pool
from infra.metrics import Metrics
from infra.settings import Settings
from pipeline.commits import encode_keys
from pipeline.dlq_kafka import KafkaDeadLetters
from pipeline.dlq_nats import NatsDeadLetters
from pipeline.flush import PgStore
from pipeline.source_kafka import KafkaSource
from pipeline.source_nats import JetStreamSource, connect, ensure_stream, nats_options
from pipeline.worker import Worker
from query_api.app import create_app

pytestmark = pytest.mark.integration


@dataclass
class Running:
    settings: Settings
    worker: Worker
    nc: Client
    pool: asyncpg.Pool
    metrics: Metrics


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, **worker_kw: object) -> AsyncIterator[Running]:
    """A Worker running in this event loop until the block ends (then drained)."""
    pool = await create_pool(settings.database_url, max_size=4)
    nc = await connect(settings.nats_url, "test-worker", settings)
    await ensure_stream(nc, settings)
    metrics = Metrics()
    source = JetStreamSource(nc, settings, max_inflight=3 * settings.batch_max_events)

    async def announce(stored: list, duplicates: list, rejected: list) -> None:
        if stored or duplicates or rejected:
            payload = encode_keys([*stored, *duplicates], rejected)
            await nc.publish(settings.commit_subject, payload)

    worker_kw.setdefault("on_commit", announce)
    worker = Worker(settings, PgStore(pool), NatsDeadLetters(nc, settings), source, metrics,
                    **worker_kw)  # fmt: skip
    task = asyncio.create_task(worker.run())
    try:
        yield Running(settings, worker, nc, pool, metrics)
    finally:
        await worker.stop()
        await asyncio.wait_for(task, 30)
        await nc.close()
        await pool.close()


@contextlib.asynccontextmanager
async def running_kafka_worker(settings: Settings, **worker_kw: object) -> AsyncIterator[Running]:
    """A Worker over the Kafka source (a faust App in this event loop) until the block
    ends (then drained, offsets committed, the app stopped). ``nc`` is None."""
    pool = await create_pool(settings.database_url, max_size=4)
    metrics = Metrics()
    source = KafkaSource(settings, max_inflight=3 * settings.batch_max_events, metrics=metrics)
    worker = Worker(settings, PgStore(pool), KafkaDeadLetters(source.app, settings), source,
                    metrics, **worker_kw)  # type: ignore[arg-type]  # fmt: skip
    task = asyncio.create_task(worker.run())
    try:
        yield Running(settings, worker, None, pool, metrics)  # type: ignore[arg-type]
    finally:
        await worker.stop()
        await asyncio.wait_for(task, 30)
        await source.close()
        await pool.close()


@contextlib.asynccontextmanager
async def serving_app(settings: Settings, pool_size: int = 4) -> AsyncIterator[TestClient]:
    """The HTTP app (``create_app``) on a test server, with its own pool and NATS
    connection (``client.pool``, ``client.nc``); everything is closed afterwards."""
    pool = await create_pool(settings.database_url, max_size=pool_size)
    nc = await nats.connect(settings.nats_url)
    client = TestClient(TestServer(create_app(settings, pool, nc, Metrics())))
    await client.start_server()
    client.pool = pool  # type: ignore[attr-defined]
    client.nc = nc  # type: ignore[attr-defined]
    try:
        yield client
    finally:
        await client.close()
        await nc.close()
        await pool.close()


async def publish_all(
    nc: Client, subject: str, payloads: Iterable[bytes], headers: list[dict | None] | None = None
) -> int:
    """Publish with JetStream acks (bounded concurrency); return how many were acked."""
    js = nc.jetstream()
    items = list(payloads)
    hdrs = headers or [None] * len(items)
    sem = asyncio.Semaphore(256)

    async def one(data: bytes, h: dict | None) -> None:
        async with sem:
            await js.publish(subject, data, headers=h)

    await asyncio.gather(*(one(d, h) for d, h in zip(items, hdrs, strict=True)))
    return len(items)


# The service's own access-trail events (query_api/access_log.py; on by default in
# `auditlog run`): tests that count what producers sent leave them out.
TRAIL_ACTIONS = ("audit_log.read", "audit_log.export", "api_key.create", "api_key.revoke",
                 "audit_log.retention.update", "audit_log.legal_hold.set",
                 "audit_log.legal_hold.release")  # fmt: skip
NOT_TRAIL = "action NOT IN (" + ", ".join(f"'{a}'" for a in TRAIL_ACTIONS) + ")"
PRODUCED = f"SELECT count(*) FROM audit.events WHERE {NOT_TRAIL}"


async def admin_count(dsn: str, sql: str = PRODUCED, *args) -> int:
    """A count as the superuser (default: every stored event but the access trail)."""
    conn = await asyncpg.connect(dsn)  # the superuser: RLS does not apply
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


async def wait_count(dsn: str, expected: int, timeout: float = 60.0) -> int:
    """Poll until audit.events holds ``expected`` rows (or ``timeout``); return the count
    (-1 while PostgreSQL is unreachable: fault tests poll through outages)."""
    deadline = time.monotonic() + timeout
    n = -1
    while time.monotonic() < deadline:
        try:
            n = await admin_count(dsn)
        except (OSError, asyncpg.PostgresError):
            n = -1
        if n >= expected:
            return n
        await asyncio.sleep(0.1)
    return n


async def dead_letters(nats_url: str, settings: Settings) -> list[nats.aio.msg.Msg]:
    """Every message in the dead-letter stream, in order."""
    nc = await nats.connect(nats_url, **nats_options(settings))
    try:
        js = nc.jetstream()
        info = await js.stream_info(settings.dlq_stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            out.append(await js.get_msg(settings.dlq_stream, seq))
        return out
    finally:
        await nc.close()
