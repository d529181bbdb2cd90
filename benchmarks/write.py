"""Scenario *write*: synchronous write latency (1, 16, 64 writers) and batch throughput,
through HTTP (every write: JetStream → pipeline → commit → answer), against `auditlog run`
(API and worker in one process) and then `auditlog api` + `auditlog pipeline` (two
processes, so the API and the worker each get a core), each on a fresh database.

    python -m benchmarks.write --seconds 10 --batch-events 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import aiohttp

from benchmarks.common import (
    bench_servers,
    cpu_per_item,
    cpu_seconds_by_component,
    emit,
    fresh_database,
    latency_summary,
    running_service,
    synthetic_events,
    tenant_ids,
)

ADMIN = "bench-write-admin-token-0123456789"
TOPOLOGIES = {
    "run": "`auditlog run`: API + 1 worker in one process",
    "split": "`auditlog api` + `auditlog pipeline`: two processes",
}


async def sync_writers(base: str, writers: int, seconds: float, events: list[dict]) -> dict:
    lat: list[float] = []
    # Request bodies encoded before the clock starts: the load generator shares the two
    # cores with what it measures, and JSON-encoding each write was its own CPU, not ours.
    bodies = [json.dumps({"event": e}).encode() for e in events]
    stop = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=writers)
    headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=conn, headers=headers) as s:

        async def writer(k: int) -> None:
            i = k
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                async with s.post(f"{base}/v1/audit/events",
                                  data=bodies[i % len(bodies)]) as r:  # fmt: skip
                    await r.read()
                    assert r.status == 200, r.status
                lat.append(time.perf_counter() - t0)
                i += writers

        cpu0 = cpu_seconds_by_component()
        t0 = time.perf_counter()
        await asyncio.gather(*(writer(k) for k in range(writers)))
        el = time.perf_counter() - t0
        cpu = cpu_per_item(cpu0, cpu_seconds_by_component(), len(lat))
    summary = latency_summary([x * 1000 for x in lat])
    return {"writers": writers, "writes": len(lat), "per_s": len(lat) / el,
            "p50_ms": summary["p50"], "p99_ms": summary["p99"], "latency_ms": summary,
            "cpu_us_per_write": cpu}  # fmt: skip


async def batches(base: str, events: list[dict], size: int, inflight: int,
                  wait: bool = True) -> dict:  # fmt: skip
    """Batch writes of ``size`` events, ``inflight`` requests at a time; ``wait=False``
    answers once JetStream holds the events (durable, committed later)."""
    headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
    # Encoded before the clock starts (the load generator shares the cores it measures).
    chunks = [json.dumps({"events": events[i : i + size]}).encode()
              for i in range(0, len(events), size)]  # fmt: skip
    sem = asyncio.Semaphore(inflight)
    async with aiohttp.ClientSession(headers=headers) as s:

        async def send(chunk: bytes) -> int:
            url = f"{base}/v1/audit/events:batch?wait={str(wait).lower()}"
            async with sem, s.post(url, data=chunk) as r:
                body = await r.json()
                assert r.status == (200 if wait else 202), body
                return len(body["event_ids"])

        t0 = time.perf_counter()
        stored = sum(await asyncio.gather(*(send(c) for c in chunks)))
        el = time.perf_counter() - t0
    return {"events": stored, "seconds": el, "events_per_s": stored / el, "batch": size,
            "wait": wait}  # fmt: skip


async def scenario(base: str, levels: list[int], seconds: float, events: list[dict],
                   batch_events: list[dict], topology: str) -> dict[str, Any]:  # fmt: skip
    """Sync writers at each level, then batches with and without waiting for commit."""
    out: dict[str, Any] = {"topology": TOPOLOGIES[topology]}
    await sync_writers(base, 4, 2.0, events)  # warm-up
    out["sync"] = []
    for w in levels:
        print(f"  write ({topology}): {w} synchronous writers for {seconds:g} s",
              file=sys.stderr, flush=True)  # fmt: skip
        out["sync"].append(await sync_writers(base, w, seconds, events))
    print(f"  write ({topology}): {len(batch_events):,} events in batches of 1,000",
          file=sys.stderr, flush=True)  # fmt: skip
    out["batch"] = await batches(base, batch_events, 1000, 4)
    print(f"  write ({topology}): the same count with wait=false (durable in JetStream)",
          file=sys.stderr, flush=True)  # fmt: skip
    # No client ids in these events: the server gives each write a new one.
    out["batch_durable"] = await batches(base, batch_events, 1000, 4, wait=False)
    return out


def figures(levels: int, split: bool, run: bool) -> dict[str, str]:
    """The headline figures of each topology measured (``benchmarks.common.emit``)."""
    out: dict[str, str] = {}
    for prefix, measured in (("", run), ("split.", split)):
        if not measured:
            continue
        for k in range(levels):
            out[f"{prefix}sync.{k}.per_s"] = "no synchronous write answered"
            out[f"{prefix}sync.{k}.p99_ms"] = "no synchronous write latency"
        out[f"{prefix}batch.events_per_s"] = "no batch answered after commit"
        out[f"{prefix}batch_durable.events_per_s"] = "no batch answered with wait=false"
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch-events", type=int, default=100_000)
    ap.add_argument("--writers", default="1,16,64", help="comma list of concurrencies")
    ap.add_argument(
        "--topologies",
        default="run,split",
        help="run (`auditlog run`), split (`auditlog api` + `auditlog pipeline`)",
    )
    args = ap.parse_args()
    levels = [int(w) for w in args.writers.split(",")]
    unknown = set(args.topologies.split(",")) - set(TOPOLOGIES)
    if unknown:
        ap.error(f"--topologies: unknown {', '.join(sorted(unknown))} (known: run, split)")
    events = [json.loads(p) for p in synthetic_events(20_000, tenant_ids(1000))]
    batch_events = [json.loads(p) for p in synthetic_events(args.batch_events, tenant_ids(1000),
                                                            seed=2)]  # fmt: skip
    out: dict[str, Any] = {}
    with bench_servers() as (server, nurl):
        for topology in args.topologies.split(","):
            split = topology == "split"
            dsn = await fresh_database(server, f"bench_write_{topology}")
            async with running_service(dsn, nurl, ADMIN, f"W{topology}", split=split) as base:
                result = await scenario(base, levels, args.seconds, events, batch_events, topology)
            if split:
                out["split"] = result
            else:
                out.update(result)
    emit(out, figures(len(levels), "split" in out, "run" in args.topologies.split(",")))


if __name__ == "__main__":
    asyncio.run(main())
