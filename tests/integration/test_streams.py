"""Streams out against real receivers: an HTTPS webhook receiver, an HEC-shaped collector and
an S3-compatible server (moto) behind TLS, all started here with certificates made here
(``AUDIT_STREAMS_CA_FILE``), loopback allowed (``AUDIT_STREAMS_ALLOW_PRIVATE``).

The delivery agent runs in this event loop (``pipeline.streams.StreamAgent``, as the
runtime builds it); streams are made through the admin API (the HTTP app)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp import web

from auditlog.embedded import free_port
from infra.db import create_pool
from infra.metrics import Metrics
from infra.settings import Settings
from pipeline.stream_format import verify_signature
from pipeline.streams import StreamAgent
from tests.receivers import Receiver, TlsMoto
from tests.support.api import ADMIN, auth
from tests.support.events import event
from tests.support.processes import stop_all
from tests.support.service import (
    due_month,
    make_event,
    publish_all,
    running_worker,
    serving_app,
    store,
)
from tests.support.waits import drained, eventually
from tests.tlscerts import Pki, make_pki

pytestmark = pytest.mark.integration
KEY = "5e" * 32  # the stream key every process of a test shares (AUDIT_STREAMS_SECRET_KEY)
LOOPBACK = "127.0.0.0/8,::1/128"
SEVERITIES = ("SEVERITY_INFO", "SEVERITY_WARNING", "SEVERITY_SECURITY")
HEC_TOKEN = "0c8a3b6e-hec-token-0001"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def streams_settings(db_url, settings_factory, pki):
    """Settings for a test of streams: loopback allowed, the tests' CA trusted, quick
    batches and retries."""

    def make(**kw: object) -> Settings:
        base = dict(admin_token=ADMIN, streams_allow_private=LOOPBACK,
                    streams_ca_file=str(pki.ca), streams_secret_key=KEY,
                    streams_batch_max_latency_ms=50, streams_poll_ms=50, streams_timeout_s=2.0,
                    streams_retry_max_s=0.5)  # fmt: skip
        base.update(kw)
        return settings_factory(db_url, **base)

    return make


@contextlib.asynccontextmanager
async def delivering(settings: Settings, metrics: Metrics | None = None
                     ) -> AsyncIterator[StreamAgent]:  # fmt: skip
    """A delivery agent (as `auditlog run` runs it) in this event loop until the block ends."""
    agent = StreamAgent(settings, settings.database_url, metrics or Metrics(), tick_s=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def opened_pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """An app-role pool on the test's database (for :func:`store`), closed afterwards."""
    pool = await create_pool(settings.database_url, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


async def create_stream(client, tenant: str, destination: dict, **body: object) -> dict:
    resp = await client.post(f"/v1/admin/tenants/{tenant}/streams", headers=auth(),
                             json={"destination": destination, **body})  # fmt: skip
    doc = await resp.json()
    assert resp.status == 201, doc
    return doc


async def superuser(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def event_ids(dsn: str, tenant: str, where: str = "true") -> list[str]:
    """The tenant's event ids in seq order (as the superuser: no row-level security)."""
    rows = await superuser(dsn, f"SELECT id::text FROM audit.events WHERE tenant_id = $1 AND"
                                f" {where} ORDER BY seq", tenant)  # fmt: skip
    return [r["id"] for r in rows]


async def caught_up(dsn: str, stream_ids: list[str], timeout: float = 60.0) -> None:
    """Wait until every stream's cursor is at its tenant's head."""
    sql = ("SELECT s.stream_id, s.last_seq, h.last_seq AS head, s.state, s.last_error FROM"
           " audit.streams s JOIN audit.chain_heads h USING (tenant_id) WHERE"
           " s.stream_id = ANY($1)")  # fmt: skip

    async def behind() -> list[dict]:
        return [dict(r) for r in await superuser(dsn, sql, stream_ids)
                if r["last_seq"] < r["head"]]  # fmt: skip

    await eventually(behind, lambda b: not b, timeout=timeout, interval=0.2,
                     what="every stream caught up")  # fmt: skip


def unique_in_order(records: list[dict]) -> list[dict]:
    """Records with repeats (same id) dropped, as a receiver does; asserts that a repeat is
    the same record as its first delivery."""
    first: dict[str, dict] = {}
    out = []
    for rec in records:
        if rec["id"] in first:
            assert first[rec["id"]] == rec, "a repeat differs from the first delivery"
            continue
        first[rec["id"]] = rec
        out.append(rec)
    return out


def webhook_records(rx: Receiver, stream_id: str, secret: str) -> list[dict]:
    """Every record the stream delivered (2xx), each request's signature verified."""
    out = []
    for req in rx.taken(stream_id):
        assert verify_signature(req.headers["Audit-Signature"], secret, req.body, req.at), req
        out.extend(req.records())
    return out


def hec_records(rx: Receiver, token: str) -> list[dict]:
    """Every event an HEC-shaped endpoint took, checked against HEC's documented format:
    POST /services/collector/event, ``Authorization: Splunk <token>``, newline-separated
    JSON objects with a numeric ``time``, an ``event`` object, ``sourcetype`` and flat
    ``fields``."""
    out = []
    for req in rx.taken():
        assert req.path == "/services/collector/event"
        assert req.headers["Authorization"] == f"Splunk {token}"
        uuid.UUID(req.headers["X-Splunk-Request-Channel"])  # a GUID, as HEC's acks want
        for line in req.body.split(b"\n"):
            obj = json.loads(line)
            assert isinstance(obj["time"], int | float) and obj["sourcetype"] == "auditlog"
            assert isinstance(obj["event"], dict) and obj["source"] == "auditlog"
            assert all(isinstance(v, str) for v in obj["fields"].values())
            out.append(obj["event"])
    return out


def s3_records(moto: TlsMoto, bucket: str, prefix: str) -> list[dict]:
    s3 = moto.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == sorted(keys) and all(k.startswith(prefix) for k in keys)
    assert all(k.endswith(".ndjson.gz") for k in keys)
    out = []
    for key in keys:  # the keys' order is the time order
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        out.extend(json.loads(line) for line in gzip.decompress(body).splitlines())
    return out


# -- 20,000 events, 50 tenants, 4 streams ----------------------------------------------------
async def test_every_event_of_a_tenant_reaches_each_of_its_streams_in_order(
    streams_settings, pki
) -> None:
    """20,000 events over 50 tenants stored while streams of 3 of them deliver (tenant 0 a
    webhook and an S3 bucket filtered to two severities, tenant 1 an HEC collector, tenant 2
    a webhook from the beginning): each stream gets every event of its tenant (that its
    filters pass), in seq order, each webhook delivery signed, and no other tenant's."""
    settings = streams_settings(streams_batch_max_events=300)
    tenants = [f"tenant-{i:02d}" for i in range(50)]
    with TlsMoto(pki) as moto:
        moto.client().create_bucket(Bucket="audit-out")
        async with (Receiver(pki) as hooks, Receiver(pki) as hec, opened_pool(settings) as pool,
                    serving_app(settings) as api):  # fmt: skip
            # Tenant 2 has events before its stream exists: start=beginning sends them too.
            await store(pool, [make_event(tenants[2], 400 + i) for i in range(100)])
            w0 = await create_stream(api, tenants[0], {"kind": "webhook", "url": hooks.url + "/a"})
            s0 = await create_stream(api, tenants[0], {
                "kind": "s3", "bucket": "audit-out", "prefix": "siem/", "endpoint": moto.endpoint,
                "access_key_id": "test", "secret_access_key": "test-secret-key-0123"},
                filters={"severities": ["SEVERITY_WARNING", "SEVERITY_SECURITY"]})  # fmt: skip
            h1 = await create_stream(api, tenants[1], {
                "kind": "splunk_hec", "url": hec.url, "token": HEC_TOKEN})  # fmt: skip
            w2 = await create_stream(api, tenants[2], {"kind": "webhook", "url": hooks.url + "/c"},
                                     start="beginning")  # fmt: skip
            assert w0["signing_secret"].startswith("whsec_") and s0["signing_secret"] is None
            started = time.monotonic()
            async with delivering(settings):
                for chunk in range(20):  # 20 rounds of ~1,000 events, 50 tenants
                    await store(pool, [make_event(t, chunk * 20 + j, severity=SEVERITIES[j % 3])
                                       for t in tenants for j in range(20) if chunk * 20 + j
                                       < (400 if t != tenants[2] else 300)])  # fmt: skip
                ingested = time.monotonic() - started
                ids = [w0["stream_id"], s0["stream_id"], h1["stream_id"], w2["stream_id"]]
                await caught_up(settings.database_url, ids, timeout=90)
            delivered = time.monotonic() - started
            total = (await superuser(settings.database_url, "SELECT count(*) AS n FROM"
                                     " audit.events"))[0]["n"]  # fmt: skip
            print(f"{total} events stored in {ingested:.1f}s; all four streams caught up "
                  f"{delivered:.1f}s after the first store")  # fmt: skip
            assert total == 20_000

            expected0 = await event_ids(settings.database_url, tenants[0])
            got = unique_in_order(webhook_records(hooks, w0["stream_id"], w0["signing_secret"]))
            assert [r["id"] for r in got] == expected0 and len(expected0) == 400
            assert [r["seq"] for r in got] == list(range(1, 401))
            assert (
                {r["tenant_id"] for r in got}
                == {r["event"]["tenant_id"] for r in got}
                == {tenants[0]}
            )
            expected2 = await event_ids(settings.database_url, tenants[2])
            got2 = unique_in_order(webhook_records(hooks, w2["stream_id"], w2["signing_secret"]))
            assert [r["id"] for r in got2] == expected2 and len(expected2) == 400
            assert {r["event"]["tenant_id"] for r in got2} == {tenants[2]}
            # A webhook delivery is one tenant's; no stream of another tenant got anything.
            assert {r.stream_id for r in hooks.requests} == {w0["stream_id"], w2["stream_id"]}

            warn = await event_ids(settings.database_url, tenants[0], "severity IN"
                                   " ('SEVERITY_WARNING', 'SEVERITY_SECURITY')")  # fmt: skip
            got_s3 = unique_in_order(s3_records(moto, "audit-out", f"siem/{tenants[0]}/"))
            assert [r["id"] for r in got_s3] == warn and 0 < len(warn) < 400
            assert {r["event"]["tenant_id"] for r in got_s3} == {tenants[0]}

            expected1 = await event_ids(settings.database_url, tenants[1])
            got_hec = unique_in_order(hec_records(hec, HEC_TOKEN))
            assert [r["id"] for r in got_hec] == expected1
            assert {r["event"]["tenant_id"] for r in got_hec} == {tenants[1]}


# -- a failing receiver delays only its own stream --------------------------------------------
def _hist(metrics: Metrics, name: str) -> tuple[float, float]:
    registry = metrics.registry
    total = registry.get_sample_value(f"{name}_sum", {"source": "nats"}) or 0.0
    count = registry.get_sample_value(f"{name}_count", {"source": "nats"}) or 0.0
    return total, count


async def _phase(nc, settings: Settings, run, agent_metrics: Metrics, healthy: list[str],
                 tenants: list[str], start: int, n: int = 2000) -> dict[str, float]:  # fmt: skip
    """Publish ``n`` events at ~1,000/s over ``tenants`` while sampling the healthy streams'
    lag; (mean ingest lag received -> committed, worst healthy-stream lag) of the phase."""
    before = _hist(run.metrics, "auditlog_ingest_lag_seconds")
    worst = 0.0
    for k in range(0, n, 100):
        payloads = [event(tenants[(start + k + j) % len(tenants)], start + k + j)
                    for j in range(100)]  # fmt: skip
        await publish_all(nc, settings.subject, payloads)
        for sid in healthy:
            worst = max(worst, agent_metrics.registry.get_sample_value(
                "auditlog_stream_lag_seconds", {"stream": sid}) or 0.0)  # fmt: skip
        await asyncio.sleep(0.1)
    await drained(settings, nc)
    after = _hist(run.metrics, "auditlog_ingest_lag_seconds")
    ingest = (after[0] - before[0]) / max(1.0, after[1] - before[1])
    return {"ingest_lag_s": ingest, "healthy_stream_lag_s": worst}


async def test_a_failing_receiver_delays_only_its_own_stream(streams_settings, pki) -> None:
    """Tenant A's first stream answers 500s, then times out, then answers slowly, while the
    pipeline ingests 2,000 events: nothing is lost and order is kept there, and the ingest
    lag and the lag of A's second stream and of B's stream stay what they were with every
    receiver healthy (measured, same load)."""
    settings = streams_settings(streams_timeout_s=1.0, streams_retry_max_s=0.5)
    tenants = ["tenant-a", "tenant-b", *(f"other-{i}" for i in range(8))]
    metrics = Metrics()
    fault_at: list[float] = []

    async def flaky(request: web.Request, rx: Receiver) -> web.StreamResponse | None:
        if not fault_at:
            return None
        t = time.monotonic() - fault_at[0]
        if t < 1.5:
            return web.Response(status=500, text="internal error, try later")
        if t < 3.0:
            await asyncio.sleep(2.0)  # past the 1 s timeout
        elif t < 4.5:
            await asyncio.sleep(0.4)  # slow, under the timeout
        return None

    async with (Receiver(pki, flaky) as bad, Receiver(pki) as good, serving_app(settings) as api,
                running_worker(settings) as run):  # fmt: skip
        a1 = await create_stream(api, tenants[0], {"kind": "webhook", "url": bad.url})
        a2 = await create_stream(api, tenants[0], {"kind": "webhook", "url": good.url + "/a2"})
        b = await create_stream(api, tenants[1], {"kind": "webhook", "url": good.url + "/b"})
        healthy = [a2["stream_id"], b["stream_id"]]
        async with delivering(settings, metrics):
            calm = await _phase(run.nc, settings, run, metrics, healthy, tenants, 0)
            fault_at.append(time.monotonic())
            stormy = await _phase(run.nc, settings, run, metrics, healthy, tenants, 2000)
            ids = [a1["stream_id"], *healthy]
            await caught_up(settings.database_url, ids, timeout=60)
        print(f"receivers healthy: {calm}; A's first receiver failing: {stormy}")
        statuses = [r.status for r in bad.requests]
        assert 500 in statuses and len(bad.requests) > len(bad.taken())  # it did fail
        failures = metrics.registry.get_sample_value(
            "auditlog_stream_delivery_failures_total", {"stream": a1["stream_id"]})  # fmt: skip
        assert failures and failures >= 3
        # The faults last 4.5 s (timeouts of 1 s among them): had they leaked into ingestion
        # or the other streams, these would grow by seconds, not by scheduling noise.
        assert stormy["ingest_lag_s"] <= max(2 * calm["ingest_lag_s"], calm["ingest_lag_s"] + 0.25)
        assert stormy["healthy_stream_lag_s"] <= max(1.5, 2 * calm["healthy_stream_lag_s"])
        for stream, rx, tenant in ((a1, bad, tenants[0]), (a2, good, tenants[0]),
                                   (b, good, tenants[1])):  # fmt: skip
            sent = webhook_records(rx, stream["stream_id"], stream["signing_secret"])
            got = unique_in_order(sent)
            assert [r["id"] for r in got] == await event_ids(settings.database_url, tenant)
        detail = await (await api.get(f"/v1/admin/tenants/{tenants[0]}/streams/"
                                      f"{a1['stream_id']}", headers=auth())).json()  # fmt: skip
        assert detail["state"] == "active" and detail["failures"] == 0
        errors = {a["error"] for a in detail["attempts"] if not a["ok"]} | {
            r.status for r in bad.requests if r.status >= 500}  # fmt: skip
        assert errors


# -- a worker killed mid-delivery; two workers never deliver one stream at once ----------------
def _worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    for name in ("database_url", "nats_url", "stream", "subject", "consumer", "dlq_stream",
                 "dlq_subject", "commit_subject", "checkpoint_stream", "checkpoint_subject",
                 "state_dir", "streams_allow_private", "streams_ca_file", "streams_secret_key",
                 "streams_batch_max_events", "streams_batch_max_latency_ms", "streams_poll_ms",
                 "streams_timeout_s", "streams_retry_max_s"):  # fmt: skip
        env["AUDIT_" + name.upper()] = str(getattr(settings, name))
    env.update(AUDIT_LOG_LEVEL="WARNING", AUDIT_CHECKPOINT_INTERVAL_S="0",
               AUDIT_STREAM_MAX_BYTES=str(256 << 20),
               AUDIT_DLQ_MAX_BYTES=str(64 << 20))  # fmt: skip
    return env


def _spawn(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "auditlog.cli", "pipeline"],
                            env=dict(env, AUDIT_METRICS_PORT=str(free_port())),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


async def test_a_killed_worker_resumes_from_the_cursor_and_one_worker_delivers(
    streams_settings, pki, tmp_path
) -> None:
    """`auditlog pipeline` delivers 3,000 events in batches of 50 to a receiver taking 0.1 s
    each; killed (-9) mid-delivery, then two workers started at once: delivery resumes from
    the stream's cursor, anything sent twice is the same record (same id), and the
    receiver never has two deliveries of the stream in progress at once."""
    settings = streams_settings(state_dir=str(tmp_path / "state"), streams_batch_max_events=50)

    async def unhurried(request: web.Request, rx: Receiver) -> None:
        await asyncio.sleep(0.1)

    procs: list[subprocess.Popen[bytes]] = []
    async with (Receiver(pki, unhurried) as rx, opened_pool(settings) as pool,
                serving_app(settings) as api):  # fmt: skip
        await store(pool, [make_event("tenant-k", i) for i in range(3000)])
        stream = await create_stream(api, "tenant-k", {"kind": "webhook", "url": rx.url},
                                     start="beginning")  # fmt: skip
        sid = stream["stream_id"]
        env = _worker_env(settings)
        try:
            procs.append(_spawn(env))
            await eventually(lambda: len(rx.taken(sid)), lambda n: n >= 10, timeout=60,
                             what="the first worker delivered 10 batches")  # fmt: skip
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(10)
            killed_at = len(rx.requests)
            procs += [_spawn(env), _spawn(env)]
            await caught_up(settings.database_url, [sid], timeout=120)
        finally:
            stop_all(procs)
        records = webhook_records(rx, sid, stream["signing_secret"])
        got = unique_in_order(records)  # asserts every repeat equals its first delivery
        assert [r["id"] for r in got] == await event_ids(settings.database_url, "tenant-k")
        repeats = len(records) - len(got)
        print(f"{len(rx.requests)} requests ({killed_at} before the kill), {repeats} records "
              "sent twice")  # fmt: skip
        assert repeats <= 2 * 50  # at most the batches in flight when the worker died
        assert rx.max_inflight[sid] == 1  # never two deliveries of the stream at once
        seqs = [r["seq"] for r in records]
        # Apart from the repeats right after the kill, seqs only go up.
        assert sum(1 for x, y in itertools.pairwise(seqs) if y <= x) <= 1


# -- refused destinations ------------------------------------------------------------------------
async def test_refused_destinations_are_refused_clearly(api, streams_settings, pki) -> None:
    """When made: plain HTTP, non-public addresses written as numbers, localhost (unless
    allowed). When delivering: a redirect pauses the stream naming where it pointed; a name
    resolving to a refused address pauses it naming the address; an untrusted certificate
    is a failure that says TLS."""
    cases = {
        "http://siem.example.com/hook": "plain http:// is refused",
        "https://10.20.30.40/hook": "10.20.30.40 is a private address",
        "https://169.254.169.254/latest": "a cloud metadata address",
        "https://[fd00::1]/": "a private address",
        "https://2130706433/": "127.0.0.1 is a loopback address",
        "https://localhost:8443/": "127.0.0.1 is a loopback address",
        "https://user:pw@siem.example.com/": "credentials in the URL are refused",
        "https://siem.example.com:99999/": "Port out of range",
        "https://bad_host.example/": "must be an https:// URL",
    }
    for url, words in cases.items():
        resp = await api.post("/v1/admin/tenants/acme/streams", headers=auth(),
                              json={"destination": {"kind": "webhook", "url": url}})  # fmt: skip
        body = await resp.json()
        assert resp.status == 400, (url, body)
        assert words in body["error"]["message"], (url, body)
        assert body["error"]["field"] == "destination.url"
    s3 = {"kind": "s3", "bucket": "b-1", "access_key_id": "AKID", "secret_access_key": "x" * 20,
          "endpoint": "https://192.168.1.10:9000"}  # fmt: skip
    resp = await api.post("/v1/admin/tenants/acme/streams", headers=auth(),
                          json={"destination": s3})  # fmt: skip
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "destination.endpoint"

    settings = streams_settings()
    strict = settings.replace(streams_allow_private="")  # a delivering process allowing none
    untrusting = settings.replace(streams_ca_file="")  # the system CAs only

    async def redirect(request: web.Request, rx: Receiver) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": "https://elsewhere.example/x"})

    async with (Receiver(pki, redirect) as moved, Receiver(pki) as fine,
                serving_app(settings) as made, opened_pool(settings) as pool):  # fmt: skip
        await store(pool, [make_event("tenant-r", i) for i in range(5)])
        r = await create_stream(made, "tenant-r", {"kind": "webhook", "url": moved.url},
                                start="beginning")  # fmt: skip
        async with delivering(settings):
            await _paused(made, "tenant-r", r["stream_id"], "redirect to https://elsewhere")
        local = await create_stream(made, "tenant-r", {"kind": "webhook", "url": fine.url},
                                    start="beginning")  # fmt: skip
        async with delivering(untrusting):
            await eventually(lambda: _stream(made, "tenant-r", local["stream_id"]),
                             lambda s: "TLS failed" in (s["last_error"] or ""), timeout=20,
                             what="an untrusted certificate fails the delivery")  # fmt: skip
        async with delivering(strict):
            await _paused(made, "tenant-r", local["stream_id"],
                          "localhost resolves to 127.0.0.1 is a loopback address")  # fmt: skip
        assert not fine.taken()  # nothing ever reached it
        ready = await (await made.get("/readyz")).json()
        assert ready["status"] == "degraded" and r["stream_id"] in ready["checks"]["streams"]


async def _stream(client, tenant: str, stream_id: str) -> dict:
    resp = await client.get(f"/v1/admin/tenants/{tenant}/streams/{stream_id}", headers=auth())
    assert resp.status == 200
    return await resp.json()


async def _paused(client, tenant: str, stream_id: str, words: str) -> dict:
    return await eventually(lambda: _stream(client, tenant, stream_id),
                            lambda s: s["state"] == "paused" and words in s["paused_reason"],
                            timeout=20, what=f"{stream_id} paused: {words}")  # fmt: skip


# -- retention gaps, missing seqs --------------------------------------------------------------
async def test_a_cursor_moves_past_a_range_retention_dropped_with_a_gap_record(
    streams_settings, pki
) -> None:
    """Retention drops the month holding seqs 1-2 of a tenant: its stream (from the
    beginning) gets a gap record for them, carrying the signed gap note, then seq 3."""
    from infra.signing import load_signer
    from ledger import retention

    settings = streams_settings()
    await due_month(settings, "tenant-g")
    conn = await asyncpg.connect(settings.database_url)
    try:
        (month,) = [m for m in await retention.plan(conn, settings) if m.due]
    finally:
        await conn.close()
    await retention.drop(settings.database_url, settings, load_signer(settings), month)
    metrics = Metrics()
    async with Receiver(pki) as rx, serving_app(settings) as api:
        s = await create_stream(api, "tenant-g", {"kind": "webhook", "url": rx.url},
                                start="beginning")  # fmt: skip
        async with delivering(settings, metrics):
            await caught_up(settings.database_url, [s["stream_id"]])
    records = unique_in_order(webhook_records(rx, s["stream_id"], s["signing_secret"]))
    assert [r["type"] for r in records] == ["gap", "event"]
    gap = records[0]
    assert (gap["first_seq"], gap["last_seq"], gap["reason"]) == (1, 2, "retention")
    assert gap["id"] == "gap:tenant-g:1-2" and gap["partition"] == month.name
    assert gap["note"].startswith(f"gap {settings.log_origin}/tenant-g 1 2 ")  # signed
    assert records[1]["seq"] == 3
    assert metrics.registry.get_sample_value("auditlog_stream_gap_records_total",
                                             {"stream": s["stream_id"]}) == 1  # fmt: skip


async def test_seqs_missing_without_a_gap_pause_the_stream(streams_settings, pki) -> None:
    """A row deleted behind the service's back (triggers off, as a superuser): the stream
    does not skip it; it pauses naming the missing seq."""
    settings = streams_settings()
    async with Receiver(pki) as rx, opened_pool(settings) as pool, serving_app(settings) as api:
        await store(pool, [make_event("tenant-m", i) for i in range(5)])
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute("SET session_replication_role = replica")
            await conn.execute("DELETE FROM audit.events WHERE tenant_id = 'tenant-m' AND seq = 3")
        finally:
            await conn.close()
        s = await create_stream(api, "tenant-m", {"kind": "webhook", "url": rx.url},
                                start="beginning")  # fmt: skip
        async with delivering(settings):
            paused = await _paused(api, "tenant-m", s["stream_id"], "seqs 3..3 of tenant-m")
        assert "auditlog verify tenant-m" in paused["paused_reason"]
        assert paused["cursor"] <= 2


# -- secrets, rotation, pausing and resuming ------------------------------------------------------
async def test_secrets_are_never_shown_again_and_rotation_overlaps(streams_settings, pki) -> None:
    """The webhook signing secret appears once (on creation); a rotation shows the new one
    once and signs with both until the overlap ends; an HEC token and S3 key never appear;
    rotating those needs the new value."""
    settings = streams_settings()
    async with (Receiver(pki) as rx, opened_pool(settings) as pool,
                serving_app(settings) as api):  # fmt: skip
        hook = await create_stream(api, "tenant-s", {"kind": "webhook", "url": rx.url})
        hec = await create_stream(api, "tenant-s", {"kind": "splunk_hec", "url": rx.url,
                                                    "token": HEC_TOKEN})  # fmt: skip
        s3 = await create_stream(api, "tenant-s", {
            "kind": "s3", "bucket": "b-1", "access_key_id": "AKID", "secret_access_key":
            "s3-secret-value-1234", "endpoint": "https://localhost:1"})  # fmt: skip
        listed = await (await api.get("/v1/admin/tenants/tenant-s/streams", headers=auth())).text()
        shown = listed + json.dumps([await _stream(api, "tenant-s", x["stream_id"])
                                     for x in (hook, hec, s3)])  # fmt: skip
        for secret in (hook["signing_secret"], HEC_TOKEN, "s3-secret-value-1234"):
            assert secret not in shown
        assert json.loads(listed)["streams"][1]["destination"] == {
            "kind": "splunk_hec",
            "url": rx.url,
            "index": None,
            "source_type": None,
        }

        resp = await api.post(f"/v1/admin/tenants/tenant-s/streams/{hec['stream_id']}"
                              ":rotate-secret", headers=auth(), json={})  # fmt: skip
        assert resp.status == 400 and (await resp.json())["error"]["field"] == "secret"
        resp = await api.post(f"/v1/admin/tenants/tenant-s/streams/{hook['stream_id']}"
                              ":rotate-secret", headers=auth(),
                              json={"overlap_s": 3600})  # fmt: skip
        rotated = await resp.json()
        assert resp.status == 200 and rotated["signing_secret"] != hook["signing_secret"]
        assert rotated["previous_valid_until"] and rotated["stream"]["secret_rotated_at"]
        await api.delete(f"/v1/admin/tenants/tenant-s/streams/{hec['stream_id']}", headers=auth())
        await api.delete(f"/v1/admin/tenants/tenant-s/streams/{s3['stream_id']}", headers=auth())
        await store(pool, [make_event("tenant-s", i) for i in range(3)])
        async with delivering(settings):
            await caught_up(settings.database_url, [hook["stream_id"]])
        (req,) = rx.taken(hook["stream_id"])
        header = req.headers["Audit-Signature"]
        assert header.count("v1=") == 2
        for secret in (hook["signing_secret"], rotated["signing_secret"]):
            assert verify_signature(header, secret, req.body, req.at)


async def test_a_failing_stream_pauses_then_cools_down_or_is_resumed(streams_settings, pki) -> None:
    """Failing for longer than AUDIT_STREAMS_PAUSE_AFTER_S pauses a stream with its reason
    (/readyz and the paused gauge say so); after the cool-down it tries again by itself;
    with no cool-down it waits for an operator's resume, then delivers everything."""
    down = [True]

    async def maybe(request: web.Request, rx: Receiver) -> web.StreamResponse | None:
        return web.Response(status=503, text="maintenance") if down[0] else None

    settings = streams_settings(streams_pause_after_s=0.5, streams_cooldown_s=1.0)
    metrics = Metrics()
    async with (Receiver(pki, maybe) as rx, opened_pool(settings) as pool,
                serving_app(settings) as api):  # fmt: skip
        await store(pool, [make_event("tenant-p", i) for i in range(20)])
        s = await create_stream(api, "tenant-p", {"kind": "webhook", "url": rx.url},
                                start="beginning")  # fmt: skip
        sid = s["stream_id"]
        async with delivering(settings, metrics):
            paused = await _paused(api, "tenant-p", sid, "answered 503: maintenance")
            assert paused["paused_until"] is not None and "failing for" in paused["paused_reason"]
            ready = await (await api.get("/readyz")).json()
            assert f"{sid} of tenant-p paused" in ready["checks"]["streams"]
            assert await eventually(lambda: metrics.registry.get_sample_value(
                "auditlog_streams_paused"), lambda v: v == 1, what="paused gauge")  # fmt: skip
            tries = len(rx.requests)
            await eventually(lambda: len(rx.requests), lambda n: n > tries, timeout=10,
                             what="tried again after the cool-down")  # fmt: skip
        no_cooldown = settings.replace(streams_cooldown_s=0.0)
        async with delivering(no_cooldown):
            paused = await _paused(api, "tenant-p", sid, "answered 503")
            assert paused["paused_until"] is None
            down[0] = False
            tries = len(rx.requests)
            await asyncio.sleep(1.5)
            assert len(rx.requests) == tries  # nobody resumed it: nothing sent
            resp = await api.post(f"/v1/admin/tenants/tenant-p/streams/{sid}:resume",
                                  headers=auth())  # fmt: skip
            assert resp.status == 200 and (await resp.json())["state"] == "active"
            await caught_up(settings.database_url, [sid])
        got = unique_in_order(webhook_records(rx, sid, s["signing_secret"]))
        assert [r["id"] for r in got] == await event_ids(settings.database_url, "tenant-p")
        ready = await (await api.get("/readyz")).json()
        assert ready["checks"]["streams"] == "ok"


async def test_the_cli_manages_streams(api) -> None:
    """`auditlog streams create|list|show|resume|rotate-secret|delete` through the API."""
    from click.testing import CliRunner

    from auditlog.cli import cli

    env = {
        "AUDIT_API_URL": str(api.make_url("")).rstrip("/"),
        "AUDIT_ADMIN_TOKEN": ADMIN,
        "COLUMNS": "250",
    }

    def run(*args: str) -> str:
        done = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
        assert done.exit_code == 0, done.output
        return done.output

    made = json.loads(await asyncio.to_thread(
        run, "streams", "create", "acme", "--webhook", "https://siem.example.com/hook",
        "--severity", "SEVERITY_SECURITY", "--action", "user.*"))  # fmt: skip
    sid = made["stream_id"]
    assert made["signing_secret"] and made["filters"] == {"severities": ["SEVERITY_SECURITY"],
                                                          "actions": ["user.*"]}  # fmt: skip
    listed = await asyncio.to_thread(run, "streams", "list", "acme")
    assert sid in listed and "siem.example.com" in listed
    shown = json.loads(await asyncio.to_thread(run, "streams", "show", "acme", sid))
    assert shown["attempts"] == [] and "signing_secret" not in shown
    assert "is active" in await asyncio.to_thread(run, "streams", "resume", "acme", sid)
    rotated = json.loads(await asyncio.to_thread(run, "streams", "rotate-secret", "acme", sid,
                                                 "--overlap-s", "0"))  # fmt: skip
    assert rotated["signing_secret"] and rotated["previous_valid_until"] is None
    assert f"deleted {sid}" in await asyncio.to_thread(run, "streams", "delete", "acme", sid)


async def test_a_stream_reads_only_its_tenant_under_row_level_security(streams_settings) -> None:
    """The read transaction is confined to the stream's tenant by PostgreSQL itself: asking
    it for another tenant's events (a bug in the query) finds none."""
    from pipeline import stream_store

    settings = streams_settings()
    async with opened_pool(settings) as pool:
        await store(pool, [make_event("tenant-x", i) for i in range(3)])
        async with stream_store.tenant_snapshot(pool, "tenant-x") as conn:
            rows, head = await stream_store.read_after(conn, "tenant-x", 0, 10)
            assert [r.seq for r in rows] == [1, 2, 3] and head == 3
        async with stream_store.tenant_snapshot(pool, "tenant-y") as conn:
            rows, _ = await stream_store.read_after(conn, "tenant-x", 0, 10)
            assert rows == []
