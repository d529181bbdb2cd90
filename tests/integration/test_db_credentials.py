"""Database credentials (auditlog/credentials.py) and the retention lease, against real
PostgreSQL and NATS: the owner's credentials migrate and run retention, one process at a
time; the runtime login alone migrates nothing and never runs retention; a single URL
with owner rights works as before. The owner URLs here list the server twice (libpq's
multi-host form), so every DSN derived from them is checked against a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from auditlog.credentials import Credentials
from auditlog.embedded import free_port
from auditlog.runtime import Endpoints, database_ready, servers
from infra import dsn as dsns
from infra.db import ensure_runtime_role, holds_owner_rights, runtime_role
from infra.metrics import Metrics
from infra.settings import Settings
from infra.signing import load_signer
from ledger import retention
from tests.support.databases import create_database
from tests.support.metrics import sample
from tests.support.service import due_month
from tests.support.waits import eventually

pytestmark = pytest.mark.integration
PASSWORD = "runtime-password-for-tests-0123"
ADMIN = "admin-token-for-credential-tests-0123"


def twice(dsn: str) -> str:
    """``dsn`` with its server listed twice: ``postgresql://u:p@h:1,h:1/db``."""
    d = dsns.parse(dsn)
    return d.replace(hosts=d.hosts * 2).url()


def env_for(settings: Settings, state: Path, **extra: str) -> dict[str, str]:
    """The environment of an ``auditlog`` process on ``settings``' NATS names, with a
    retention round every half second."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    s = settings
    env.update(AUDIT_NATS_URL=s.nats_url, AUDIT_STATE_DIR=str(state), AUDIT_STREAM=s.stream,
               AUDIT_SUBJECT=s.subject, AUDIT_CONSUMER=s.consumer,
               AUDIT_DLQ_STREAM=s.dlq_stream, AUDIT_DLQ_SUBJECT=s.dlq_subject,
               AUDIT_COMMIT_SUBJECT=s.commit_subject, AUDIT_CHECKPOINT_STREAM=s.checkpoint_stream,
               AUDIT_CHECKPOINT_SUBJECT=s.checkpoint_subject,
               AUDIT_STREAM_MAX_BYTES=str(s.stream_max_bytes),
               AUDIT_DLQ_MAX_BYTES=str(s.dlq_max_bytes),
               AUDIT_SIGNING_KEY_FILE=str(Path(s.state_dir) / "signing-key"),
               AUDIT_CHECKPOINT_INTERVAL_S="1", AUDIT_RETENTION_INTERVAL_S="0.5",
               AUDIT_ADMIN_TOKEN=ADMIN, AUDIT_RUNTIME_PASSWORD=PASSWORD,
               AUDIT_HTTP_PORT=str(free_port()), AUDIT_GRPC_PORT=str(free_port()),
               **extra)  # fmt: skip
    return env


@dataclass
class Process:
    """An ``auditlog`` process whose output goes to ``log``."""

    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def get(self, path: str) -> tuple[int, str]:
        url, timeout = f"http://127.0.0.1:{self.port}{path}", aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as r:
            return r.status, await r.text()

    async def ready(self, timeout: float = 90) -> None:
        async def readyz() -> tuple[int, str]:
            assert self.popen.poll() is None, self.output()
            return await self.get("/readyz")

        await eventually(readyz, lambda r: r[0] == 200, timeout=timeout, interval=0.1,
                         ignore=(aiohttp.ClientError, TimeoutError),
                         what=f"/readyz of {self.log.name} answers 200")  # fmt: skip

    async def dropped(self) -> float:
        """``auditlog_retention_partitions_dropped_total`` on its /metrics."""
        _, text = await self.get("/metrics")
        line = next(x for x in text.splitlines()
                    if x.startswith("auditlog_retention_partitions_dropped_total "))  # fmt: skip
        return float(line.split()[1])


@contextlib.contextmanager
def auditlog(command: str, env: dict[str, str], log: Path) -> Iterator[Process]:
    """Run ``auditlog COMMAND`` until the block ends (then SIGTERM, and a kill if stuck)."""
    with log.open("wb") as out:
        popen = subprocess.Popen([sys.executable, "-m", "auditlog.cli", command], env=env,
                                 stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        yield Process(popen, int(env["AUDIT_HTTP_PORT"]), log)
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()


async def fetchval(dsn: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "auditlog.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


async def test_two_processes_with_retention_due_drop_the_month_once(
    db_url: str, settings_factory, tmp_path: Path
) -> None:
    settings = settings_factory(db_url)
    name = await due_month(settings, "cred-two-runners")
    owner = twice(db_url)
    # Inserts into the gap records wait while the test holds this lock: the process that
    # takes the lease stops inside its drop, still holding it, and the other's rounds meet
    # the lease for as long as we like.
    env_a, env_b = (env_for(settings, tmp_path / x, AUDIT_DATABASE_OWNER_URL=owner,
                            AUDIT_LOG_LEVEL="DEBUG") for x in "ab")  # fmt: skip
    blocker = await asyncpg.connect(db_url)
    block = blocker.transaction()
    await block.start()
    await blocker.execute("LOCK TABLE audit.retention_gaps IN SHARE MODE")
    try:
        with auditlog("api", env_a, tmp_path / "a.log") as a, \
             auditlog("api", env_b, tmp_path / "b.log") as b:  # fmt: skip
            await a.ready()
            await b.ready()

            await eventually(lambda: blocker.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted"
                " AND relation = 'audit.retention_gaps'::regclass"), timeout=30, interval=0.1,
                what="a drop started (waiting on the lock)")  # fmt: skip
            await eventually(lambda: a.output() + b.output(),
                             lambda out: "holds the retention lease" in out, timeout=30,
                             interval=0.1, what="a round met the lease")  # fmt: skip
            await block.rollback()
            await eventually(lambda: blocker.fetchval("SELECT to_regclass($1)", f"audit.{name}"),
                             lambda rel: rel is None, timeout=30, interval=0.1,
                             what=f"{name} dropped")  # fmt: skip
            await asyncio.sleep(2)  # more rounds in both: nothing is due any more
            counted = [await a.dropped(), await b.dropped()]
        logs = [a.output(), b.output()]
    finally:
        if blocker.is_in_transaction():
            await block.rollback()
        await blocker.close()
    assert sorted(counted) == [0, 1]
    dropper, other = (0, 1) if counted[0] else (1, 0)
    assert sum(f"retention: dropped {name}" in out for out in logs) == 1
    assert f"retention: dropped {name}" in logs[dropper]
    assert "holds the retention lease" in logs[other]
    assert "retention: nothing due" in logs[other]  # after the drop: nothing left to do
    assert await fetchval(db_url, "SELECT count(*) FROM audit.dropped_partitions"
                                  " WHERE name = $1", name) == 1  # fmt: skip
    for out in logs:  # the owner's credentials, on both hosts of the list, and the runtime login
        assert f"owner credentials held: postgresql://{dsns.parse(db_url).user}:***@" in out
        assert f"postgresql: postgresql://{runtime_role(db_url)}:***@" in out
        assert PASSWORD not in out


async def test_a_runtime_login_waits_for_migrations_and_never_runs_retention(
    pg_server_url: str, template_db: str, settings_factory, tmp_path: Path
) -> None:
    # template_db: migrated once, so the cluster-wide roles (auditlog_app) exist.
    owner = await create_database(pg_server_url, None)  # empty: no schema yet
    try:
        runtime = await ensure_runtime_role(owner, PASSWORD)
        settings = settings_factory(owner)
        load_signer(settings)  # the key the processes are pointed at
        env = env_for(settings, tmp_path / "api", AUDIT_DATABASE_URL=runtime)
        with auditlog("api", env, tmp_path / "api.log") as api:
            await eventually(api.output, lambda out: "SchemaNotCurrent" in out, timeout=60,
                             interval=0.1, what="the api waiting for migrations")  # fmt: skip
            applied = await fetchval(owner, "SELECT to_regclass('audit.events')")
            assert applied is None  # the runtime login applied nothing
            refused = await asyncio.to_thread(cli, "migrate", env=env)
            assert refused.returncode == 1 and "cannot migrate" in refused.stderr
            migrate_env = env_for(settings, tmp_path / "migrate", AUDIT_DATABASE_URL=runtime,
                                  AUDIT_DATABASE_OWNER_URL=twice(owner))  # fmt: skip
            done = await asyncio.to_thread(cli, "migrate", env=migrate_env)
            assert done.returncode == 0, done.stderr
            assert "applied migrations: 001" in done.stdout
            assert f"runtime login: postgresql://{runtime_role(owner)}:***@" in done.stdout
            await api.ready()
            # Retention is due now; this process never runs it.
            name = await due_month(settings, "cred-runtime-only")
            await asyncio.sleep(2)  # four retention intervals
            assert await api.dropped() == 0
            assert await fetchval(owner, "SELECT to_regclass($1)", f"audit.{name}") is not None
        out = api.output()
    finally:
        admin = await asyncpg.connect(pg_server_url)
        name_db = dsns.parse(owner).database
        await admin.execute(f'DROP DATABASE IF EXISTS "{name_db}" WITH (FORCE)')
        await admin.close()
    assert "applies no migrations and runs no retention" in out
    assert "applied migration" not in out and "retention:" not in out
    assert "owner credentials held" not in out and PASSWORD not in out


async def test_what_each_configuration_holds(db_url: str, settings_factory,
                                             caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    settings = settings_factory(db_url, runtime_password=PASSWORD)
    nats = settings.nats_url
    # A single URL with owner rights (as before): the owner, and a line on how to split.
    with caplog.at_level(logging.WARNING, logger="auditlog.credentials"):
        single = await database_ready(settings, Endpoints(db_url, nats))
    assert single.owner == db_url
    assert dsns.parse(single.runtime).user == runtime_role(db_url)
    assert "holds owner rights" in caplog.text and PASSWORD not in caplog.text
    # The runtime login alone: no owner credentials, nothing to run retention with.
    assert await database_ready(settings, Endpoints(single.runtime, nats)) == Credentials(
        single.runtime
    )
    # The owner URL (multi-host): the runtime login is derived on the same hosts and options.
    owner = twice(db_url) + "?target_session_attrs=read-write"
    split = settings.replace(database_owner_url=owner, database_url="")
    with servers(split) as ends:  # no embedded PostgreSQL for an owner URL alone
        assert ends == Endpoints("", nats, owner)
    assert not (Path(settings.state_dir) / "pg").exists()
    held = await database_ready(split, ends)
    assert held.owner == owner
    derived = dsns.parse(held.runtime)
    assert derived.hosts == dsns.parse(owner).hosts and len(derived.hosts) == 2
    assert derived.query == "target_session_attrs=read-write"
    conn = await asyncpg.connect(held.runtime)
    try:
        assert await conn.fetchval("SELECT current_user") == runtime_role(db_url)
        assert not await holds_owner_rights(conn)
    finally:
        await conn.close()


async def test_the_retention_lease_admits_one_runner(db_url: str, settings_factory) -> None:
    settings = settings_factory(db_url)
    name = await due_month(settings, "cred-lease")
    metrics = Metrics()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env.update(AUDIT_DATABASE_OWNER_URL=twice(db_url), AUDIT_STATE_DIR=settings.state_dir)
    async with retention.lease(db_url) as holder:
        assert holder is None  # this test runs retention now
        signer = load_signer(settings)
        assert await retention.run_job(db_url, settings, signer, metrics) is None
        refused = await asyncio.to_thread(cli, "retention", "apply", env=env)
        assert refused.returncode == 1
        assert "holds the retention lease; nothing dropped" in refused.stderr
        assert "(pid " in refused.stderr and "auditlog retention" in refused.stderr
    assert sample(metrics, "auditlog_retention_partitions_dropped_total") == 0
    applied = await asyncio.to_thread(cli, "retention", "apply", env=env)
    assert applied.returncode == 0, applied.stderr
    assert f"dropped {name}" in applied.stdout
