"""Scenario *steady*: publishers at a fixed offered rate while the pipeline runs.

Publishes ~600-byte events over 1,000 tenants at ``--rate`` events/s for ``--seconds``
(paced every 5 ms, JetStream acks collected asynchronously), with one pipeline worker
process running. Measures the achieved commit rate, consumer lag (pending + unacked,
sampled every 0.25 s), end-to-end latency per event (publish → the worker's commit notice
on the commit subject: JetStream, validation, chain, COPY, commit, ack) and the worker's
peak RSS.

    python -m benchmarks.steady --rate 5000 --seconds 30
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

from benchmarks.common import (
    bench_servers,
    bench_settings,
    fresh_database,
    latency_summary,
    start_pipeline,
    stored_rows,
    synthetic_events,
    tenant_ids,
    wait_ready,
    with_ids,
    worker_rss_kib,
)
from pipeline.commits import decode_keys
from pipeline.source_nats import ensure_stream

TICK = 0.005


async def run(server: str, nurl: str, rate: int, seconds: float) -> dict[str, object]:
    n = int(rate * seconds)
    payloads, index = with_ids(list(synthetic_events(n, tenant_ids(1000), seed=3)))
    dsn = await fresh_database(server, "bench_steady")
    settings = bench_settings(dsn, nurl, f"S{os.getpid()}")
    nc = await nats.connect(nurl, pending_size=64 * 1024 * 1024)
    js = nc.jetstream()
    for s in (settings.stream, settings.dlq_stream):
        with contextlib.suppress(Exception):
            await js.delete_stream(s)
    await ensure_stream(nc, settings)
    sent_at = [0.0] * n
    latency_ms: list[float] = []
    committed_at: list[float] = []
    acks = 0
    all_committed = asyncio.Event()

    async def on_commit(msg: nats.aio.msg.Msg) -> None:
        now = time.perf_counter()
        for _tenant, eid in decode_keys(msg.data).ok:
            i = index.pop(eid, None)
            if i is not None and sent_at[i]:
                latency_ms.append((now - sent_at[i]) * 1000)
                committed_at.append(now)
        if not index:
            all_committed.set()

    async def on_ack(msg: nats.aio.msg.Msg) -> None:
        nonlocal acks
        acks += 1

    await nc.subscribe(settings.commit_subject, cb=on_commit)
    inbox = nc.new_inbox()
    await nc.subscribe(inbox + ".*", cb=on_ack)
    proc, ready = start_pipeline(settings, 1)
    lag: list[tuple[float, int]] = []
    peak_rss = 0
    try:
        await wait_ready(ready)  # the worker has bound its consumer: offer load now
        t0 = time.perf_counter()

        async def sample() -> None:
            nonlocal peak_rss
            while True:
                with contextlib.suppress(Exception):
                    info = await js.consumer_info(settings.stream, settings.consumer)
                    lag.append((round(time.perf_counter() - t0, 2),
                                info.num_pending + info.num_ack_pending))  # fmt: skip
                peak_rss = max(peak_rss, worker_rss_kib(proc.pid))
                await asyncio.sleep(0.25)

        sampler = asyncio.create_task(sample())
        i = 0
        next_report = t0 + 5
        while i < n:
            now = time.perf_counter()
            due = min(n, int((now - t0) * rate) + 1)
            while i < due:
                sent_at[i] = time.perf_counter()
                await nc.publish(settings.subject, payloads[i], reply=f"{inbox}.{i}")
                i += 1
            if now >= next_report:
                print(f"  steady: offered {i:,}/{n:,}, committed {len(latency_ms):,}",
                      file=sys.stderr, flush=True)  # fmt: skip
                next_report += 5
            await asyncio.sleep(TICK)
        t_pub = time.perf_counter() - t0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_committed.wait(), 120)
        sampler.cancel()
    finally:
        proc.terminate()
        proc.wait(60)
        await nc.close()
    rows = await stored_rows(dsn)
    # Achieved rate over the offered window: commits observed while publishing.
    in_window = sum(1 for t in committed_at if t - t0 <= t_pub)
    return {
        "offered_per_s": rate,
        "published_per_s": n / t_pub,
        "achieved_per_s": in_window / t_pub,
        "events": n,
        "rows": rows,
        "jetstream_acks": acks,
        "committed_seen": len(latency_ms),
        "latency_ms": latency_summary(latency_ms),
        "max_lag": max((v for _, v in lag), default=0),
        "lag_series": lag,
        "peak_rss_mib": peak_rss / 1024,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rate", type=int, default=5000, help="offered events/s")
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    with bench_servers() as (server, nurl):
        out = await run(server, nurl, args.rate, args.seconds)
    print(json.dumps({"steady": out}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
