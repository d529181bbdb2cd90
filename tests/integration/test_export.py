"""Exports: no limit on a whole stream's duration, and a failure no client can mistake
for a complete file."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime

import aiohttp
import asyncpg
import pytest

from auditlog.embedded import free_port
from infra.db import create_pool
from pipeline.flush import PartitionCache, write_batch
from pipeline.stages import Message, Valid, process
from tests.support.events import README_EVENT
from tests.support.processes import wait_ready
from tests.support.service import serving_app
from tests.support.workers import pipeline_env

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


async def test_a_stop_ends_an_export_its_client_stopped_reading_within_the_timeout(
    db_url, settings_factory, tmp_path
) -> None:
    """SIGTERM while a client holds an export open without reading (the COPY behind it
    waits on the socket): `auditlog api` cancels the export after AUDIT_SHUTDOWN_TIMEOUT_S,
    COPY included, and exits 0 without a traceback (the COPY once ran on past the
    cancelled request, into the closing pool: twice the timeout and asyncpg errors)."""
    await load(db_url, 20_000)
    timeout_s = 4
    settings = settings_factory(db_url, state_dir=str(tmp_path))
    port = free_port()
    env = pipeline_env(settings, AUDIT_ADMIN_TOKEN=ADMIN, AUDIT_HTTP_PORT=str(port),
                       AUDIT_GRPC_PORT=str(free_port()), AUDIT_EXPORT_ROWS_PER_S="0",
                       AUDIT_SHUTDOWN_TIMEOUT_S=str(timeout_s))  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "auditlog.cli", "api"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    sock = socket.socket()
    try:
        wait_ready(port, proc)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET /v1/audit/export?tenant_id={TENANT} HTTP/1.1\r\nHost: t\r\n"
                     f"Authorization: Bearer {ADMIN}\r\n\r\n".encode())  # fmt: skip
        assert sock.recv(64).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(2)  # the export now waits on this client, which reads no more
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
        took = time.monotonic() - began
    finally:
        sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert code == 0, out
    assert "Traceback" not in out and "AttributeError" not in out, out
    assert took < 1.5 * timeout_s, f"stopped after {took:.1f} s:\n{out}"
