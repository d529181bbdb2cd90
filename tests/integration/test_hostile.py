"""Hostile input through real NATS and PostgreSQL: nothing stops, stalls or fools ingestion.

Every poison message ends in the dead-letter stream with its reason, every valid event
around it is stored, and the worker keeps running; a dead-letter stream that refuses
holds back only the message concerned.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import nats
import nats.js.api as jsapi
import pytest
from aiohttp.test_utils import TestClient, TestServer

from infra.metrics import Metrics
from pipeline.source_nats import EVENT_MAX_MSG_SIZE
from query_api.app import create_app
from schemas.ids import tenant_subject
from tests.support.events import event as pipeline_event
from tests.support.service import admin_count, dead_letters, running_worker, wait_count
from tests.support.waits import drained, eventually

pytestmark = pytest.mark.integration


def event(tenant: str = "tenant-h", i: int = 0, **extra: object) -> bytes:
    return pipeline_event(tenant, i, **extra)


def deep_metadata(levels: int) -> bytes:
    head = event()[:-1]  # drop the closing brace
    body = b'{"a":' + b"[" * levels + b"1" + b"]" * levels + b"}"
    return head.replace(b'"metadata": {"ip": "192.0.2.10"}', b'"metadata": ' + body) + b"}"


async def publish(nc, subject: str, data: bytes, headers: dict | None = None) -> int:
    ack = await nc.jetstream().publish(subject, data, headers=headers)
    return ack.seq


async def test_poison_of_every_kind_then_valid_events(db_url, settings_factory, nats_url) -> None:
    settings = settings_factory(db_url)
    big_invalid = b'{"x": "' + b"y" * (EVENT_MAX_MSG_SIZE - 2_000) + b'"}'
    poison: list[tuple[str, bytes, dict | None, str]] = [
        # (subject kind, payload, headers, expected reason)
        ("shared", b"[1, 2", None, "malformed_json"),
        ("shared", b'{"unknown_field": 1,}', None, "malformed_json"),
        ("shared", b'{"tenantId": 5,}', None, "malformed_json"),
        ("shared", deep_metadata(20_000), None, "too_deep"),
        ("shared", event(description="PH").replace(b"PH", b"\xed\xa0\x80"), None,
         "malformed_json"),
        ("shared", event(metadata={"k": "a\u0000b"}), None, "invalid_field"),
        ("shared", event(occurred_at="0001-01-01T00:00:00Z"), None, "occurred_at_out_of_range"),
        ("shared", event(occurred_at="1900-01-01T00:00:00Z"), None, "occurred_at_out_of_range"),
        ("shared", event(occurred_at="9999-12-31T23:59:59Z"), None, "occurred_at_out_of_range"),
        # Producer headers that would steer (or break) the dead-letter publish if passed on.
        ("shared", b"{not json", {"Nats-Expected-Stream": settings.stream,
                                  "Nats-Msg-Id": "p-1"}, "malformed_json"),
        ("other-tenant", event("tenant-h"), None, "tenant_mismatch"),
        ("shared", big_invalid, {"X-Big": "1"}, "too_large"),
    ]  # fmt: skip
    async with running_worker(settings) as run:
        # A dead-letter stream that takes less than the event stream: letters get trimmed.
        js = run.nc.jetstream()
        await js.delete_stream(settings.dlq_stream)
        await js.add_stream(name=settings.dlq_stream, subjects=[settings.dlq_subject],
                            max_msg_size=60_000)  # fmt: skip
        subjects = {"shared": settings.subject,
                    "other-tenant": tenant_subject(settings.subject, "tenant-x")}  # fmt: skip
        expected: dict[int, tuple[str, bytes]] = {}
        for i in range(5):
            await publish(run.nc, settings.subject, event(i=i))
        for kind, data, headers, reason in poison:
            seq = await publish(run.nc, subjects[kind], data, headers)
            expected[seq] = (reason, data)
        for i in range(5, 25):
            subject = settings.subject if i % 2 else tenant_subject(settings.subject, "tenant-h")
            await publish(run.nc, subject, event(i=i))
        assert await wait_count(db_url, 25) == 25
        await eventually(lambda: run.worker.totals["dead_lettered"], lambda n: n >= len(poison),
                         what="every poison message dead-lettered")  # fmt: skip
        await drained(settings, run.nc)  # nothing more will arrive
        assert not run.worker.totals["stored"] > 25
        assert run.worker.status() == "ok"
    letters = await dead_letters(nats_url, settings)
    assert len(letters) == len(poison)
    for letter in letters:
        h = letter.headers
        seq = int(h["Audit-Dlq-Source"].rsplit(":", 1)[1])
        reason, data = expected.pop(seq)
        assert h["Audit-Dlq-Reason"] == reason, (reason, h)
        if h.get("Audit-Dlq-Truncated") == "true":
            assert data.startswith(letter.data) and int(h["Audit-Dlq-Original-Size"]) == len(data)
            assert len(data) > 60_000 >= len(letter.data)
        else:
            assert letter.data == data
        if reason == "malformed_json" and data == b"{not json":
            assert h["Audit-Orig-Nats-Expected-Stream"] == settings.stream
            assert h["Audit-Orig-Nats-Msg-Id"] == "p-1" and "Nats-Expected-Stream" not in h
    assert not expected
    # No partition was made for the absurd dates.
    names = await admin_count(
        db_url, "SELECT count(*) FROM audit.partitions WHERE name < 'events_2000' "
        "OR name > 'events_2100'")  # fmt: skip
    assert names == 0
    assert await admin_count(db_url) == 25


async def test_missing_dead_letter_stream_is_created(db_url, settings_factory, nats_url) -> None:
    settings = settings_factory(db_url)
    async with running_worker(settings) as run:
        await run.nc.jetstream().delete_stream(settings.dlq_stream)
        await publish(run.nc, settings.subject, b"[1, 2")
        await publish(run.nc, settings.subject, event())
        assert await wait_count(db_url, 1) == 1
        await eventually(lambda: run.worker.totals["dead_lettered"], lambda n: n == 1,
                         what="the poison message dead-lettered")  # fmt: skip
    letters = await dead_letters(nats_url, settings)
    assert [m.data for m in letters] == [b"[1, 2"]


async def test_refusing_dead_letter_stream_holds_only_that_message(
    db_url, settings_factory, nats_url
) -> None:
    settings = settings_factory(db_url)
    async with running_worker(settings) as run:
        js = run.nc.jetstream()
        await js.delete_stream(settings.dlq_stream)
        # Takes one message, then refuses every other ("maximum messages exceeded").
        await js.add_stream(name=settings.dlq_stream, subjects=[settings.dlq_subject],
                            max_msgs=1, discard=jsapi.DiscardPolicy.NEW)  # fmt: skip
        app = create_app(settings, run.pool, run.nc, Metrics(), api=False,
                         pipeline_status=run.worker.status)  # fmt: skip
        async with TestClient(TestServer(app)) as http:
            await publish(run.nc, settings.subject, b"bad one")
            await publish(run.nc, settings.subject, b"bad two")
            for i in range(10):
                await publish(run.nc, settings.subject, event(i=i))
            assert await wait_count(db_url, 10) == 10
            await eventually(lambda: run.worker.status(), lambda s: s.startswith("degraded"),
                             what="the worker degraded")  # fmt: skip
            ready = await (await http.get("/readyz")).json()
            assert ready["status"] == "degraded"
            assert ready["checks"]["pipeline"].startswith("degraded: 1 dead letter")
            failures = run.metrics.registry.get_sample_value(
                "auditlog_dead_letter_publish_failures_total", {"source": "nats"})  # fmt: skip
            assert failures and failures >= 1
            # More valid events still flow while the letter is held.
            for i in range(10, 20):
                await publish(run.nc, settings.subject, event(i=i))
            assert await wait_count(db_url, 20) == 20
            # The operator fixes the stream: the held message is redelivered (NAK backoff)
            # and dead-lettered; readiness is plain "ready" again.
            info = await js.stream_info(settings.dlq_stream)
            info.config.max_msgs = -1
            await js.update_stream(info.config)

            await eventually(lambda: run.worker.status(), lambda s: s == "ok", timeout=40,
                             what="the worker recovered")  # fmt: skip
            # No search indexer runs beside this worker: bring the index up to date as
            # one would, so its lag (counted from the template's migration) is not what
            # /readyz reports.
            async with run.pool.acquire() as conn:
                await conn.execute("SELECT audit.index_search(100000)")
            assert (await (await http.get("/readyz")).json())["status"] == "ready"
    letters = await dead_letters(nats_url, settings)
    assert sorted(m.data for m in letters) == [b"bad one", b"bad two"]
    assert await admin_count(db_url) == 20


async def test_same_event_id_from_two_tenants_over_nats(db_url, settings_factory) -> None:
    from query_api.client import publish_event

    settings = settings_factory(db_url)
    shared_id = str(uuid.uuid4())
    async with running_worker(settings) as run:
        nc = await nats.connect(settings.nats_url)
        try:
            for tenant, bound in (("tenant-a", False), ("tenant-b", True)):
                doc = json.loads(event(tenant))
                doc["id"] = shared_id
                await publish_event(nc, doc, settings.subject, tenant_bound=bound)
        finally:
            await nc.close()
        assert await wait_count(db_url, 2) == 2
        del run
    rows = await admin_count(
        db_url, "SELECT count(DISTINCT tenant_id) FROM audit.events WHERE id = $1",
        uuid.UUID(shared_id))  # fmt: skip
    assert rows == 2


async def test_a_partition_that_cannot_be_made_dead_letters_only_its_events(
    db_url, settings_factory, nats_url
) -> None:
    # PostgreSQL refuses to make one month's partition for good (a data exception): that
    # month's events become db_rejected dead letters; other months' events are stored.
    month = (datetime.now(UTC) - timedelta(days=60)).strftime("%Y-%m")
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "ALTER FUNCTION audit.ensure_partition(timestamptz) RENAME TO ensure_partition_real"
        )
        await conn.execute(f"""
            CREATE FUNCTION audit.ensure_partition(ts timestamptz) RETURNS text
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, audit AS $$
            BEGIN
                IF to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM') = '{month}' THEN
                    RAISE EXCEPTION 'no partition for %', ts USING ERRCODE = '22023';
                END IF;
                RETURN audit.ensure_partition_real(ts);
            END $$;
            GRANT EXECUTE ON FUNCTION audit.ensure_partition(timestamptz) TO auditlog_app;
        """)  # fmt: skip
    finally:
        await conn.close()
    settings = settings_factory(db_url, batch_max_latency_ms=200)
    bad = [event(i=100 + i, occurred_at=f"{month}-1{i}T00:00:00Z") for i in range(3)]
    async with running_worker(settings) as run:
        for i in range(10):
            await publish(run.nc, settings.subject, event(i=i))
            if i in (0, 3, 6):
                await publish(run.nc, settings.subject, bad[i // 3])
        assert await wait_count(db_url, 10) == 10
        await eventually(lambda: run.worker.totals["dead_lettered"], lambda n: n >= 3,
                         what="the 3 events of the refused month dead-lettered")  # fmt: skip
    letters = await dead_letters(nats_url, settings)
    assert sorted(m.data for m in letters) == sorted(bad)
    for m in letters:
        assert m.headers["Audit-Dlq-Reason"] == "db_rejected"
        assert "cannot be created" in m.headers["Audit-Dlq-Message"]
        assert "22023" in m.headers["Audit-Dlq-Message"]
    assert await admin_count(db_url) == 10
