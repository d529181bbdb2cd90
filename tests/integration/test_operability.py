"""Operability: metrics move exactly, promtool accepts them, /readyz follows the servers,
and every CLI command runs as a subprocess against a real running service."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest

from auditlog.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from tests.support.processes import get, start, stop, wait_ready
from tests.support.waits import eventually_sync

pytestmark = pytest.mark.integration
ADMIN = "operability-admin-token-0123456789"
TENANT = "7e4e4e93-94ec-45bd-87ce-88ce3f689e3c"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    state = tmp_path_factory.mktemp("ops") / "state"
    port = free_port()
    proc = start(state, port, AUDIT_ADMIN_TOKEN=ADMIN)
    try:
        wait_ready(port, proc)
        yield state, port
    finally:
        stop(proc)
        # A test below restarts the servers itself; whatever runs in the state dir now
        # is this fixture's to stop (no-ops when the service already stopped them).
        EmbeddedNats(state).stop()
        EmbeddedPostgres(state).stop()


def cli(state: Path, port: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env.update(AUDIT_STATE_DIR=str(state), AUDIT_HTTP_PORT=str(port), AUDIT_ADMIN_TOKEN=ADMIN,
               COLUMNS="200")  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "auditlog.cli", *args], env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    if check:
        assert r.returncode == 0, f"{args}: {r.stdout}\n{r.stderr}"
    return r


def metric(text: str, name: str, labels: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (not labels or labels in line):
            head, value = line.rsplit(" ", 1)
            if head.split("{")[0] == name:
                total += float(value)
    return total


def scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
        return r.read().decode()


def assert_csv_equals_export(port: int, cli_csv: str) -> None:
    """The CLI's CSV has the export's columns, and the same cells for the same events."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/audit/export?tenant_id={TENANT}&format=csv",
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        exported = list(csv.reader(io.StringIO(resp.read().decode())))
    listed = list(csv.reader(io.StringIO(cli_csv)))
    assert listed[0] == exported[0]
    by_id = {row[0]: row for row in exported[1:]}
    common = [row for row in listed[1:] if row[0] in by_id]
    assert len(common) >= 5
    for row in common:
        assert dict(zip(listed[0], row, strict=True)) == dict(
            zip(exported[0], by_id[row[0]], strict=True)
        )


def assert_tail_shows_late_events(state: Path, port: int) -> None:
    """`events tail` follows commit order: an event that arrives now with an
    ``occurred_at`` 30 days old is shown (a tail by ``occurred_at`` never shows it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env.update(AUDIT_STATE_DIR=str(state), AUDIT_HTTP_PORT=str(port), AUDIT_ADMIN_TOKEN=ADMIN)
    tail = subprocess.Popen(
        [sys.executable, "-m", "auditlog.cli", "events", "tail", "--tenant-id", TENANT,
         "--count", "1", "--interval", "0.2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(3)  # the tail has read the newest seq and polls
        doc = json.loads((Path(__file__).parents[1] / "data" / "readme_event.json").read_text())
        late = (datetime.now(UTC) - timedelta(days=30)).isoformat().replace("+00:00", "Z")
        doc.update(occurred_at=late, action="user.late_arrival")
        nats_port = (state / "nats" / "port").read_text().strip()

        async def send() -> None:
            nc = await nats.connect(f"nats://127.0.0.1:{nats_port}")
            await nc.jetstream().publish("audit.events", json.dumps(doc).encode())
            await nc.close()

        asyncio.run(send())
        out, err = tail.communicate(timeout=60)
    finally:
        tail.kill()
    shown = [json.loads(line) for line in out.splitlines()]
    assert [e["action"] for e in shown] == ["user.late_arrival"], err
    assert shown[0]["occurred_at"].startswith(late[:16])


def test_publish_then_list_and_metrics_move_exactly(service) -> None:
    state, port = service
    before = scrape(port)
    out = cli(state, port, "publish", "--count", "5").stdout
    assert "published 5 event(s)" in out
    nats_port = (state / "nats" / "port").read_text().strip()

    async def bad() -> None:
        nc = await nats.connect(f"nats://127.0.0.1:{nats_port}")
        await nc.jetstream().publish("audit.events", b'{"tenant_id": 42}')
        await nc.jetstream().publish("audit.events", b"not json")
        await nc.close()

    asyncio.run(bad())
    stored = "auditlog_events_stored_total"
    dead = "auditlog_events_dead_lettered_total"
    eventually_sync(lambda: metric(scrape(port), dead) - metric(before, dead), lambda n: n == 2,
                    what="two more dead letters counted")  # fmt: skip
    after = scrape(port)
    assert metric(after, stored) - metric(before, stored) == 5
    assert metric(after, dead, 'reason="malformed_json"') - metric(
        before, dead, 'reason="malformed_json"') == 1  # fmt: skip
    assert metric(after, "auditlog_flush_batch_size_count") > 0
    assert metric(after, "auditlog_ingest_lag_seconds_count") > 0
    listed = cli(state, port, "events", "list", "--tenant-id", TENANT, "-o", "ndjson").stdout
    events = [json.loads(line) for line in listed.splitlines()]
    assert len(events) >= 5 and all(e["action"] == "user.login" for e in events)
    table = cli(state, port, "events", "list", "--tenant-id", TENANT, "--limit", "3").stdout
    assert "user.login" in table and "Jane Doe" not in table  # actor shown as type:id
    csv_out = cli(state, port, "events", "list", "--tenant-id", TENANT, "-o", "csv").stdout
    assert_csv_equals_export(port, csv_out)
    got = cli(state, port, "events", "get", events[0]["id"], "--tenant-id", TENANT).stdout
    assert json.loads(got)["id"] == events[0]["id"]
    tail = cli(state, port, "events", "tail", "--tenant-id", TENANT, "--start-time",
               "2000-01-01T00:00:00Z", "--count", "3", "--interval", "0.2").stdout  # fmt: skip
    assert len(tail.splitlines()) >= 3
    assert_tail_shows_late_events(state, port)
    stats = cli(state, port, "stats", "--tenant-id", TENANT).stdout
    assert re.search(r"\b\d+ events for " + TENANT, stats) and "SEVERITY_INFO" in stats


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian package 'prometheus' ships it)",
)
def test_exposition_passes_promtool(service) -> None:
    _, port = service
    r = subprocess.run(["promtool", "check", "metrics"], input=scrape(port), text=True,
                       capture_output=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    deploy = Path(__file__).parents[2] / "deploy"
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        r = subprocess.run(["promtool", *args], text=True, capture_output=True, timeout=60,
                           cwd=deploy)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr


def test_dead_letters_list_show_replay(service) -> None:
    state, port = service
    nats_port = (state / "nats" / "port").read_text().strip()

    async def bad() -> None:
        nc = await nats.connect(f"nats://127.0.0.1:{nats_port}")
        await nc.jetstream().publish("audit.events", b'{"tenant_id": "t-dlq", "action": 7}',
                                     headers={"Nats-Msg-Id": "fix-me-1"})  # fmt: skip
        await nc.close()

    asyncio.run(bad())

    def dead_letter() -> tuple[str, str]:  # (`dlq show 1`, `dlq list` when show lacks it)
        shown = cli(state, port, "dlq", "show", "1", check=False).stdout
        return shown, "" if "fix-me-1" in shown else cli(state, port, "dlq", "list").stdout

    eventually_sync(dead_letter, lambda out: "fix-me-1" in out[0] or "action" in out[1],
                    what="the dead letter listed")  # fmt: skip
    listing = cli(state, port, "dlq", "list").stdout
    seq = max(int(m) for m in re.findall(r"^│\s*(\d+)\s*│", listing, re.M))
    shown = cli(state, port, "dlq", "show", str(seq)).stdout
    assert "Audit-Dlq-Reason: invalid_field" in shown and "Audit-Dlq-Field: action" in shown
    assert "Audit-Orig-Nats-Msg-Id: fix-me-1" in shown
    fixed = state.parent / "fixed.json"
    doc = json.loads((Path(__file__).parents[1] / "data" / "readme_event.json").read_text())
    doc["tenant_id"] = "t-dlq"
    fixed.write_text(json.dumps(doc))
    out = cli(state, port, "dlq", "replay", str(seq), "--fixed-file", str(fixed)).stdout
    assert "replayed 1 dead letter(s) and removed them" in out
    eventually_sync(lambda: cli(state, port, "events", "list", "--tenant-id", "t-dlq",
                                "-o", "ndjson").stdout,
                    lambda out: "t-dlq" in out, what="the replayed event listed")  # fmt: skip
    assert cli(state, port, "dlq", "show", str(seq), check=False).returncode != 0


def test_keys_partitions_doctor(service) -> None:
    state, port = service
    created = json.loads(cli(state, port, "keys", "create", "t-keys", "--scope", "read").stdout)
    assert created["token"].startswith("alk_")
    assert created["key_id"] in cli(state, port, "keys", "list", "--tenant-id", "t-keys").stdout
    r = cli(state, port, "events", "list", "--token", created["token"], "-o", "ndjson")
    # The key's tenant has no events but its access trail (the key's creation, logged in
    # the tenant's own log): not an error.
    assert {json.loads(line)["action"] for line in r.stdout.splitlines()} <= {"api_key.create"}
    assert "revoked" in cli(state, port, "keys", "revoke", created["key_id"]).stdout
    denied = cli(state, port, "events", "list", "--token", created["token"], check=False)
    assert denied.returncode != 0 and "401 unauthenticated" in denied.stderr
    parts = cli(state, port, "partitions", "ensure", "--months-ahead", "6").stdout
    assert parts.count("events_") >= 7
    assert "events_" in cli(state, port, "partitions", "list").stdout
    doc = cli(state, port, "doctor").stdout
    assert "verdict: healthy" in doc and "PostgreSQL 16" in doc and "nats-server" in doc


def test_readyz_follows_nats_and_postgres(service) -> None:
    state, port = service

    def status() -> int:
        return get(f"http://127.0.0.1:{port}/readyz")[0]

    def body() -> dict:
        return get(f"http://127.0.0.1:{port}/readyz")[1]

    # NATS away: the API still serves reads (ready, but degraded: writes answer 503).
    EmbeddedNats(state).stop()
    eventually_sync(body, lambda b: b["checks"]["nats"] != "ok", what="/readyz: nats not ok")
    assert status() == 200 and body()["status"] == "degraded"
    assert "writes answer 503" in body()["checks"]["nats"]
    bad = cli(state, port, "doctor", check=False)
    assert bad.returncode == 1 and "UNHEALTHY" in bad.stdout
    EmbeddedNats(state).start()
    eventually_sync(body, lambda b: b["status"] == "ready", what="/readyz: ready")
    pg = EmbeddedPostgres(state)
    pg.stop()
    eventually_sync(status, lambda s: s == 503, what="/readyz answers 503")
    assert "postgresql" in get(f"http://127.0.0.1:{port}/readyz")[1]["checks"]["postgresql"]
    pg.start()
    eventually_sync(status, lambda s: s == 200, timeout=60, what="/readyz answers 200")


def test_cli_manages_retention_and_legal_holds(service) -> None:
    state, port = service
    tenant = "ops-policy"
    set_30 = json.loads(cli(state, port, "tenants", "retention", tenant, "30").stdout)
    assert set_30["retention_days"] == 30 and set_30["effective_retention_days"] == 30
    held = json.loads(cli(state, port, "tenants", "hold", tenant, "--reason", "audit 7").stdout)
    assert held["legal_hold"]["reason"] == "audit 7" and held["visible_from"] is None
    released = json.loads(cli(state, port, "tenants", "release", tenant).stdout)
    assert released["legal_hold"] is None
    back = json.loads(cli(state, port, "tenants", "retention", tenant, "default").stdout)
    assert back["retention_days"] is None
    shown = json.loads(cli(state, port, "tenants", "policy", tenant).stdout)
    assert shown == {**back, "visible_from": shown["visible_from"]}
    bad = cli(state, port, "tenants", "retention", tenant, "soon", check=False)
    assert bad.returncode == 2 and "DAYS" in bad.stderr


def test_cli_retention_plan_says_what_is_due(service) -> None:
    state, port = service
    out = cli(state, port, "retention", "plan").stdout
    assert "partition" in out and "partition(s) due" in out
