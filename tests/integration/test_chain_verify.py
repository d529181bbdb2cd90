"""Chain verification against rows really stored, then really tampered with."""

from __future__ import annotations

import asyncpg
import pytest

from infra.db import create_pool
from ledger.chain import verify_tenant
from pipeline.flush import PartitionCache, write_batch
from tests.support.events import storage_event

pytestmark = pytest.mark.integration


async def _store(db_url: str, n: int) -> None:
    pool = await create_pool(db_url, max_size=1)
    try:
        items = [storage_event("t-chain") for _ in range(n)]
        await PartitionCache().ensure(pool, [p.event for p in items])
        async with pool.acquire() as conn:
            await write_batch(conn, items[: n // 2])
            await write_batch(conn, items[n // 2 :])
    finally:
        await pool.close()


async def _verify(db_url: str):
    conn = await asyncpg.connect(db_url, server_settings={"role": "auditlog_app"})
    try:
        return await verify_tenant(conn, "t-chain")
    finally:
        await conn.close()


async def _tamper(db_url: str, sql: str) -> None:
    # A superuser with triggers switched off: what an attacker with DB access could do.
    conn = await asyncpg.connect(db_url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(sql)
    finally:
        await conn.close()


async def test_stored_chain_verifies(db_url: str) -> None:
    report = await _verify(db_url)
    assert report.ok and report.events == 0
    await _store(db_url, 10)
    report = await _verify(db_url)
    assert report.ok and report.events == 10 and report.head_seq == 10


@pytest.mark.parametrize(
    ("sql", "seq"),
    [
        ("UPDATE audit.events SET description = 'edited' WHERE seq = 4", 4),
        ('UPDATE audit.events SET metadata = \'{"ip":"203.0.113.1"}\' WHERE seq = 6', 6),
        ("DELETE FROM audit.events WHERE seq = 3", 3),
        ("UPDATE audit.events SET seq = CASE seq WHEN 5 THEN 6 ELSE 5 END WHERE seq IN (5, 6)", 5),
        ("DELETE FROM audit.events WHERE seq = 10", 10),
    ],
)
async def test_tampering_is_detected(db_url: str, sql: str, seq: int) -> None:
    await _store(db_url, 10)
    await _tamper(db_url, sql)
    report = await _verify(db_url)
    assert not report.ok
    assert report.first_break is not None and report.first_break.seq == seq
