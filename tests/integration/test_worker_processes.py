"""Several worker processes drain one stream of 1,000 tenants without waiting on each
other's chain-head locks; one is killed mid-drain and another started: exactly N rows,
every chain verifies, and no stall longer than the stated bound (ack wait + 5 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from auditlog.embedded import free_port
from infra.settings import Settings
from ledger.chain import verify_tenant
from pipeline.source_nats import connect, ensure_stream
from schemas.ids import tenant_token
from tests.support.events import README_EVENT
from tests.support.service import publish_all
from tests.support.waits import drained, eventually
from tests.support.workers import WorkerProcess, pipeline_env

pytestmark = pytest.mark.integration
N = 30_000
TENANTS = [f"scale-{i:04d}" for i in range(1000)]
ACK_WAIT_S = 4.0
# The stated bound: a worker killed with messages in flight holds them until JetStream
# redelivers them (ack wait); PostgreSQL aborts its open transaction at once (its socket
# closed), so no head stays locked. Progress never stops longer than this.
STALL_BOUND_S = ACK_WAIT_S + 5.0


def _event(i: int) -> bytes:
    doc = json.loads(README_EVENT)
    doc["tenant_id"] = TENANTS[i % len(TENANTS)]
    doc["description"] = f"scale {i}"
    return json.dumps(doc).encode()


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    for field in ("database_url", "nats_url", "stream", "subject", "consumer", "dlq_stream",
                  "dlq_subject", "commit_subject", "checkpoint_stream", "checkpoint_subject",
                  "state_dir"):  # fmt: skip
        env["AUDIT_" + field.upper()] = str(getattr(settings, field))
    env.update(AUDIT_ACK_WAIT_S=str(ACK_WAIT_S), AUDIT_LOG_LEVEL="WARNING",
               AUDIT_STREAM_MAX_BYTES=str(256 << 20), AUDIT_DLQ_MAX_BYTES=str(64 << 20),
               AUDIT_CHECKPOINT_INTERVAL_S="0", AUDIT_BATCH_MAX_EVENTS="2000")  # fmt: skip
    return env


def _spawn(env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = dict(env, AUDIT_METRICS_PORT=str(free_port()))
    return subprocess.Popen([sys.executable, "-m", "auditlog.cli", "pipeline"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip


async def _count(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM audit.events"))


async def _lock_waits(conn: asyncpg.Connection) -> tuple[int, int]:
    """(active pipeline backends, of them waiting on a heavyweight lock) right now."""
    row = await conn.fetchrow(
        "SELECT count(*) AS active, count(*) FILTER (WHERE wait_event_type = 'Lock') AS lock"
        " FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'"
        " AND application_name = 'auditlog' AND pid <> pg_backend_pid()"
    )
    return int(row["active"]), int(row["lock"])


@pytest.mark.parametrize(("workers", "tenant_subjects"), [(2, False), (3, True)])
async def test_workers_drain_kill_one_start_another(
    db_url: str, settings_factory, tmp_path: Path, workers: int, tenant_subjects: bool
) -> None:
    settings = settings_factory(db_url, state_dir=str(tmp_path / "state"))
    nc = await connect(settings.nats_url, "scale-publisher")
    await ensure_stream(nc, settings)
    env = _env(settings)
    procs: list[subprocess.Popen[bytes]] = []
    admin = await asyncpg.connect(db_url)
    try:
        if tenant_subjects:  # each producer on its tenant's own subject
            for t in range(len(TENANTS)):
                subject = f"{settings.subject}.{tenant_token(TENANTS[t])}"
                await publish_all(nc, subject, [_event(i) for i in range(t, N, len(TENANTS))])
        else:  # the README's way: everything on the shared subject
            await publish_all(nc, settings.subject, [_event(i) for i in range(N)])
        # The backlog is all there first, so the kill lands mid-drain.
        procs.extend(_spawn(env) for _ in range(workers))
        await eventually(lambda: _count(admin), timeout=60,
                         what="a worker stored something (they start)")  # fmt: skip
        last, last_change, longest = -1, time.monotonic(), 0.0
        killed = False
        samples = lock_samples = 0

        async def progress() -> int:
            """The count, sampling stalls and lock waits; kills a worker at a third."""
            nonlocal last, last_change, longest, killed, samples, lock_samples
            count = await _count(admin)
            now = time.monotonic()
            if count != last:
                longest = max(longest, now - last_change)
                last, last_change = count, now
            if count >= N:
                return count
            if not killed and count >= N // 3:  # kill -9 one worker mid-drain, start another
                procs[0].send_signal(signal.SIGKILL)
                procs[0].wait(10)
                procs.append(_spawn(env))
                killed = True
            active, waiting = await _lock_waits(admin)
            samples += active
            lock_samples += waiting
            return count

        await eventually(progress, lambda count: count >= N, timeout=240,
                         what=f"all {N} stored")  # fmt: skip
        longest = max(longest, time.monotonic() - last_change)
        assert killed
        assert longest <= STALL_BOUND_S, f"no progress for {longest:.1f} s"
        await drained(settings, nc)  # the killed worker's messages redelivered and settled
        assert await _count(admin) == N
        dupes = await admin.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM audit.events GROUP BY tenant_id, id"
            " HAVING count(*) > 1) d"
        )
        assert dupes == 0
        # Flushes never queue on each other's heads (a brief wait on a new tenant's head
        # insert is the only lock a flush can meet).
        assert lock_samples <= max(2, samples // 20), (lock_samples, samples)
        print(
            f"{workers} workers: longest stall {longest:.2f} s; backends waiting on a "
            f"lock in {lock_samples} of {samples} samples"
        )
        app = await asyncpg.connect(db_url, server_settings={"role": "auditlog_app"})
        try:
            for tenant in TENANTS:
                async with app.transaction():
                    await app.execute("SELECT set_config('audit.tenant_id', $1, true)", tenant)
                    report = await verify_tenant(app, tenant)
                assert report.ok and report.events == N // len(TENANTS), report
        finally:
            await app.close()
        for p in procs[1:]:
            assert p.poll() is None, p.stderr.read().decode()[-3000:] if p.stderr else ""
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        await admin.close()
        await nc.close()


HOT_N = 100_000


async def test_a_hot_tenant_is_shared_by_two_workers_before_either_runs_dry(
    db_url: str, settings_factory, tmp_path: Path
) -> None:
    """One tenant sends everything (a backlog) to two worker processes: the second stores
    events while much of the backlog is still waiting. Before bucket turns it stored only
    its held events, once the first had nothing left (under a steady backlog: never)."""
    settings = settings_factory(db_url, state_dir=str(tmp_path / "state"))
    nc = await connect(settings.nats_url, "hot-publisher")
    await ensure_stream(nc, settings)
    env = pipeline_env(settings, AUDIT_LOG_LEVEL="WARNING", AUDIT_CHECKPOINT_INTERVAL_S="0",
                       AUDIT_STREAM_MAX_BYTES=str(256 << 20), AUDIT_BATCH_MAX_EVENTS="1000",
                       AUDIT_DLQ_MAX_BYTES=str(64 << 20))  # fmt: skip
    workers: list[WorkerProcess] = []
    try:
        await publish_all(nc, settings.subject, [_hot_event(i) for i in range(HOT_N)])
        workers = [WorkerProcess(env, tmp_path / f"worker-{i}.log") for i in range(2)]
        js = nc.jetstream()
        seen: list[tuple[float, float, int]] = []  # (stored by each, events left)

        async def progress() -> float:
            info = await js.consumer_info(settings.stream, settings.consumer)
            counts = []
            for w in workers:
                assert w.alive(), w.why_gone()
                try:
                    counts.append(w.stored())
                except OSError:  # (not listening yet)
                    counts.append(0.0)
            left = info.num_pending + info.num_ack_pending
            seen.append((counts[0], counts[1], left))
            return sum(counts)

        await eventually(progress, lambda n: n >= HOT_N, timeout=240, interval=0.1,
                         what=f"all {HOT_N} stored")  # fmt: skip
        # Both had stored some while a tenth of the backlog still waited (the second
        # worker holds 3,000 at most: 3 batches).
        shared = [s for s in seen if min(s[0], s[1]) > 0 and s[2] >= HOT_N // 10]
        assert shared, f"the second worker stored only at the end: {seen[-5:]}"
        print(f"hot tenant, 2 workers: both had stored at {shared[0]} (stored each, left)")
    finally:
        for w in workers:
            w.stop()
        await nc.close()


def _hot_event(i: int) -> bytes:
    doc = json.loads(README_EVENT)
    doc["tenant_id"] = "hot-tenant"
    doc["description"] = f"hot {i}"
    return json.dumps(doc).encode()
