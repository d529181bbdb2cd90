"""Scenario *contention*: ingestion while clients export continuously.

One ``auditlog run`` (API + pipeline, default settings). First ``--export-rows`` events of
one tenant are loaded; then ``--events`` synthetic events (1,000 tenants) are published as
fast as JetStream takes them and the drain rate is measured, once alone and once while
``--exporters`` clients export that tenant in a loop (NDJSON, honouring 429
``Retry-After`` as a client should). The report gives drain-with-exports / drain-alone
(target >= 0.70) and what the exporters got.

    python -m benchmarks.contention --events 200000 --export-rows 200000 --exporters 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import aiohttp

from benchmarks.common import (
    bench_servers,
    emit,
    fast_publish,
    fresh_database,
    running_service,
    stored_rows,
    synthetic_events,
    tenant_ids,
)

ADMIN = "bench-contention-admin-token-0123456789"
EXPORT_TENANT = "export-tenant"
# What the scenario exists for: missing any of these fails it (benchmarks.common.emit).
FIGURES = {
    "drain_alone_per_s": "no drain rate alone",
    "drain_with_exports_per_s": "no drain rate with exports",
    "exported_rows_per_s": "the exporters got no rows",
}


async def wait_rows(dsn: str, target: int, timeout: float = 900) -> tuple[float, float]:
    """(time the count first moved, time it reached ``target``), by polling. The count
    moved after the poll before the one that saw it move: that poll's time is the start (a
    drain committed between two polls, in one batch, has a rate and no zero division)."""
    start = await stored_rows(dsn)
    t_first = None
    deadline = time.perf_counter() + timeout
    polled = time.perf_counter()
    while time.perf_counter() < deadline:
        n = await stored_rows(dsn)
        now = time.perf_counter()
        if t_first is None and n > start:
            t_first = polled
        if n >= target:
            return t_first if t_first is not None else polled, now
        polled = now
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{target} rows not reached")


async def drain(dsn: str, nurl: str, subject: str, payloads: list[bytes]) -> float:
    before = await stored_rows(dsn)
    pub = asyncio.create_task(fast_publish(nurl, subject, payloads))
    t0, t1 = await wait_rows(dsn, before + len(payloads))
    await pub
    return len(payloads) / (t1 - t0)


async def tenant_key(base: str) -> str:
    """A new read key of EXPORT_TENANT (each exporter is its own client)."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as s:
        body = {"tenant_id": EXPORT_TENANT, "scopes": ["read"]}
        async with s.post(f"{base}/v1/admin/keys", json=body) as r:
            return str((await r.json())["token"])


async def exporter(base: str, token: str, stop: asyncio.Event, stats: dict[str, int]) -> None:
    url = f"{base}/v1/audit/export?format=ndjson"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s:
        while not stop.is_set():
            async with s.get(url) as r:
                if r.status == 429:
                    stats["429"] += 1
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                    continue
                async for chunk in r.content.iter_chunked(1 << 16):
                    stats["rows"] += chunk.count(b"\n")
                    if stop.is_set():
                        break
                stats[str(r.status)] = stats.get(str(r.status), 0) + 1


async def run(events: int, export_rows: int, exporters: int) -> dict[str, object]:
    tag = f"C{os.getpid()}"
    subject = f"bench{tag}.events"
    export_doc = json.loads(next(iter(synthetic_events(1, tenant_ids(1)))))
    export_doc["tenant_id"] = EXPORT_TENANT
    loads = [json.dumps({**export_doc, "description": f"row {i}"}).encode()
             for i in range(export_rows)]  # fmt: skip
    # No client ids: each event's id derives from its stream position (all distinct).
    alone_events = list(synthetic_events(events, tenant_ids(1000), seed=11))
    busy_events = list(synthetic_events(events, tenant_ids(1000), seed=12))
    with bench_servers() as (server, nurl):
        dsn = await fresh_database(server, "bench_contention")
        async with running_service(dsn, nurl, ADMIN, tag) as base:
            print(f"  loading {export_rows:,} rows to export", file=sys.stderr, flush=True)
            await drain(dsn, nurl, subject, loads)
            print("  drain alone", file=sys.stderr, flush=True)
            alone = await drain(dsn, nurl, subject, alone_events)
            print(f"  drain with {exporters} exporters", file=sys.stderr, flush=True)
            stop = asyncio.Event()
            stats = {"rows": 0, "429": 0}
            keys = [await tenant_key(base) for _ in range(exporters)]
            tasks = [asyncio.create_task(exporter(base, k, stop, stats)) for k in keys]
            await asyncio.sleep(1.0)  # exports under way
            started = time.perf_counter()
            busy = await drain(dsn, nurl, subject, busy_events)
            export_s = time.perf_counter() - started
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "events": events,
        "export_rows": export_rows,
        "exporters": exporters,
        "drain_alone_per_s": alone,
        "drain_with_exports_per_s": busy,
        "ratio": busy / alone,
        "target_ratio": 0.70,
        "exported_rows_per_s": stats["rows"] / max(export_s, 1e-9),
        "exports_refused_429": stats["429"],
        "exports_completed": stats.get("200", 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--export-rows", type=int, default=200_000)
    ap.add_argument("--exporters", type=int, default=6)
    args = ap.parse_args()
    emit(asyncio.run(run(args.events, args.export_rows, args.exporters)), FIGURES)


if __name__ == "__main__":
    main()
