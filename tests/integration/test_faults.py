"""Faults: kill -9 of a worker, PostgreSQL down, SIGTERM drains."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import nats.errors
import pytest

from auditlog.embedded import EmbeddedPostgres, free_port
from infra.db import ensure_database
from infra.migrate import migrate
from infra.settings import Settings
from tests.support.events import event
from tests.support.metrics import sample
from tests.support.service import admin_count, publish_all, running_worker, wait_count
from tests.support.waits import drained, eventually

pytestmark = pytest.mark.integration


def worker_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    fields = ("database_url", "nats_url", "stream", "subject", "consumer", "dlq_stream",
              "dlq_subject", "batch_max_events", "batch_max_latency_ms", "ack_wait_s",
              "stream_max_bytes", "dlq_max_bytes")  # fmt: skip
    for field in fields:
        env["AUDIT_" + field.upper()] = str(getattr(settings, field))
    env["AUDIT_METRICS_PORT"] = str(free_port())
    return env


def spawn_worker(settings: Settings) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "auditlog.cli", "pipeline", "--workers", "1"],
        env=worker_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def test_kill_9_mid_stream_then_restart(db_url, settings_factory) -> None:
    settings = settings_factory(db_url, batch_max_events=200, ack_wait_s=4.0)
    from pipeline.source_nats import connect, ensure_stream

    nc = await connect(settings.nats_url, "publisher")
    await ensure_stream(nc, settings)
    total = 6000
    payloads = [event(f"t-{i % 7}", i) for i in range(total)]
    proc = spawn_worker(settings)
    try:
        await publish_all(nc, settings.subject, payloads[:3000])
        # Kill once rows are landing: mid-stream, with batches in flight.
        await eventually(lambda: admin_count(db_url), lambda n: n > 200, timeout=30,
                         interval=0.02, what="rows landing")  # fmt: skip
        proc.kill()
        proc.wait()
        partial = await admin_count(db_url)
        assert partial > 0
        await publish_all(nc, settings.subject, payloads[3000:])
        proc = spawn_worker(settings)
        assert await wait_count(db_url, total, timeout=120) == total
        await drained(settings, nc)  # every delivery settled: nothing more will arrive
        assert await admin_count(db_url) == total
        distinct = await admin_count(db_url, "SELECT count(DISTINCT description) FROM audit.events")
        assert distinct == total
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (
            proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        )
        await nc.close()


async def test_sigterm_drains_and_exits_zero(db_url, settings_factory) -> None:
    """SIGTERM while a batch is held (delivered, not yet due: its window is 60 s): the batch
    is flushed and acked before the process exits 0."""
    settings = settings_factory(db_url, batch_max_events=1000, batch_max_latency_ms=60_000)
    from pipeline.source_nats import connect, ensure_stream

    nc = await connect(settings.nats_url, "publisher")
    await ensure_stream(nc, settings)
    proc = spawn_worker(settings)
    try:
        await publish_all(nc, settings.subject, [event("t-term", i) for i in range(300)])
        js = nc.jetstream()
        # Until the worker holds all 300, none of them stored (not found: no consumer yet).
        info = await eventually(
            lambda: js.consumer_info(settings.stream, settings.consumer),
            lambda i: i.num_ack_pending == 300, timeout=30, ignore=(nats.errors.Error,),
            what="300 messages held by the worker",
        )  # fmt: skip
        assert info.num_ack_pending == 300 and info.num_pending == 0
        assert await admin_count(db_url) == 0  # a batch is pending in the worker
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        err = proc.stderr.read().decode() if proc.stderr else ""
        assert code == 0, err[-2000:]
        assert "stopped:" in err  # the one-line shutdown summary
        assert await admin_count(db_url) == 300
        info = await js.consumer_info(settings.stream, settings.consumer)
        assert info.num_ack_pending == 0 and info.num_pending == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        await nc.close()


async def test_postgres_down_for_ten_seconds(tmp_path: Path, settings_factory) -> None:
    pg = EmbeddedPostgres(tmp_path / "own-pg")
    dsn = pg.start()
    try:
        await ensure_database(dsn)
        await migrate(dsn)
        settings = settings_factory(dsn, batch_max_events=100)
        total = 3000
        payloads = [event(f"t-{i % 5}", i) for i in range(total)]
        async with running_worker(settings) as run:
            await publish_all(run.nc, settings.subject, payloads[:1000])
            assert await wait_count(dsn, 1000) == 1000
            await asyncio.to_thread(pg.stop)
            await publish_all(run.nc, settings.subject, payloads[1000:2000])
            await asyncio.sleep(10)
            await asyncio.to_thread(pg.start)
            await publish_all(run.nc, settings.subject, payloads[2000:])
            assert await wait_count(dsn, total, timeout=90) == total
            assert sample(run.metrics, "auditlog_flush_retries_total", kind="retry") > 0
        assert await admin_count(dsn) == total
    finally:
        pg.stop()
