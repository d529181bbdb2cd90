"""The Kafka source end to end: a real Kafka-protocol broker (tansu, started here), a
faust App, the same worker, stages and PostgreSQL store as JetStream."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from ledger.chain import verify_tenant
from pipeline.dlq_kafka import KafkaDeadLetters
from pipeline.stages import Dead
from tests.support.events import event
from tests.support.metrics import sample
from tests.support.processes import stop_all
from tests.support.service import admin_count, running_kafka_worker, wait_count
from tests.support.waits import eventually, kafka_drained
from tests.tansu import Tansu, committed, consume_all, create_topic, free_port, produce

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    broker = Tansu(Path(tmp_path_factory.mktemp("tansu")))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


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
        assert (
            h["Audit-Dlq-Reason"]
            == INVALID[rec.value if len(rec.value) < 60_000 else event(description="x" * 70_000)]
        )
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


class Switchable:
    """The real Kafka dead-letter sink behind a switch: while ``broken``, publishing fails
    (fault injection at the sink's boundary; the broker and source are real)."""

    def __init__(self, real: KafkaDeadLetters) -> None:
        self.real = real
        self.broken = True
        self.failures = 0

    async def publish(self, dead: Dead, now) -> None:
        if self.broken:
            self.failures += 1
            raise ConnectionError("dead-letter topic unavailable (injected)")
        await self.real.publish(dead, now)


async def test_unpublishable_dead_letter_pauses_its_partition_only(
    db_url, settings_factory, tansu
) -> None:
    s = kafka_settings(settings_factory, db_url, tansu)
    await create_topic(tansu.bootstrap, s.kafka_topic, 2)
    # Partition 0: 5 valid, one bad, 5 valid. Partition 1: 20 valid.
    await produce(tansu.bootstrap, s.kafka_topic, [event("t-p0", i) for i in range(5)],
                  partition=0)  # fmt: skip
    await produce(tansu.bootstrap, s.kafka_topic, [b"{broken"], partition=0)
    await produce(tansu.bootstrap, s.kafka_topic, [event("t-p0", i) for i in range(5, 10)],
                  partition=0)  # fmt: skip
    await produce(tansu.bootstrap, s.kafka_topic, [event("t-p1", i) for i in range(20)],
                  partition=1)  # fmt: skip
    async with running_kafka_worker(s) as run:
        source = run.worker.source
        sink = Switchable(run.worker.dead_letters)  # type: ignore[arg-type]
        run.worker.dead_letters = sink
        assert await wait_count(db_url, 30) == 30  # every valid event, both partitions
        await eventually(lambda: (source.paused(), run.worker.status()),
                         lambda st: st[0] and st[1].startswith("degraded"), timeout=10,
                         what="(paused partitions, status) once degraded")  # fmt: skip
        assert source.paused() == [f"{s.kafka_topic}/0"]
        assert "could not be published" in run.worker.status()
        assert sample(run.metrics, "auditlog_kafka_paused_partitions") == 1
        # Faust commits every second: the other partition's offsets get there.
        offsets = await eventually(
            lambda: committed(tansu.bootstrap, s.kafka_group, s.kafka_topic, 2),
            lambda o: o.get(1) == 20, timeout=10, interval=0.5,
            what="partition 1 committed up to 20 (the other partition went on)",
        )  # fmt: skip
        assert offsets.get(0, 0) <= 5  # never past the held record (offset 5)
        sink.broken = False  # the dead-letter topic comes back: retried with backoff
        letters = await consume_all(tansu.bootstrap, s.kafka_dlq_topic, 1)
        assert [r.value for r in letters] == [b"{broken"]
        await eventually(lambda: (source.paused(), run.worker.status()),
                         lambda st: not st[0] and st[1] == "ok", timeout=10,
                         what="(paused partitions, status) back to none and ok")  # fmt: skip
        assert source.paused() == [] and run.worker.status() == "ok"
        await eventually(lambda: committed(tansu.bootstrap, s.kafka_group, s.kafka_topic, 2),
                         lambda o: o == {0: 11, 1: 20}, timeout=10, interval=0.5,
                         what="every record committed")  # fmt: skip
        assert sink.failures >= 3
    assert await admin_count(db_url) == 30
    await chains_verify(db_url, {"t-p0": 10, "t-p1": 20})


async def test_broker_away_and_back(db_url, settings_factory, tmp_path) -> None:
    broker = Tansu(tmp_path)
    broker.start()
    try:
        s = kafka_settings(settings_factory, db_url, broker)
        await create_topic(broker.bootstrap, s.kafka_topic, 2)
        await produce(broker.bootstrap, s.kafka_topic, [event("t-away", i) for i in range(10)])
        async with running_kafka_worker(s) as run:
            source = run.worker.source
            assert await wait_count(db_url, 10) == 10
            broker.stop()
            await eventually(lambda: source.probe_broker(within_s=1.0),
                             lambda problem: problem is not None, timeout=100, interval=0,
                             what="the probe reports the broker away")  # fmt: skip
            assert source.broker_problem
            assert sample(run.metrics, "auditlog_source_up", source="kafka") == 0
            await asyncio.sleep(3)  # the consumer loses its connection and group
            # (the runtime probes every 5 s: a second failed probe in a row)
            assert await source.probe_broker(within_s=1.0) is not None
            # Tansu keeps data in memory: the restarted broker is empty (reconnection,
            # not durability, is what this tests).
            broker.start()
            await create_topic(broker.bootstrap, s.kafka_topic, 2)
            await eventually(lambda: source.probe_broker(within_s=1.0),
                             lambda problem: problem is None, timeout=120, interval=0.2,
                             what="the probe reports the broker back")  # fmt: skip
            assert source.broker_problem is None
            # The broker's return ended that source: the runtime runs a new consumer, which
            # joins the (restarted, empty) broker's group afresh.
            assert source.restart_reason and "failed probes" in source.restart_reason
            await eventually(lambda: run.worker.source is not source, timeout=60,
                             what="a new source after the broker came back")  # fmt: skip
            await produce(broker.bootstrap, s.kafka_topic,
                          [event("t-away", i) for i in range(10, 40)])  # fmt: skip
            assert await wait_count(db_url, 40, timeout=90) == 40
    finally:
        broker.stop()


# -- the service as real processes (`auditlog pipeline`): crashes and rebalances ---------
TENANTS = [f"t-k{i}" for i in range(7)]


def worker_env(db_url: str, nats_url: str, broker: Tansu, tmp: Path, topic: str,
               group: str) -> dict[str, str]:  # fmt: skip
    n = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env.update(AUDIT_DATABASE_URL=db_url, AUDIT_NATS_URL=nats_url, AUDIT_STATE_DIR=str(tmp),
               AUDIT_STREAM=f"AUDIT_K{n}", AUDIT_SUBJECT=f"k.{n}.audit.events",
               AUDIT_DLQ_STREAM=f"AUDIT_KDLQ{n}", AUDIT_DLQ_SUBJECT=f"k.{n}.audit.dlq",
               AUDIT_COMMIT_SUBJECT=f"k.{n}.committed", AUDIT_CHECKPOINT_STREAM=f"AUDIT_KCP{n}",
               AUDIT_CHECKPOINT_SUBJECT=f"k.{n}.cp", AUDIT_STREAM_MAX_BYTES=str(64 << 20),
               AUDIT_DLQ_MAX_BYTES=str(64 << 20), AUDIT_RETENTION_INTERVAL_S="0",
               AUDIT_NATS_INGEST="false", AUDIT_KAFKA_BOOTSTRAP=broker.bootstrap,
               AUDIT_KAFKA_TOPIC=topic, AUDIT_KAFKA_GROUP=group,
               AUDIT_KAFKA_DLQ_TOPIC=topic + ".dlq", AUDIT_BATCH_MAX_EVENTS="500",
               AUDIT_LOG_LEVEL="WARNING")  # fmt: skip
    return env


def spawn_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = dict(env, AUDIT_METRICS_PORT=str(free_port()))
    return subprocess.Popen([sys.executable, "-m", "auditlog.cli", "pipeline", "--workers", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip


async def assert_exactly(dsn: str, total: int, env: dict[str, str], partitions: int) -> None:
    """Exactly ``total`` events stored once the workers' group (``env``'s) has committed
    every record; every chain verifies."""
    assert await wait_count(dsn, total, timeout=180) == total
    # Nothing more will arrive once every record is committed.
    await kafka_drained(env["AUDIT_KAFKA_BOOTSTRAP"], env["AUDIT_KAFKA_GROUP"],
                        env["AUDIT_KAFKA_TOPIC"], partitions, total)  # fmt: skip
    assert await admin_count(dsn) == total
    assert await admin_count(dsn, "SELECT count(DISTINCT description) FROM audit.events") == total
    await chains_verify(dsn, {t: total // len(TENANTS) for t in TENANTS})


async def preloaded(db_url: str, nats_url: str, tansu: Tansu, tmp: Path, name: str,
                    partitions: int, total: int) -> dict[str, str]:  # fmt: skip
    """A fresh topic of ``partitions`` holding ``total`` events of TENANTS; the env of a
    worker in a fresh group reading it."""
    topic, group = f"audit.{name}.{uuid.uuid4().hex[:6]}", f"g-{uuid.uuid4().hex[:6]}"
    await create_topic(tansu.bootstrap, topic, partitions)
    await produce(tansu.bootstrap, topic, [event(TENANTS[i % 7], i) for i in range(total)])
    return worker_env(db_url, nats_url, tansu, tmp, topic, group)


async def test_kill_9_mid_batch_then_restart(db_url, nats_url, tansu, tmp_path) -> None:
    total = 14_000
    env = await preloaded(db_url, nats_url, tansu, tmp_path, "kill", 3, total)
    first = spawn_worker(env)
    procs = [first]
    try:
        got = await wait_count(db_url, 2_000, timeout=120)
        assert 2_000 <= got < total, got  # mid-drain
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = spawn_worker(env)
        procs.append(second)
        await assert_exactly(db_url, total, env, 3)
        assert second.poll() is None
    finally:
        stop_all(procs)


async def test_two_workers_in_one_group_with_rebalances(db_url, nats_url, tansu,
                                                        tmp_path) -> None:  # fmt: skip
    total = 14_000
    env = await preloaded(db_url, nats_url, tansu, tmp_path, "two", 4, total)
    one = spawn_worker(env)
    procs = [one]
    try:
        assert await wait_count(db_url, 1_500, timeout=120) < total
        two = spawn_worker(env)  # joins: partitions are shared out again
        procs.append(two)
        assert await wait_count(db_url, 6_000, timeout=120) < total
        one.send_signal(signal.SIGTERM)  # leaves: its partitions go to the other
        assert one.wait(60) == 0
        await assert_exactly(db_url, total, env, 4)
        assert two.poll() is None
    finally:
        stop_all(procs)


def get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


async def poll(url: str, ok: Callable[[str], bool], timeout: float = 60) -> str:
    """GET ``url`` until ``ok(body)``; return that body."""
    return await eventually(lambda: get(url)[1], ok, timeout=timeout, interval=0.5,
                            what=f"GET {url} answers as expected")  # fmt: skip


async def test_readyz_and_metrics_follow_the_broker(db_url, nats_url, tmp_path) -> None:
    broker = Tansu(tmp_path)
    broker.start()
    topic, group = f"audit.ready.{uuid.uuid4().hex[:6]}", f"g-{uuid.uuid4().hex[:6]}"
    port = free_port()
    env = dict(worker_env(db_url, nats_url, broker, tmp_path, topic, group),
               AUDIT_METRICS_PORT=str(port))  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "auditlog.cli", "pipeline", "--workers", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        await create_topic(broker.bootstrap, topic, 2)
        await produce(broker.bootstrap, topic, [event("t-ready", i) for i in range(5)])
        assert await wait_count(db_url, 5, timeout=90) == 5
        body = await poll(f"{base}/readyz", lambda b: '"pipeline":"ok"' in b)
        assert '"status":"ready"' in body, body
        metrics = await poll(
            f"{base}/metrics", lambda b: 'auditlog_source_up{source="kafka"} 1.0' in b
        )
        assert 'auditlog_events_stored_total{source="kafka"} 5.0' in metrics
        broker.stop()
        body = await poll(f"{base}/readyz", lambda b: "kafka broker unreachable" in b)
        assert "kafka broker unreachable" in body and '"status":"degraded"' in body, body
        assert 'auditlog_source_up{source="kafka"} 0.0' in get(f"{base}/metrics")[1]
        broker.start()
        body = await poll(f"{base}/readyz", lambda b: '"pipeline":"ok"' in b)
        assert '"status":"ready"' in body, body
        assert proc.poll() is None
    finally:
        stop_all([proc])
        broker.stop()


async def test_broker_down_at_start_is_waited_for_and_shutdown_stays_prompt(
    db_url, nats_url, tmp_path
) -> None:
    broker = Tansu(tmp_path)  # not started yet
    topic, group = f"audit.down.{uuid.uuid4().hex[:6]}", f"g-{uuid.uuid4().hex[:6]}"
    env = worker_env(db_url, nats_url, broker, tmp_path, topic, group)
    env["AUDIT_LOG_LEVEL"] = "INFO"
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "auditlog.cli", "pipeline", "--workers", "1"],
            env=dict(env, AUDIT_METRICS_PORT=str(port)), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip

    def sigterm_exits(proc: subprocess.Popen[bytes]) -> str:
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = proc.wait(40)
        assert code == 0 and time.monotonic() - started < 30
        return proc.stderr.read().decode() if proc.stderr else ""

    # 1. Down all along: waited for (no traceback, not counted as a bug), said in /readyz,
    #    and SIGTERM still ends the process promptly.
    proc = start()
    try:
        body = await poll(f"{base}/readyz", lambda b: "kafka broker unreachable" in b)
        assert "kafka broker unreachable" in body, body
        await asyncio.sleep(3)
        assert "auditlog_internal_errors_total{" not in get(f"{base}/metrics")[1]
        log = sigterm_exits(proc)
        assert "Traceback" not in log and "unreachable" in log, log[-3000:]
        # 2. Down at start, then up: the worker starts consuming by itself.
        proc = start()
        await poll(f"{base}/readyz", lambda b: "kafka broker unreachable" in b)
        broker.start()
        await create_topic(broker.bootstrap, topic, 2)
        await produce(broker.bootstrap, topic, [event("t-down", i) for i in range(7)])
        assert await wait_count(db_url, 7, timeout=90) == 7
        log = sigterm_exits(proc)
        assert "Traceback" not in log, log[-3000:]
    finally:
        stop_all([proc])
        broker.stop()
    await chains_verify(db_url, {"t-down": 7})
