"""Scenario *ceiling*: what PostgreSQL alone takes on this machine.

The rows the pipeline would write (validated, enriched, chained), pre-built, COPYed in
``--batch``-row transactions straight into the same partitioned ``audit.events`` table,
with the same indexes, over ``--connections`` connections. ``benchmarks.drain`` runs it
after the drain, on the same servers, so the ratio drain / ceiling comes from one run.

    python -m benchmarks.ceiling --events 200000 --connections 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime

from benchmarks.common import bench_servers, fresh_database, synthetic_events, tenant_ids
from infra.db import create_pool
from pipeline.chain import COLUMNS, link
from pipeline.flush import PartitionCache, partition_name
from pipeline.stages import Message, Valid, process


async def ceiling(server: str, payloads: list[bytes], batch: int, conns: int) -> float:
    """Rows/s of COPYing pre-built records into audit.events partitions (no pipeline)."""
    dsn = await fresh_database(server, "bench_ceiling")
    now = datetime.now(UTC)
    seqs: dict[str, int] = {}
    records = []
    events = []
    for i, p in enumerate(payloads):
        v = process(Message(data=p, stream_seq=i + 1, timestamp_ns=time.time_ns()), now)
        assert isinstance(v, Valid)
        events.append(v.event)
        s = seqs[v.event.tenant_id] = seqs.get(v.event.tenant_id, 0) + 1
        records.append(link(v.prepared, s, bytes(32)))
    pool = await create_pool(dsn, max_size=conns)
    await PartitionCache().ensure(pool, events)
    part = partition_name(events[0].occurred_at)  # type: ignore[arg-type]
    chunks = [records[i : i + batch] for i in range(0, len(records), batch)]
    queue: asyncio.Queue = asyncio.Queue()
    for c in chunks:
        queue.put_nowait(c)

    async def copier() -> None:
        async with pool.acquire() as conn:
            while not queue.empty():
                c = queue.get_nowait()
                async with conn.transaction():
                    await conn.copy_records_to_table(part, records=c, columns=COLUMNS,
                                                     schema_name="audit")  # fmt: skip

    t0 = time.perf_counter()
    await asyncio.gather(*(copier() for _ in range(conns)))
    rate = len(records) / (time.perf_counter() - t0)
    await pool.close()
    return rate


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--connections", type=int, default=1)
    args = ap.parse_args()
    payloads = list(synthetic_events(args.events, tenant_ids(args.tenants)))
    with bench_servers() as (server, _nurl):
        rate = await ceiling(server, payloads, args.batch, args.connections)
    print(json.dumps({"ceiling_per_s": rate, "events": args.events,
                      "connections": args.connections}, indent=2))  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
