"""The pipeline end to end against real NATS JetStream and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import nats.js.api as jsapi
import pytest

from ledger.chain import verify_tenant
from pipeline.source_nats import connect, ensure_stream
from tests.support.events import event
from tests.support.metrics import sample
from tests.support.service import (
    admin_count,
    dead_letters,
    publish_all,
    running_worker,
    wait_count,
)
from tests.support.waits import drained, eventually

pytestmark = pytest.mark.integration


INVALID = {
    b"{not json": "malformed_json",
    event(severity=5): "invalid_field",  # wrong type
    event(category="CATEGORY_NOPE"): "unknown_enum",
    json.dumps({k: v for k, v in json.loads(event()).items() if k != "tenant_id"}).encode(): (
        "missing_field"
    ),
    event(description="x" * 70_000): "too_large",
}


async def test_valid_and_invalid_interleaved(db_url, settings_factory, nats_url) -> None:
    settings = settings_factory(db_url)
    valid = [event(f"t-{i % 3}", i) for i in range(40)]
    bad = list(INVALID)
    payloads: list[bytes] = []
    for i, v in enumerate(valid):
        payloads.append(v)
        if i % 8 == 0 and bad:
            payloads.append(bad.pop())
    assert not bad
    async with running_worker(settings) as run:
        await publish_all(run.nc, settings.subject, payloads)
        assert await wait_count(db_url, len(valid)) == len(valid)
        await eventually(lambda: run.worker.totals["dead_lettered"],
                         lambda n: n == len(INVALID), timeout=5,
                         what=f"{len(INVALID)} dead-lettered")  # fmt: skip
    letters = await dead_letters(nats_url, settings)
    assert len(letters) == len(INVALID)
    got = {m.data: m.headers for m in letters}
    for data, reason in INVALID.items():
        assert got[data]["Audit-Dlq-Reason"] == reason
        assert got[data]["Audit-Dlq-Stage"] == "validate"
        assert got[data]["Audit-Dlq-Message"]
        assert got[data]["Audit-Dlq-Time"].endswith("Z")
    missing = got[next(d for d, r in INVALID.items() if r == "missing_field")]
    assert missing["Audit-Dlq-Field"] == "tenant_id"
    assert await admin_count(db_url) == len(valid)
    assert sample(run.metrics, "auditlog_events_stored_total", source="nats") == len(valid)


async def test_same_event_three_times_and_after_restart(db_url, settings_factory) -> None:
    settings = settings_factory(db_url)
    with_id = event("t-dup", 1, id=str(uuid.uuid4()))
    keyed = event("t-dup", 2)
    key = {"Nats-Msg-Id": "order-42-created"}
    async with running_worker(settings) as run:
        await publish_all(run.nc, settings.subject, [with_id] * 3)
        # Same Nats-Msg-Id: NATS's duplicate window drops repeats; we store once anyway.
        await publish_all(run.nc, settings.subject, [keyed] * 3, [key] * 3)
        assert await wait_count(db_url, 2) == 2
    # A restarted pipeline, and the same two events republished so that NATS accepts them
    # (fresh Nats-Msg-Ids, as after its duplicate window): the one with an id names it
    # itself, the keyed one carries its key as Audit-Idempotency-Key. Only storage can
    # drop them now, and it must.
    async with running_worker(settings) as run:
        js = run.nc.jetstream()
        keyed_again = {"Nats-Msg-Id": "again-2", "Audit-Idempotency-Key": key["Nats-Msg-Id"]}
        acks = [await js.publish(settings.subject, with_id, headers={"Nats-Msg-Id": "again-1"}),
                await js.publish(settings.subject, keyed, headers=keyed_again)]  # fmt: skip
        assert not any(a.duplicate for a in acks)  # NATS took both: storage is the guard
        await eventually(lambda: run.worker.totals["duplicates"], lambda n: n >= 2,
                         timeout=10, what="both republished events seen as duplicates")  # fmt: skip
        assert run.worker.totals == {"stored": 0, "duplicates": 2, "dead_lettered": 0}
    assert await admin_count(db_url) == 2


async def test_duplicate_after_nats_window(db_url, settings_factory) -> None:
    """Storage, not NATS, guarantees uniqueness: a stream with a 1 s window."""
    settings = settings_factory(db_url)
    nc = await connect(settings.nats_url, "t")
    js = nc.jetstream()
    await js.add_stream(name=settings.stream, subjects=[settings.subject], duplicate_window=1.0)
    await ensure_stream(nc, settings)
    body = event("t-win", 1)
    await js.publish(settings.subject, body, headers={"Nats-Msg-Id": "k-1"})
    await asyncio.sleep(1.5)
    ack = await js.publish(settings.subject, body, headers={"Nats-Msg-Id": "k-1"})
    assert not ack.duplicate  # NATS accepted it again
    await nc.close()
    async with running_worker(settings) as run:
        assert await wait_count(db_url, 1) == 1
        await drained(settings, run.nc)  # both deliveries settled: nothing more will arrive
    assert await admin_count(db_url) == 1


async def test_row_postgres_rejects_goes_to_dlq(db_url, settings_factory, nats_url) -> None:
    # A value PostgreSQL refuses (here a CHECK the operator added; SQLSTATE 23514): the batch
    # is split until that one event is found; every other event of the batch is stored.
    admin = await asyncpg.connect(db_url)
    try:
        await admin.execute(
            "ALTER TABLE audit.events ADD CONSTRAINT refuse_evil CHECK (action <> 'evil.act')"
        )
    finally:
        await admin.close()
    settings = settings_factory(db_url, batch_max_latency_ms=200)
    payloads = [event("t-nul", i) for i in range(20)]
    poisoned = event("t-nul", 99, action="evil.act")
    payloads.insert(7, poisoned)
    async with running_worker(settings) as run:
        await publish_all(run.nc, settings.subject, payloads)
        assert await wait_count(db_url, 20) == 20
        await eventually(lambda: run.worker.totals["dead_lettered"], timeout=5,
                         what="the refused event dead-lettered")  # fmt: skip
    letters = await dead_letters(nats_url, settings)
    assert [m.data for m in letters] == [poisoned]
    assert letters[0].headers["Audit-Dlq-Reason"] == "db_rejected"
    assert letters[0].headers["Audit-Dlq-Stage"] == "flush"
    assert "23514" in letters[0].headers["Audit-Dlq-Message"]
    conn = await asyncpg.connect(db_url, server_settings={"role": "auditlog_app"})
    try:
        report = await verify_tenant(conn, "t-nul")
    finally:
        await conn.close()
    assert report.ok and report.events == 20


async def test_two_workers_keep_every_chain_gapless(db_url, settings_factory) -> None:
    settings = settings_factory(db_url, batch_max_events=500)
    tenants = [f"tenant-{i:02d}" for i in range(50)]
    payloads = [event(tenants[i % 50], i) for i in range(20_000)]
    async with running_worker(settings) as a, running_worker(settings) as b:
        await publish_all(a.nc, settings.subject, payloads)
        assert await wait_count(db_url, 20_000, timeout=120) == 20_000
        assert a.worker.totals["stored"] > 0 and b.worker.totals["stored"] > 0
    assert await admin_count(db_url) == 20_000
    conn = await asyncpg.connect(db_url, server_settings={"role": "auditlog_app"})
    try:
        for t in tenants:
            report = await verify_tenant(conn, t)
            assert report.ok, report
            assert report.events == 400
    finally:
        await conn.close()
    gaps = await admin_count(
        db_url,
        "SELECT count(*) FROM (SELECT tenant_id, max(seq) m, count(*) c, "
        "count(DISTINCT seq) d FROM audit.events GROUP BY 1) s WHERE m <> c OR d <> c",
    )
    assert gaps == 0


async def test_streams_never_age_out_unacked_events(db_url, settings_factory) -> None:
    # Interest retention, no max_age; a byte limit the server cannot reserve is dropped.
    settings = settings_factory(db_url, stream_max_bytes=2**60)
    nc = await connect(settings.nats_url, "retention")
    try:
        await ensure_stream(nc, settings)
        info = await nc.jetstream().stream_info(settings.stream)
        dlq = await nc.jetstream().stream_info(settings.dlq_stream)
    finally:
        await nc.close()
    assert info.config.retention == jsapi.RetentionPolicy.INTEREST
    assert not info.config.max_age and info.config.max_bytes in (-1, None)
    assert info.config.discard == jsapi.DiscardPolicy.NEW
    assert dlq.config.max_bytes == settings.dlq_max_bytes and dlq.config.max_age


async def test_an_old_stream_is_upgraded_in_place(db_url, settings_factory) -> None:
    settings = settings_factory(db_url)
    nc = await connect(settings.nats_url, "upgrade")
    try:
        js = nc.jetstream()
        await js.add_stream(name=settings.stream, subjects=[settings.subject],
                            max_age=7 * 86400.0)  # fmt: skip
        await js.publish(settings.subject, event("t-up", 1))
        await ensure_stream(nc, settings)
        info = await js.stream_info(settings.stream)
    finally:
        await nc.close()
    assert info.config.retention == jsapi.RetentionPolicy.INTEREST and not info.config.max_age
    assert settings.subject + ".*" in info.config.subjects
    assert info.state.messages == 1  # the backlog survives the upgrade
    async with running_worker(settings):
        assert await wait_count(db_url, 1) == 1
