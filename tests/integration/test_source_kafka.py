"""The Kafka source end to end: a real Kafka-protocol broker (tansu, started here), a
faust App, the same worker, stages and PostgreSQL store as JetStream."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from pipeline.chain import verify_tenant
from tests.conftest import README_EVENT
from tests.integration.conftest import admin_count, running_kafka_worker, wait_count
from tests.tansu import Tansu, consume_all, create_topic, produce

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    broker = Tansu(Path(tmp_path_factory.mktemp("tansu")))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def event(tenant: str = "tenant-1", i: int = 0, **extra: object) -> bytes:
    doc = json.loads(README_EVENT)
    doc["tenant_id"] = tenant
    doc["description"] = f"event {i}"
    doc.update(extra)
    return json.dumps(doc).encode()


def kafka_settings(settings_factory, db_url: str, tansu: Tansu, **kw: object):
    n = uuid.uuid4().hex[:8]
    return settings_factory(db_url, kafka_bootstrap=tansu.bootstrap,
                            kafka_topic=f"audit.events.{n}", kafka_dlq_topic=f"audit.dlq.{n}",
                            kafka_group=f"auditlog-{n}", **kw)  # fmt: skip


INVALID = {
    b"{not json": "malformed_json",
    event(severity=5): "invalid_field",
    event(category="CATEGORY_NOPE"): "unknown_enum",
    event(description="x" * 70_000): "too_large",
    b"": "malformed_json",
}


async def test_valid_invalid_and_duplicate_events(db_url, settings_factory, tansu) -> None:
    s = kafka_settings(settings_factory, db_url, tansu)
    await create_topic(tansu.bootstrap, s.kafka_topic, 3)
    valid = [event(f"t-{i % 3}", i) for i in range(60)]
    fixed_id = event("t-dup", 1, id=str(uuid.uuid4()))
    keyed = event("t-dup", 2)
    key_header = [("Audit-Idempotency-Key", b"order-42")]
    values = [*valid, *INVALID, fixed_id, fixed_id, fixed_id, keyed, keyed]
    headers = [None] * (len(valid) + len(INVALID) + 3) + [key_header, key_header]
    await produce(tansu.bootstrap, s.kafka_topic, values, headers)
    async with running_kafka_worker(s) as run:
        assert await wait_count(db_url, len(valid) + 2) == len(valid) + 2
        letters = await consume_all(tansu.bootstrap, s.kafka_dlq_topic, len(INVALID))
        totals = run.worker.totals
    assert await admin_count(db_url) == len(valid) + 2
    assert totals["duplicates"] == 3
    assert len(letters) == len(INVALID)
    for rec in letters:
        h = {k: v.decode() for k, v in rec.headers}
        assert h["Audit-Dlq-Reason"] == INVALID[rec.value if len(rec.value) < 60_000
                                                else event(description="x" * 70_000)]
        assert h["Audit-Dlq-Source"].startswith(f"{s.kafka_topic}/")
        assert rec.key.decode() == "dlq:" + h["Audit-Dlq-Source"]
    await chains_verify(db_url, {"t-0": 20, "t-1": 20, "t-2": 20, "t-dup": 2})


async def chains_verify(db_url: str, expected: dict[str, int]) -> None:
    """Every tenant's chain verifies and holds the expected number of events."""
    conn = await asyncpg.connect(db_url, server_settings={"role": "auditlog_app"})
    try:
        for tenant, n in expected.items():
            report = await verify_tenant(conn, tenant)
            assert report.ok and report.events == n, (tenant, report)
    finally:
        await conn.close()
