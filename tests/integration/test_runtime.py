"""The embedded runtime: `auditlog run` starts, serves, keeps data across restarts, stops."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import asyncpg
import nats
import pytest

from auditlog.embedded import _listening, free_port
from tests.support.events import README_EVENT
from tests.support.processes import get, start, stop, wait_ready
from tests.support.waits import eventually

pytestmark = pytest.mark.integration


async def count_rows(state: Path) -> int:
    pg = state / "pg"
    dsn = (
        f"postgresql://postgres:{(pg / 'password').read_text().strip()}"
        f"@127.0.0.1:{(pg / 'port').read_text().strip()}/auditlog"
    )
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM audit.events"))
    finally:
        await conn.close()


async def test_run_serves_survives_restart_and_stops(tmp_path: Path) -> None:
    state = tmp_path / "state"
    port = free_port()
    proc = start(state, port)
    try:
        body = wait_ready(port, proc)
        assert body["checks"] == {"postgresql": "ok", "search": "ok", "streams": "ok",
                                  "nats": "ok", "consumer": "ok", "pipeline": "ok"}  # fmt: skip
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        # First start: an admin token exists (0600) and works; no token is refused.
        token_path = state / "admin-tokens"
        assert token_path.stat().st_mode & 0o777 == 0o600
        token = token_path.read_text().split()[-1]
        assert get(f"http://127.0.0.1:{port}/v1/admin/keys", token)[0] == 200
        assert get(f"http://127.0.0.1:{port}/v1/admin/keys")[0] == 401
        nats_port = int((state / "nats" / "port").read_text())
        pg_port = int((state / "pg" / "port").read_text())
        assert {nats_port, pg_port}.isdisjoint({4222, 5432})
        nc = await nats.connect(f"nats://127.0.0.1:{nats_port}")
        await nc.jetstream().publish("audit.events", README_EVENT)
        await nc.close()
        await eventually(lambda: count_rows(state), lambda n: n == 1, timeout=15, interval=0.1,
                         what="the published event stored")  # fmt: skip
    finally:
        out = stop(proc)
    assert "listening on http://127.0.0.1:" in out and "embedded postgresql" in out
    assert "stopped: 1 stored" in out
    assert f"Admin token: {token}" in out and "auditlog admin-token show" in out
    password = (state / "pg" / "password").read_text().strip()
    assert password not in out and "postgres:***@" in out  # secrets never logged
    assert not _listening(nats_port) and not _listening(pg_port)

    proc = start(state, port)
    try:
        wait_ready(port, proc)
        assert await count_rows(state) == 1  # data survived
        verify = subprocess.run(
            [sys.executable, "-m", "auditlog.cli", "verify",
             "7e4e4e93-94ec-45bd-87ce-88ce3f689e3c"],
            env=dict(os.environ, AUDIT_STATE_DIR=str(state)),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert verify.returncode == 0, verify.stderr
        assert "ok: 1 events" in verify.stdout
        # The CLI adopted the running servers and left them running.
        assert _listening(pg_port)
        assert get(f"http://127.0.0.1:{port}/readyz")[0] == 200
    finally:
        out = stop(proc)
    assert not _listening(pg_port)
    # Later starts say where the token is kept, never the token itself.
    assert token not in out and f"admin tokens: 1 in {token_path}" in out


def test_json_logs_one_object_per_line(tmp_path: Path, pg_server_url: str) -> None:
    from infra.db import with_database

    dsn = with_database(pg_server_url, f"auditlog_jsonlog_{os.getpid()}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env.update(AUDIT_DATABASE_URL=dsn, AUDIT_LOG_FORMAT="json", AUDIT_STATE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "auditlog.cli", "migrate"], env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stderr.splitlines() if line.strip()]
    assert any("applied migration 001" in d["message"] for d in lines)
    assert all({"ts", "level", "logger", "message"} <= d.keys() for d in lines)

    async def drop() -> None:
        admin = await asyncpg.connect(pg_server_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
        await admin.close()

    asyncio.run(drop())


def post(url: str, body: dict, token: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_api_and_pipeline_run_as_separate_processes(tmp_path: Path) -> None:
    """`auditlog api` stores nothing itself; an `auditlog pipeline` beside it (adopting
    the same embedded servers) stores its writes and its commit notices answer them."""
    state = tmp_path / "state"
    port = free_port()
    token = "split-admin-token-0123456789abcdef"
    env = {"AUDIT_ADMIN_TOKEN": token, "AUDIT_WRITE_TIMEOUT_S": "2"}
    api = start(state, port, **env, command="api")
    worker = None
    url = f"http://127.0.0.1:{port}/v1/audit/events"
    first = json.loads(README_EVENT)
    second = dict(first, id="0193a0c1-7b2c-7d3e-8f40-123456789abc")
    try:
        body = wait_ready(port, api)
        assert body["checks"]["pipeline"] == "ok"  # no worker here to be unwell
        status, answer = post(url, {"event": first}, token)
        assert (status, answer["committed"]) == (202, False)  # durable, no worker yet
        await asyncio.sleep(1)
        assert await count_rows(state) == 0
        worker = start(state, free_port(), **env, command="pipeline",
                       AUDIT_METRICS_PORT=str(free_port()))  # fmt: skip

        async def stored() -> int:
            assert worker.poll() is None
            return await count_rows(state)

        # The worker takes what waited in JetStream.
        await eventually(stored, lambda n: n == 1, timeout=40, interval=0.1,
                         what="the waiting write stored")  # fmt: skip
        status, answer = post(url, {"event": second}, token)
        assert status == 200 and answer["event_id"] == second["id"], answer
        assert await count_rows(state) == 2
    finally:
        if worker is not None:
            worker_out = stop(worker)
        api_out = stop(api)
    assert "stopped: 0 stored" in api_out and "stopped: 2 stored" in worker_out
