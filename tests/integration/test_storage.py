"""Storage: migrations, roles, immutability, row-level security, partitions."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from infra.db import create_pool
from infra.migrate import applied_versions, load_migrations, migrate
from pipeline.flush import PgStore, write_batch
from pipeline.sinks import RetryableStoreError
from pipeline.stages import Message, Valid
from tests.support.databases import create_database
from tests.support.events import storage_event
from tests.support.waits import eventually

pytestmark = pytest.mark.integration


async def test_migrations_fresh_twice_and_concurrently(pg_server_url: str) -> None:
    dsn = await create_database(pg_server_url, None)
    results = await asyncio.gather(migrate(dsn), migrate(dsn), migrate(dsn))
    every = sorted(v for r in results for v in r)
    assert every == [m.version for m in load_migrations()]  # each applied exactly once
    assert await migrate(dsn) == []
    conn = await asyncpg.connect(dsn)
    try:
        assert sorted(await applied_versions(conn)) == every
        assert await conn.fetchval("SELECT count(*) FROM audit.partitions") >= 4
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit.events SET action = 'x'",
        "DELETE FROM audit.events",
        "TRUNCATE audit.events",
        "UPDATE audit.event_ids SET occurred_at = now()",
    ],
)
async def test_app_role_cannot_change_events(db_url: str, sql: str) -> None:
    pool = await create_pool(db_url, max_size=1)
    try:
        async with pool.acquire() as conn:
            await write_batch(conn, [storage_event("t-1")])
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute("SELECT set_config('audit.tenant_id', 't-1', true)")
                    await conn.execute(sql)
    finally:
        await pool.close()


async def test_trigger_refuses_changes_even_for_the_owner(db_url: str) -> None:
    pool = await create_pool(db_url, max_size=1)
    async with pool.acquire() as conn:
        await write_batch(conn, [storage_event("t-1")])
    await pool.close()
    conn = await asyncpg.connect(db_url)  # the superuser, who owns everything
    try:
        for sql in (
            "UPDATE audit.events SET action = 'x'",
            "DELETE FROM audit.events",
            "TRUNCATE audit.events",
        ):
            with pytest.raises(asyncpg.PostgresError) as info:
                await conn.execute(sql)
            assert info.value.sqlstate == "AL001"
            assert "immutable" in str(info.value)
        assert await conn.fetchval("SELECT count(*) FROM audit.events") == 1
    finally:
        await conn.close()


async def test_row_level_security_hides_other_tenants(db_url: str) -> None:
    pool = await create_pool(db_url, max_size=1)
    try:
        async with pool.acquire() as conn:
            await write_batch(
                conn,
                [storage_event("tenant-a"), storage_event("tenant-a"), storage_event("tenant-b")],
            )
            # No tenant set: nothing is visible.
            assert await conn.fetchval("SELECT count(*) FROM audit.events") == 0
            for tenant, expected in (("tenant-a", 2), ("tenant-b", 1), ("tenant-c", 0)):
                async with conn.transaction():
                    await conn.execute("SELECT set_config('audit.tenant_id', $1, true)", tenant)
                    seen = await conn.fetch("SELECT tenant_id FROM audit.events")
                    assert [r["tenant_id"] for r in seen] == [tenant] * expected
            # A forged WHERE clause does not get around it either.
            async with conn.transaction():
                await conn.execute("SELECT set_config('audit.tenant_id', 'tenant-a', true)")
                n = await conn.fetchval(
                    "SELECT count(*) FROM audit.events WHERE tenant_id = 'tenant-b' OR true"
                )
                assert n == 2
                # And the app role cannot read partitions directly.
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    part = await conn.fetchval("SELECT min(name) FROM audit.partitions")
                    await conn.fetch(f"SELECT * FROM audit.{part}")
    finally:
        await pool.close()


async def test_partitions_appear_on_demand(db_url: str) -> None:
    next_year = datetime.now(UTC).year + 1
    old = storage_event("t-1", "2019-03-04T05:06:07.123456Z")
    future = storage_event("t-1", f"{next_year}-12-31T23:59:59Z")
    from pipeline.flush import PartitionCache

    pool = await create_pool(db_url, max_size=2)
    try:
        await asyncio.gather(
            PartitionCache().ensure(pool, [old.event, future.event]),
            PartitionCache().ensure(pool, [old.event, future.event]),
        )
        async with pool.acquire() as conn:
            await write_batch(conn, [old, future])
            names = {r["name"] for r in await conn.fetch("SELECT name FROM audit.partitions")}
            async with conn.transaction():
                await conn.execute("SELECT set_config('audit.tenant_id', 't-1', true)")
                stored = await conn.fetch("SELECT occurred_at FROM audit.events ORDER BY 1")
    finally:
        await pool.close()
    assert {"events_2019_03", f"events_{next_year}_12"} <= names
    assert [r["occurred_at"] for r in stored] == [old.event.occurred_at, future.event.occurred_at]
    conn = await asyncpg.connect(db_url)
    try:
        default = await conn.fetchval(
            "SELECT count(*) FROM pg_partitioned_table p JOIN pg_class c "
            "ON c.oid = p.partdefid WHERE p.partrelid = 'audit.events'::regclass"
        )
        assert default == 0  # no catch-all partition that could block a later month
    finally:
        await conn.close()


async def test_partitions_are_made_ahead(db_url: str) -> None:
    from auditlog.runtime import partitions_ahead

    pool = await create_pool(db_url, max_size=1)
    try:
        task = asyncio.create_task(partitions_ahead(pool, 3))
        expected = set()
        now = datetime.now(UTC).replace(day=15)
        for i in range(4):
            ts = now + timedelta(days=31 * i)
            expected.add(f"events_{ts.year:04d}_{ts.month:02d}")

        async def names() -> set[str]:
            async with pool.acquire() as conn:
                return {r["name"] for r in await conn.fetch("SELECT name FROM audit.partitions")}

        await eventually(names, lambda made: expected <= made, timeout=5,
                         what=f"partitions {sorted(expected)} made")  # fmt: skip
        task.cancel()
    finally:
        await pool.close()


async def test_the_runtime_login_cannot_alter_drop_or_disable_triggers(db_url) -> None:
    """Least privilege: what the service logs in as (``<db>_runtime``, a member of
    auditlog_app only) cannot undo immutability, whatever role it sets or resets."""
    from infra.db import ensure_runtime_role, runtime_role

    runtime = await ensure_runtime_role(db_url, "a-test-password-0123456789")
    assert runtime_role(db_url) in runtime and "a-test-password" in runtime
    await ensure_runtime_role(db_url, "a-test-password-0123456789")  # idempotent
    conn = await asyncpg.connect(runtime)
    try:
        await conn.execute("SET ROLE auditlog_app")  # what its pools do: allowed
        await conn.execute("RESET ROLE")
        part = await conn.fetchval("SELECT min(name) FROM audit.partitions")
        refused = [
            "ALTER TABLE audit.events DISABLE TRIGGER ALL",
            f"ALTER TABLE audit.{part} DISABLE TRIGGER ALL",
            f"DROP TABLE audit.{part}",
            "DROP TABLE audit.checkpoints",
            "ALTER TABLE audit.events DETACH PARTITION audit." + part,
            "SET session_replication_role = replica",
            "SET ROLE auditlog_owner",
            "TRUNCATE audit.events",
            "DELETE FROM audit.signing_keys",
            "UPDATE audit.checkpoints SET note = ''",
            "DELETE FROM audit.retention_gaps",
        ]
        for sql in refused:
            with pytest.raises(asyncpg.PostgresError) as info:
                await conn.execute(sql)
            assert isinstance(
                info.value, asyncpg.InsufficientPrivilegeError | asyncpg.RaiseError
            ), (sql, info.value)
        # The retention job's switch does not open claims to the runtime role.
        async with conn.transaction():
            await conn.execute("SELECT set_config('audit.retention_drop', 'on', true)")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("DELETE FROM audit.event_ids")
    finally:
        await conn.close()


async def test_a_flush_skips_heads_another_holds_and_never_waits(db_url: str) -> None:
    """Tenants whose chain head another transaction holds are left out (reported busy,
    nothing of theirs claimed or written); the other tenants commit at once."""
    pool = await create_pool(db_url, max_size=2)
    try:
        async with pool.acquire() as conn:
            await write_batch(conn, [storage_event("hot"), storage_event("cold")])  # heads exist
        async with pool.acquire() as holder, pool.acquire() as flusher:
            async with holder.transaction():
                await holder.execute(
                    "SELECT 1 FROM audit.chain_heads WHERE tenant_id = 'hot' FOR UPDATE"
                )
                batch = [
                    storage_event("hot"),
                    storage_event("cold"),
                    storage_event("new-tenant"),
                    storage_event("hot"),
                ]
                result = await asyncio.wait_for(write_batch(flusher, batch), 5)
                assert result.busy == {"hot"}
                assert sorted(t for t, _ in result.stored) == ["cold", "new-tenant"]
                skipped = [p for p in batch if p.event.tenant_id == "hot"]  # type: ignore[attr-defined]
            again = await asyncio.wait_for(write_batch(flusher, skipped), 5)
            assert not again.busy and len(again.stored) == 2
            async with flusher.transaction():
                await flusher.execute("SELECT set_config('audit.tenant_id', 'hot', true)")
                seqs = await flusher.fetch(
                    "SELECT seq FROM audit.events WHERE tenant_id = 'hot' ORDER BY seq"
                )
            assert [r["seq"] for r in seqs] == [1, 2, 3]  # gapless, nothing claimed twice
    finally:
        await pool.close()


async def test_a_store_keeps_its_flush_connection_replaces_a_dead_one_and_gives_it_back(
    db_url: str,
) -> None:
    """PgStore keeps a flush's connection for the next flush (no pool reset round trip
    per flush); a kept connection whose session died fails one write (retryable: nothing
    stored) and is replaced; close() hands the kept ones back, so the pool closes."""
    pool = await create_pool(db_url, max_size=4)
    store = PgStore(pool)
    try:

        def batch(tenant: str) -> list[Valid]:
            return [Valid(Message(data=b"{}"), storage_event(tenant))]  # type: ignore[arg-type]

        result, refused = await store.write(batch("kept-a"))
        assert len(result.stored) == 1 and not refused
        assert (pool.get_size(), pool.get_idle_size()) == (1, 0)  # kept, not handed back
        result, _ = await store.write(batch("kept-a"))
        assert len(result.stored) == 1 and pool.get_size() == 1  # the same one again
        admin = await asyncpg.connect(db_url)  # the test's own login, not the app role
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'auditlog'"
            )
        finally:
            await admin.close()
        assert killed == 1
        with pytest.raises(RetryableStoreError):
            await store.write(batch("kept-b"))
        result, _ = await store.write(batch("kept-b"))  # a new connection
        assert len(result.stored) == 1
        await store.close()
        assert pool.get_idle_size() == pool.get_size()
        await asyncio.wait_for(pool.close(), 10)  # nothing left outstanding
    finally:
        pool.terminate()


def _interleavings(n: int = 25) -> list[list[int]]:
    """``n`` batches drawn by hypothesis (generation only: the checks run afterwards, since
    the database and hypothesis's engine do not share an event loop): tenant numbers in
    batch order, interleaved any way."""
    out: list[list[int]] = []

    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.lists(st.integers(0, 4), min_size=1, max_size=40))
    def collect(batch: list[int]) -> None:
        out.append(batch)

    collect()
    return out


async def test_a_flush_writes_each_tenants_events_together_in_the_order_given(
    db_url: str,
) -> None:
    """Rows and claims reach the tables grouped by tenant (consecutive inserts share
    B-tree pages), while each tenant's events are chained in the order the batch gave
    them: seq 1, 2, .. follow the batch, however the tenants were interleaved."""
    pool = await create_pool(db_url, max_size=1)
    owner = await asyncpg.connect(db_url)  # the superuser: heap order, no row security
    try:
        for k, drawn in enumerate(_interleavings()):
            batch = [storage_event(f"g{k}-t{t}") for t in drawn]
            async with pool.acquire() as conn:
                result = await write_batch(conn, batch)
            assert len(result.stored) == len(batch)
            given_order: dict[str, list[object]] = {}
            for p in batch:
                given_order.setdefault(p.tenant_id, []).append(p.id)  # type: ignore[attr-defined]
            for table, seq in (("events", "seq"), ("event_ids", "0")):
                rows = await owner.fetch(
                    f"SELECT tenant_id, id, {seq} AS seq FROM audit.{table}"
                    " WHERE tenant_id LIKE $1 ORDER BY tableoid, ctid", f"g{k}-%",
                )  # fmt: skip
                runs = [r["tenant_id"] for i, r in enumerate(rows)
                        if i == 0 or rows[i - 1]["tenant_id"] != r["tenant_id"]]  # fmt: skip
                assert sorted(runs) == sorted(given_order), (table, drawn, runs)
            stored = await owner.fetch(
                "SELECT tenant_id, id FROM audit.events WHERE tenant_id LIKE $1"
                " ORDER BY tenant_id, seq", f"g{k}-%",
            )  # fmt: skip
            by_seq: dict[str, list[object]] = {}
            for r in stored:
                by_seq.setdefault(r["tenant_id"], []).append(r["id"])
            assert by_seq == given_order
    finally:
        await owner.close()
        await pool.close()
