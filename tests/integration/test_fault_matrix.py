"""The fault matrix: each fault during a drain ends with exactly N rows, no duplicate
``(tenant_id, id)``, every tenant's chain verifying, and the service process(es) running.

Each test has its own PostgreSQL and nats-server (so it may stop, restart or pause them)
and runs the service as real processes (``auditlog pipeline``, ``auditlog run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from auditlog.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from infra.db import ensure_database
from infra.migrate import migrate
from infra.settings import Settings
from ledger.chain import verify_tenant
from pipeline.source_nats import connect, ensure_stream
from tests.support.events import event
from tests.support.processes import stop_all
from tests.support.service import NOT_TRAIL, admin_count, publish_all, wait_count
from tests.support.waits import drained, eventually

pytestmark = pytest.mark.integration
TENANTS = [f"t-fm-{i}" for i in range(7)]


@dataclass
class Rig:
    pg: EmbeddedPostgres
    nats: EmbeddedNats
    dsn: str
    settings: Settings

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
        env.update(AUDIT_DATABASE_URL=self.dsn, AUDIT_NATS_URL=self.settings.nats_url,
                   AUDIT_ACK_WAIT_S="4", AUDIT_BATCH_MAX_EVENTS="500",
                   AUDIT_STATE_DIR=str(Path(self.pg.root).parent / "state"),
                   AUDIT_STREAM_MAX_BYTES=str(256 << 20), AUDIT_DLQ_MAX_BYTES=str(64 << 20),
                   AUDIT_LOG_LEVEL="WARNING", **extra)  # fmt: skip
        return env


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    pg = EmbeddedPostgres(tmp_path / "pg")
    nats_srv = EmbeddedNats(tmp_path / "nats")
    base = pg.start()
    try:
        url = nats_srv.start()
        dsn = base.rsplit("/", 1)[0] + "/auditlog"
        await ensure_database(dsn)
        await migrate(dsn)
        yield Rig(pg, nats_srv, dsn, Settings(database_url=dsn, nats_url=url, ack_wait_s=4.0,
                                              stream_max_bytes=256 << 20,
                                              dlq_max_bytes=64 << 20))  # fmt: skip
    finally:
        nats_srv.stop()
        pg.stop()


def spawn(rig: Rig, *args: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "auditlog.cli", *args],
                            env=rig.env(**env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip


async def publish(rig: Rig, n: int, start: int = 0) -> None:
    nc = await connect(rig.settings.nats_url, "fm-publisher")
    try:
        await ensure_stream(nc, rig.settings)
        payloads = [event(TENANTS[i % len(TENANTS)], i) for i in range(start, start + n)]
        await publish_all(nc, rig.settings.subject, payloads)
    finally:
        await nc.close()


async def assert_exact(rig: Rig, total: int, procs: list[subprocess.Popen[bytes]]) -> None:
    assert await wait_count(rig.dsn, total, timeout=180) == total
    await drained(rig.settings)  # every delivery settled: nothing more will arrive
    assert await admin_count(rig.dsn) == total
    dupes = await admin_count(rig.dsn, "SELECT count(*) FROM (SELECT 1 FROM audit.events "
                              "GROUP BY tenant_id, id HAVING count(*) > 1) d")  # fmt: skip
    assert dupes == 0
    assert await admin_count(rig.dsn, "SELECT count(DISTINCT description) FROM audit.events"
                             f" WHERE {NOT_TRAIL}") == total  # fmt: skip
    conn = await asyncpg.connect(rig.dsn, server_settings={"role": "auditlog_app"})
    try:
        for tenant in TENANTS:
            report = await verify_tenant(conn, tenant)
            assert report.ok, report
    finally:
        await conn.close()
    for p in procs:
        assert p.poll() is None, p.stderr.read().decode()[-3000:] if p.stderr else ""


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            out += [int(c), *children(int(c))]
    return out


def direct_children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))  # fmt: skip


async def test_kill_9_one_of_two_workers_mid_flush(rig: Rig) -> None:
    total = 30_000
    await publish(rig, 1)  # creates the stream and consumer; one event to start with
    sup = spawn(rig, "pipeline", "--workers", "2", AUDIT_METRICS_PORT=str(free_port()))
    try:
        await publish(rig, total - 1, start=1)
        assert await wait_count(rig.dsn, 2000, timeout=60) >= 2000
        workers = direct_children(sup.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)  # mid-flush: rows are landing right now
        await assert_exact(rig, total, [sup])
        # The supervisor restarts the killed worker after its backoff (1 s): the drain
        # may end before that, so wait for it (bounded) rather than look once.
        now = await eventually(lambda: direct_children(sup.pid),
                               lambda kids: len(kids) == 2 and workers[0] not in kids,
                               timeout=15, what="the killed worker restarted")  # fmt: skip
        assert len(now) == 2 and workers[0] not in now
    finally:
        stop_all([sup])


async def test_nats_stopped_30_s_during_a_drain(rig: Rig) -> None:
    total = 30_000
    await publish(rig, total)
    worker = spawn(rig, "pipeline", AUDIT_METRICS_PORT=str(free_port()))
    try:
        assert await wait_count(rig.dsn, 2000, timeout=60) >= 2000
        rig.nats.stop()
        await asyncio.sleep(30)
        assert worker.poll() is None
        rig.nats.start()  # same store: stream, consumer and backlog come back
        await assert_exact(rig, total, [worker])
    finally:
        stop_all([worker])


async def test_postgres_stopped_30_s_during_a_drain(rig: Rig) -> None:
    total = 30_000
    await publish(rig, total)
    port = free_port()
    worker = spawn(rig, "pipeline", AUDIT_METRICS_PORT=str(port), AUDIT_STALL_AFTER_S="5")
    try:
        assert await wait_count(rig.dsn, 2000, timeout=60) >= 2000
        rig.pg.stop()
        await asyncio.sleep(15)
        # The worker says why it cannot make progress (and stays up).
        status, body = await asyncio.to_thread(readyz, port)
        assert status == 503 and body["checks"]["postgresql"] != "ok"
        assert body["checks"]["pipeline"].startswith("degraded: stalled"), body
        assert metric(port, "auditlog_pipeline_last_progress_age_seconds") > 5
        await asyncio.sleep(15)
        assert worker.poll() is None
        rig.pg.start()
        await assert_exact(rig, total, [worker])
    finally:
        stop_all([worker])


async def test_postgres_paused_longer_than_ack_wait(rig: Rig) -> None:
    total = 30_000
    port = free_port()
    await publish(rig, total)
    worker = spawn(rig, "pipeline", AUDIT_METRICS_PORT=str(port))
    postmaster = int((rig.pg.data / "postmaster.pid").read_text().split()[0])
    paused: list[int] = []
    try:
        assert await wait_count(rig.dsn, 2000, timeout=60) >= 2000
        os.kill(postmaster, signal.SIGSTOP)  # first: it can fork no new backend meanwhile
        paused = [postmaster, *children(postmaster)]
        for pid in paused[1:]:
            with contextlib.suppress(ProcessLookupError):  # a backend may just have ended
                os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(12)  # three times ack_wait (4 s)
        for pid in paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        paused = []
        await assert_exact(rig, total, [worker])
        # Heartbeats kept every held message alive: no redelivery storm (a few may come
        # from a flush in flight when the pause began).
        assert metric(port, "auditlog_redeliveries_total") < 2000
    finally:
        for pid in paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        stop_all([worker])


async def test_exports_beyond_admission_get_429_while_ingestion_goes_on(rig: Rig) -> None:
    first, total = 5_000, 30_000
    http, admin = free_port(), "fm-admin-token-0123456789abcdef"
    await publish(rig, first)
    service = spawn(rig, "run", AUDIT_HTTP_PORT=str(http), AUDIT_GRPC_PORT=str(free_port()),
                    AUDIT_ADMIN_TOKEN=admin)  # fmt: skip
    try:
        assert await wait_count(rig.dsn, first, timeout=90) == first
        await publish(rig, total - first, start=first)
        url = f"http://127.0.0.1:{http}/v1/audit/export?tenant_id={TENANTS[0]}&format=ndjson"

        async def export(session: aiohttp.ClientSession) -> tuple[int, str, int]:
            async with session.get(url, headers={"Authorization": f"Bearer {admin}"}) as r:
                body = await r.read()
                return r.status, r.headers.get("Retry-After", ""), body.count(b"\n")

        async with aiohttp.ClientSession() as session:
            results = await asyncio.gather(*(export(session) for _ in range(6)))
        statuses = sorted(s for s, _, _ in results)
        assert statuses.count(200) >= 1 and statuses.count(429) >= 1, statuses
        assert all(ra for s, ra, _ in results if s == 429)
        assert all(n >= first // len(TENANTS) for s, _, n in results if s == 200)
        await assert_exact(rig, total, [service])
        # Each export that ran is in its tenant's access trail, one by one (the service
        # publishes it when the export ends; 429s never started).
        logged = await eventually(
            lambda: admin_count(rig.dsn, "SELECT count(*) FROM audit.events"
                                " WHERE action = 'audit_log.export'"),
            lambda n: n >= statuses.count(200), timeout=10, interval=0.1,
            what=f"{statuses.count(200)} exports in the access trail",
        )  # fmt: skip
        assert logged == statuses.count(200)
    finally:
        stop_all([service])


def readyz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


async def wait_readyz(port: int, want: int, timeout: float = 60) -> dict:
    """The body of /readyz once it answers ``want``."""
    _, body = await eventually(lambda: asyncio.to_thread(readyz, port), lambda r: r[0] == want,
                               timeout=timeout, interval=0.2,
                               what=f"/readyz on {port} answers {want}")  # fmt: skip
    return body


async def test_readyz_of_a_pipeline_worker(rig: Rig) -> None:
    port = free_port()
    worker = spawn(rig, "pipeline", AUDIT_METRICS_PORT=str(port))
    try:
        body = await wait_readyz(port, 200)
        assert body["checks"]["pipeline"] == "ok"
        rig.nats.stop()  # a pipeline-only worker without NATS cannot make progress
        body = await wait_readyz(port, 503)
        assert body["checks"]["nats"] != "ok"
        rig.nats.start()
        await wait_readyz(port, 200)
        assert worker.poll() is None
    finally:
        stop_all([worker])
