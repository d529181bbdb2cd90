"""PostgreSQL failover: a primary with a synchronous standby (``pg_basebackup``, named in
``synchronous_standby_names``), two worker processes whose AUDIT_DATABASE_URL lists both
hosts with ``target_session_attrs=read-write``. The primary is killed -9 (with every
backend) mid-drain and the standby promoted: the workers reconnect without a restart, every
acknowledged event is stored exactly once, and ``auditlog verify`` finds every tenant's
log intact, signed checkpoints made before and after the failover included.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from infra.nats_streams import ensure_stream
from infra.signing import load_signer
from pipeline.source_nats import connect
from schemas.ids import msg_id_for
from tests.support.events import README_EVENT
from tests.support.pg_standby import PrimaryWithStandby
from tests.support.waits import drained, eventually
from tests.support.workers import StallMeter, WorkerProcess, gone, pipeline_env, publish_acked

pytestmark = pytest.mark.integration
N = 6000
RATE = 500.0  # events/s published (12 s)
TENANTS = [f"failover-{i}" for i in range(8)]
ACK_WAIT_S = 4.0
PROMOTE_AFTER_S = 2.0  # the primary stays dead this long before the standby is promoted
# A flush retried with backoff (capped at 5 s) and the pool's reconnect through both
# hosts; events in flight stay held (heartbeats), so no ack wait; a loaded 2-core machine.
STALL_BOUND_S = PROMOTE_AFTER_S + 5.0 + 8.0


def _events() -> list[tuple[bytes, dict[str, str]]]:
    out = []
    for i in range(N):
        doc = json.loads(README_EVENT)
        doc["tenant_id"] = TENANTS[i % len(TENANTS)]
        doc["description"] = f"failover {i}"
        out.append((json.dumps(doc).encode(),
                    {"Nats-Msg-Id": msg_id_for(doc["tenant_id"], f"e{i}")}))  # fmt: skip
    return out


TWICE = ("SELECT count(*) FROM (SELECT 1 FROM audit.events GROUP BY tenant_id, id"
         " HAVING count(*) > 1) d")  # fmt: skip


async def _count(dsn: str, sql: str = "SELECT count(*) FROM audit.events") -> int:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return int(await conn.fetchval(sql, timeout=5))
    finally:
        await conn.close()


def _verify(env: dict[str, str], tenant: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "auditlog.cli", "verify", tenant, "--json"],
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, (tenant, out.stdout, out.stderr[-3000:])
    return json.loads(out.stdout)


async def _all_checkpointed(dsn: str) -> bool:
    """Every tenant's latest signed checkpoint covers all of its events."""
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        sizes = await conn.fetch("SELECT tenant_id, max(size) AS size FROM audit.checkpoints"
                                 " GROUP BY tenant_id")  # fmt: skip
    finally:
        await conn.close()
    per_tenant = N // len(TENANTS)
    return len(sizes) == len(TENANTS) and all(r["size"] == per_tenant for r in sizes)


async def _checkpoints(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM audit.checkpoints", timeout=5))
    finally:
        await conn.close()


async def test_primary_killed_standby_promoted(nats_url: str, settings_factory,
                                               tmp_path: Path) -> None:  # fmt: skip
    began = time.monotonic()
    pg = PrimaryWithStandby(tmp_path / "pg")
    await pg.start()
    dsn = pg.dsn("auditlog_failover")  # both hosts, target_session_attrs=read-write
    standby = pg.standby.dsn("auditlog_failover")  # counts read while the primary is away
    settings = settings_factory(dsn, state_dir=str(tmp_path / "state"))
    load_signer(settings)  # one signing key for both workers' checkpointers
    env = pipeline_env(settings, AUDIT_ACK_WAIT_S=str(ACK_WAIT_S), AUDIT_LOG_LEVEL="WARNING",
                       AUDIT_STREAM_MAX_BYTES=str(64 << 20), AUDIT_DLQ_MAX_BYTES=str(16 << 20),
                       AUDIT_CHECKPOINT_INTERVAL_S="1")  # fmt: skip
    nc = await connect(settings.nats_url, "failover-publisher")
    workers: list[WorkerProcess] = []
    acked: list[float] = []
    ignore = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
    try:
        await ensure_stream(nc, settings)
        # The workers create the database, migrate and provision the runtime login
        # through the DSN's hosts.
        workers = [WorkerProcess(env, tmp_path / f"worker-{i}.log") for i in range(2)]

        async def count() -> int:
            assert not gone(workers), gone(workers)
            return await _count(standby)

        publisher = asyncio.create_task(publish_acked(nc, settings.subject, _events(), acked,
                                                      RATE))  # fmt: skip
        await eventually(count, timeout=120, interval=0.1, ignore=ignore,
                         what="the workers store")  # fmt: skip
        meter = StallMeter(count, lambda: len(acked))
        # Mid-drain, once checkpoints were signed: the kill lands between two of them.
        await eventually(meter.sample, lambda n: n >= N // 3, timeout=120, interval=0.05,
                         ignore=ignore, what=f"{N // 3} stored")  # fmt: skip
        await eventually(lambda: _checkpoints(standby), timeout=30, interval=0.1,
                         ignore=ignore, what="a checkpoint signed")  # fmt: skip
        pg.kill_primary()
        killed_at = meter.count
        await asyncio.sleep(PROMOTE_AFTER_S)
        pg.promote()
        stored_before = [w.stored() for w in workers]
        print(f"\nprimary killed at {killed_at} stored, {len(acked)} of {N} acked, "
              f"{time.monotonic() - began:.1f} s in; standby promoted {PROMOTE_AFTER_S:g} s "
              "later")  # fmt: skip
        await eventually(meter.sample, lambda n: n >= N and publisher.done(), timeout=180,
                         interval=0.1, ignore=ignore, what=f"all {N} stored")  # fmt: skip
        await publisher
        print(f"all {N} stored {time.monotonic() - began:.1f} s in; longest stall "
              f"{meter.longest:.2f} s (bound {STALL_BOUND_S:.0f} s)")  # fmt: skip
        await drained(settings, nc, timeout=120)
        assert await _count(standby) == N
        assert await _count(standby, TWICE) == 0
        assert killed_at < N and meter.longest <= STALL_BOUND_S, meter.longest
        for w, stored in zip(workers, stored_before, strict=True):
            # Reconnected without a restart (of the process or of its worker), and stored.
            assert not w.why_gone() and w.restarts() == 0, w.why_gone() or w.tail()
            assert w.stored() > stored, f"stored nothing after the failover: {w.tail()}"
        await eventually(lambda: _all_checkpointed(standby), timeout=60, interval=0.5,
                         ignore=ignore, what="signed checkpoints over every event")  # fmt: skip
        for tenant in TENANTS:  # the CLI, as an auditor runs it, through the DSN's hosts
            report = await asyncio.to_thread(_verify, env, tenant)
            assert report["status"] == "intact", report
            assert report["events"] == N // len(TENANTS) and report["checkpoints"] >= 2, report
            assert report["witnessed_size"] == N // len(TENANTS), report
    finally:
        for w in workers:
            w.stop()
        await nc.close()
        pg.stop()
