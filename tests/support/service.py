"""The service in the test's event loop: pipeline workers built by the runtime, the HTTP
app, prepared events, publishing, counting what was stored, reading dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import nats
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client

from auditlog.runtime import Pipeline, commit_announcer
from infra.db import create_pool
from infra.metrics import Metrics
from infra.settings import Settings
from pipeline.flush import PartitionCache, write_batch
from pipeline.source_nats import connect, ensure_stream, nats_options
from pipeline.stages import Message, Valid, process
from pipeline.worker import CommitListener, Worker
from query_api.app import create_app
from tests.support.events import README_EVENT
from tests.support.waits import eventually

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = 24 * 60  # make_event's offsets are minutes before NOW


def make_event(tenant: str, i: int, **fields: object):
    """The README's event for ``tenant``, ``i`` minutes before NOW, validated and prepared
    for :func:`store` (``fields`` override the document's)."""
    doc = json.loads(README_EVENT)
    doc.update(tenant_id=tenant, description=f"event number {i}")
    doc["occurred_at"] = (NOW - timedelta(minutes=i)).isoformat()
    doc.update(fields)
    out = process(Message(data=json.dumps(doc).encode()), datetime.now(UTC))
    assert isinstance(out, Valid), out
    return out.prepared


async def store(pool, items) -> None:
    """Write prepared events as the pipeline does (partitions first, then the chain)."""
    await PartitionCache().ensure(pool, [p.event for p in items])
    async with pool.acquire() as conn:
        for i in range(0, len(items), 2000):
            await write_batch(conn, items[i : i + 2000])


@dataclass
class Running:
    settings: Settings
    pipeline: Pipeline
    nc: Client
    pool: asyncpg.Pool
    metrics: Metrics

    @property
    def worker(self) -> Worker:
        """The pipeline's current worker."""
        return self.pipeline.worker


@contextlib.asynccontextmanager
async def _running(settings: Settings, kind: str, nc: Client | None,
                   on_commit: CommitListener | None) -> AsyncIterator[Running]:  # fmt: skip
    pool = await create_pool(settings.database_url, max_size=4)
    metrics = Metrics()
    # The runtime's own wiring (auditlog/runtime.py, as `auditlog run` builds it).
    pipeline = Pipeline(settings, pool, nc, metrics, on_commit, kind)
    task = asyncio.create_task(pipeline.run())
    try:
        yield Running(settings, pipeline, nc, pool, metrics)  # type: ignore[arg-type]
    finally:
        await pipeline.stop()
        await asyncio.wait_for(task, 30)
        await pool.close()
    # The runtime restarts a failed worker (and logs why): in a test that is a failure.
    assert pipeline.restarts == 0, f"the {kind} worker failed and was restarted (see the log)"


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, *, on_commit: CommitListener | None = None
) -> AsyncIterator[Running]:
    """A JetStream pipeline worker (``auditlog.runtime.Pipeline``) in this event loop until
    the block ends (then drained). Commits are announced on the commit subject, as the
    runtime does, unless ``on_commit`` replaces that."""
    nc = await connect(settings.nats_url, "test-worker", settings)
    try:
        await ensure_stream(nc, settings)
        async with _running(settings, "nats", nc,
                            on_commit or commit_announcer(nc, settings)) as run:  # fmt: skip
            yield run
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def running_kafka_worker(settings: Settings) -> AsyncIterator[Running]:
    """A pipeline worker over the Kafka source (a faust App in this event loop) until the
    block ends (then drained, offsets committed, the app stopped). ``nc`` is None."""
    async with _running(settings, "kafka", None, None) as run:
        yield run


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
    """Wait until audit.events holds at least ``expected`` rows (the access trail left
    out); return the count. PostgreSQL unreachable counts as "not yet" (fault tests wait
    through outages).

    Raises:
        AssertionError: fewer within ``timeout`` (the last count, or why none was read).
    """
    return await eventually(lambda: admin_count(dsn), lambda n: n >= expected,
                            timeout=timeout, interval=0.1, ignore=(OSError, asyncpg.PostgresError),
                            what=f"at least {expected} events stored")  # fmt: skip


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


async def due_month(settings: Settings, tenant: str) -> str:
    """Give ``tenant`` events in a month long past and one recent, signed checkpoints over
    them (``settings``' signing key) and a 30-day retention: that month is then due for
    retention. Returns its partition's name."""
    from infra.signing import load_signer
    from ledger import retention
    from ledger.checkpoints import Checkpointer

    pool = await create_pool(settings.database_url, max_size=2)
    try:
        for minutes_ago in (100 * DAY + 1, 100 * DAY, 5):  # one batch each: seq follows
            await store(pool, [make_event(tenant, minutes_ago)])
        checkpointer = Checkpointer(settings, pool, None, load_signer(settings))
        await checkpointer.register_key()
        await checkpointer.cycle()
    finally:
        await pool.close()
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("INSERT INTO audit.tenant_policies (tenant_id, retention_days)"
                           " VALUES ($1, 30)", tenant)  # fmt: skip
        due = [m.name for m in await retention.plan(conn, settings) if m.due]
    finally:
        await conn.close()
    assert len(due) == 1, due
    return due[0]
