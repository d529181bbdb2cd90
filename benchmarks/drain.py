"""Scenario *drain*: the pipeline draining a preloaded stream (JetStream → rows → acks).

Then runs *ceiling* (``benchmarks.ceiling``) on the same servers, unless
``--skip-ceiling``: the same rows COPYed straight into the same table, which is what
PostgreSQL alone takes here, so drain / ceiling comes from one run.

    python -m benchmarks.drain --events 300000 --tenants 1000 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time

import nats

from benchmarks.ceiling import ceiling
from benchmarks.common import (
    bench_servers,
    bench_settings,
    cpu_per_item,
    cpu_seconds_by_component,
    fast_publish,
    fresh_database,
    start_pipeline,
    stored_rows,
    synthetic_events,
    tenant_ids,
    with_ids,
    worker_rss_kib,
)
from pipeline.source_nats import ensure_stream


async def drain(server: str, nurl: str, payloads: list[bytes], workers: int,
                batch: int) -> dict[str, float]:  # fmt: skip
    dsn = await fresh_database(server, "bench_drain")
    tag = f"D{os.getpid()}"
    settings = bench_settings(dsn, nurl, tag, batch_max_events=batch)
    nc = await nats.connect(nurl)
    js = nc.jetstream()
    for s in (settings.stream, settings.dlq_stream):
        with contextlib.suppress(Exception):
            await js.delete_stream(s)
    await ensure_stream(nc, settings)
    pub_rate = await fast_publish(nurl, settings.subject, payloads)
    proc, _ = start_pipeline(settings, workers)
    peak_rss = 0
    total = len(payloads)
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
    finally:
        proc.terminate()
        proc.wait(60)
        await nc.close()
    rows = await stored_rows(dsn)
    assert t_first is not None and t_end is not None
    series = [(round(t - t_first, 3), n) for t, n in samples if t >= t_first]
    return {
        "events": total,
        "rows": rows,
        "seconds": t_end - t_first,
        "events_per_s": total / (t_end - t_first),
        "publish_per_s": pub_rate,
        "peak_rss_mib": peak_rss / 1024,
        # CPU time per event of each component while draining (2 cores = 2 s per second).
        "cpu_us_per_event": cpu_per_item(cpu_first, cpu_end, total),
        "series": series,
    }


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
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--skip-ceiling", action="store_true")
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
    with bench_servers() as (server, nurl):
        out["drain"] = await drain(server, nurl, mixed, args.workers, args.batch)
        out["drain"]["duplicates_in_input"] = dups  # type: ignore[index]
        out["drain"]["invalid_in_input"] = invalid  # type: ignore[index]
        if not args.skip_ceiling:
            out["ceiling_per_s"] = await ceiling(server, payloads, args.batch, 1)
            out["drain_over_ceiling"] = out["drain"]["events_per_s"] / out["ceiling_per_s"]  # type: ignore[index]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
