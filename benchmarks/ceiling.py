"""Scenario *ceiling*: what PostgreSQL alone takes on this machine.

The rows the pipeline would write (validated, enriched, chained), pre-built, COPYed in
``--batch``-row transactions straight into the same partitioned ``audit.events`` table,
with the same indexes, over ``--connections`` connections. ``benchmarks.drain`` runs it
after the drain, on the same servers, so the ratio drain / ceiling comes from one run.

    python -m benchmarks.ceiling --events 200000 --connections 1
    python -m benchmarks.ceiling --events 300000 --breakdown   # what each index costs

``--breakdown`` measures, on one set of servers and alternating twice: the ceiling as the
service has it; with the text-search GIN index that ingestion maintained before
``sql/009_search_index.sql`` (``events_search``; now the indexer fills ``audit.search``
behind it); without the ``(tenant_id, seq)`` index; and with the claims
(``audit.event_ids`` rows COPYed in the same transaction, as each flush does). The primary
key stays in every variant.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime

import asyncpg

from benchmarks.common import bench_servers, emit, fresh_database, synthetic_events, tenant_ids
from infra.db import create_pool
from infra.settings import Settings
from pipeline import fastpath
from pipeline.copy_binary import CLAIM_COLUMNS
from pipeline.flush import _MAKE_HEADS, PartitionCache, month_partition, move_heads
from pipeline.indexer import BATCH_ROWS
from pipeline.stages import Message, Valid
from schemas.canonical import GENESIS
from schemas.rows import COLUMNS

INDEX_INTERVAL_S = Settings().search_index_interval_s  # the service's default

_OLD_SEARCH_INDEX = (
    "CREATE INDEX events_search ON audit.events USING gin (audit.search_text("
    "action, description, actor_display_name, resource_display_name))"
)
# Variants of --breakdown: (schema changes made before the COPY, claims COPYed too).
VARIANTS: dict[str, tuple[tuple[str, ...], bool]] = {
    "as_service_schema": ((), False),
    "with_search_index_in_ingest": ((_OLD_SEARCH_INDEX,), False),
    "without_tenant_seq_index": (("DROP INDEX audit.events_tenant_seq",), False),
    "with_claims": ((), True),
}


async def ceiling(server: str, payloads: list[bytes], batch: int, conns: int,
                  drop: tuple[str, ...] = (), claims: bool = False,
                  searchable: bool = False) -> float:  # fmt: skip
    """Rows/s of COPYing the pipeline's own binary COPY data (``pipeline.fastpath``: each
    batch chained after the previous one) into audit.events partitions (no pipeline);
    ``drop``: schema changes (SQL run as the owner) first; ``claims``: audit.event_ids rows
    in the same transactions; ``searchable``: measured the way the drain is until stored
    and searchable: each transaction also moves the chain heads, and the search indexer
    (``audit.index_search``, as ``pipeline.indexer`` runs it) runs beside the COPYs; the
    clock stops when every row is stored and indexed."""
    dsn = await fresh_database(server, "bench_ceiling")
    now = datetime.now(UTC)
    stamp = time.time_ns()
    msgs = [Message(data=p, stream_seq=i + 1, timestamp_ns=stamp) for i, p in enumerate(payloads)]
    items = [v.prepared for v in fastpath.prepare_batch(msgs, now) if isinstance(v, Valid)]
    heads: dict[str, tuple[int, bytes]] = {}
    chunks = []
    for i in range(0, len(items), batch):
        part = items[i : i + batch]
        by_month, moved = fastpath.chain_copy(
            part, {p.tenant_id: heads.get(p.tenant_id, (0, GENESIS)) for p in part}
        )
        heads.update(moved)
        chunks.append((by_month, fastpath.claims_copy(part), moved))
    owner = await asyncpg.connect(dsn)  # the migrations' owner (the pool's role may not)
    try:
        for change in drop:
            await owner.execute(change)
    finally:
        await owner.close()
    pool = await create_pool(dsn, max_size=conns + 1)
    await PartitionCache().ensure(pool, items)
    if searchable:  # the heads exist before the clock starts, as HeadCache makes them once
        async with pool.acquire() as conn:
            await conn.execute(_MAKE_HEADS, sorted(heads), GENESIS)
    queue: asyncio.Queue = asyncio.Queue()
    for c in chunks:
        queue.put_nowait(c)

    async def copier() -> None:
        async with pool.acquire() as conn:
            while not queue.empty():
                by_month, claim_data, moved = queue.get_nowait()
                async with conn.transaction():
                    if claims:
                        await conn.copy_to_table(
                            "event_ids", source=memoryview(claim_data), columns=CLAIM_COLUMNS,
                            schema_name="audit", format="binary")  # fmt: skip
                    for month, data in by_month.items():
                        await conn.copy_to_table(month_partition(month), source=memoryview(data),
                                                 columns=COLUMNS, schema_name="audit",
                                                 format="binary")  # fmt: skip
                    if searchable:
                        await move_heads(conn, moved)

    async def indexer(stored: asyncio.Event) -> None:
        async with pool.acquire() as conn:
            while True:
                async with conn.transaction():
                    step = await conn.fetchrow("SELECT indexed, more FROM "
                                               "audit.index_search($1)", BATCH_ROWS)  # fmt: skip
                if stored.is_set() and not await conn.fetchval(
                        "SELECT events FROM audit.search_lag()"):  # fmt: skip
                    return
                if not (step and step["more"]):
                    await asyncio.sleep(INDEX_INTERVAL_S)

    t0 = time.perf_counter()
    stored = asyncio.Event()
    indexing = asyncio.create_task(indexer(stored)) if searchable else None
    await asyncio.gather(*(copier() for _ in range(conns)))
    stored.set()
    if indexing is not None:
        await indexing
    rate = len(items) / (time.perf_counter() - t0)
    await pool.close()
    return rate


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument(
        "--batch",
        type=int,
        default=Settings().batch_max_events,
        help="rows per transaction (the service's AUDIT_BATCH_MAX_EVENTS)",
    )
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="also without each secondary index, and with claims (2 rounds)",
    )
    ap.add_argument(
        "--searchable",
        action="store_true",
        help="until stored and searchable: heads moved, the search indexer beside",
    )
    args = ap.parse_args()
    payloads = list(synthetic_events(args.events, tenant_ids(args.tenants)))
    out: dict[str, object] = {"events": args.events, "connections": args.connections}
    with bench_servers() as (server, _nurl):
        if not args.breakdown:
            out["ceiling_per_s"] = await ceiling(server, payloads, args.batch, args.connections,
                                                 searchable=args.searchable)  # fmt: skip
        else:
            rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
            for _ in range(2):  # alternated: drift on a noisy host hits every variant
                for name, (drop, claims) in VARIANTS.items():
                    rate = await ceiling(server, payloads, args.batch, args.connections,
                                         drop, claims)  # fmt: skip
                    rates[name].append(rate)
                    print(f"  {name}: {rate:,.0f} rows/s", file=sys.stderr, flush=True)
            base = sum(rates["as_service_schema"]) / 2
            out["breakdown"] = {
                name: {"rows_per_s": sum(r) / 2, "over_service_schema": sum(r) / 2 / base,
                       "us_per_row": 1e6 / (sum(r) / 2)}
                for name, r in rates.items()
            }  # fmt: skip
    if args.breakdown:
        figures = {f"breakdown.{name}.rows_per_s": "not measured" for name in VARIANTS}
    else:
        figures = {"ceiling_per_s": "no rows COPYed"}
    emit(out, figures)


if __name__ == "__main__":
    asyncio.run(main())
