"""Exports: no limit on a whole stream's duration, and a failure no client can mistake
for a complete file."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import aiohttp
import asyncpg
import pytest

from infra.db import create_pool
from pipeline.flush import PartitionCache, write_batch
from pipeline.stages import Message, Valid, process
from tests.support.events import README_EVENT
from tests.support.service import serving_app

pytestmark = pytest.mark.integration
ADMIN = "export-admin-token-0123456789abcdef"
TENANT = "t-export"


async def load(dsn: str, n: int) -> None:
    """``n`` events of TENANT, written straight through the flush stage."""
    now = datetime.now(UTC)
    body = README_EVENT.replace(b"7e4e4e93-94ec-45bd-87ce-88ce3f689e3c", TENANT.encode())
    items = []
    for i in range(n):
        out = process(Message(data=body.replace(b"Successful", f"Row {i}".encode())), now)
        assert isinstance(out, Valid)
        items.append(out.prepared)
    pool = await create_pool(dsn, max_size=2)
    try:
        await PartitionCache().ensure(pool, [p.event for p in items])
        async with pool.acquire() as conn:
            for k in range(0, n, 5000):
                await write_batch(conn, items[k : k + 5000])
    finally:
        await pool.close()


async def test_a_slow_reader_gets_the_whole_export_after_60_s(db_url, settings_factory, tmp_path):
    n = 20_000
    await load(db_url, n)
    settings = settings_factory(db_url, admin_token=ADMIN, state_dir=str(tmp_path),
                                export_rows_per_s=0)  # fmt: skip
    async with serving_app(settings) as client:
        started = time.monotonic()
        r = await client.get("/v1/audit/export", params={"tenant_id": TENANT},
                             headers={"Authorization": f"Bearer {ADMIN}"})  # fmt: skip
        assert r.status == 200
        chunks = []
        # ~14 MB read at ~220 kB/s: the COPY behind it waits on the client for over 60 s
        # (asyncpg's 60 s command_timeout once cut such an export off).
        while chunk := await r.content.read(16_384):
            chunks.append(chunk)
            await asyncio.sleep(0.07 if time.monotonic() - started < 62 else 0)
        elapsed = time.monotonic() - started
    lines = b"".join(chunks).splitlines()
    assert elapsed > 60
    assert len(lines) == n
    assert all(json.loads(line)["tenant_id"] == TENANT for line in lines[:: n // 50])


async def test_an_export_that_fails_part_way_cannot_look_complete(db_url, settings_factory,
                                                                    tmp_path) -> None:  # fmt: skip
    n = 20_000
    await load(db_url, n)
    settings = settings_factory(db_url, admin_token=ADMIN, state_dir=str(tmp_path),
                                export_rows_per_s=0)  # fmt: skip
    async with serving_app(settings) as client:
        r = await client.get("/v1/audit/export", params={"tenant_id": TENANT},
                             headers={"Authorization": f"Bearer {ADMIN}"})  # fmt: skip
        assert r.status == 200
        body = await r.content.read(65_536)
        admin = await asyncpg.connect(db_url)
        try:  # PostgreSQL ends the export's session part-way
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query LIKE 'COPY%' AND pid <> pg_backend_pid()")  # fmt: skip
        finally:
            await admin.close()
        assert killed == 1
        failed = False
        try:
            while chunk := await r.content.read(65_536):
                body += chunk
        except aiohttp.ClientPayloadError:
            failed = True  # the chunked response was aborted: no final chunk
    lines = body.splitlines()
    assert failed, "the aborted response read as complete"
    assert len(lines) < n
    last = json.loads(lines[-1]) if lines[-1].startswith(b'{"error"') else None
    assert last is None or last["error"]["code"] == "export_failed"
