"""Scenario *query*: read-model latency over a large, skewed data set, through HTTP.

Loads N events (default 5,000,000) over 1,000 tenants, skewed so a few tenants hold most
rows (tenant k gets a share proportional to 1/(k+1)), spread over the last 30 days; then
brings the search index up to date (as the service's indexer does behind ingestion), runs
the service (`auditlog run`, pointed at that database) and measures:

- first page of tenant + last 24 h + severity + category (p50/p99 over many requests);
- page 200 reached by following tokens, against page 1 (same filters);
- text search first page (p50/p99): a common pair of words, and a rare word;
- export (NDJSON) rows/s.

    python -m benchmarks.query --events 5000000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg

from benchmarks.common import (
    bench_servers,
    emit,
    fresh_database,
    latency_summary,
    running_service,
)

ADMIN = "bench-admin-token-0123456789abcdef"
# What the scenario exists for: missing any of these fails it (benchmarks.common.emit).
FIGURES = {
    "first_page_ms.p99": "no first-page latency",
    "deep_paging_ms.ratio_p50": "no page 200 / page 1 ratio",
    "search_first_page_ms.p99": "no text-search latency",
    "export.rows": "the export returned no rows",
    "export.rows_per_s": "no export rate",
}

LOAD_SQL = """
INSERT INTO audit.events (tenant_id, occurred_at, id, seq, received_at, action, category,
    severity, actor_type, actor_id, actor_display_name, resource_type, resource_id,
    resource_display_name, related_resources, description, metadata, ip, user_agent,
    request_id, hash)
SELECT t.tenant, t.ts, t.id, t.n, t.ts,
    (ARRAY['user.login','user.logout','document.updated','role.granted','invoice.paid',
           'api_key.created','settings.changed','file.downloaded'])[1 + t.n % 8],
    (ARRAY['CATEGORY_AUTH','CATEGORY_DATA','CATEGORY_ACCESS_CONTROL','CATEGORY_BILLING',
           'CATEGORY_CONFIGURATION','CATEGORY_SECURITY'])[1 + t.n % 6],
    (ARRAY['SEVERITY_INFO','SEVERITY_INFO','SEVERITY_NOTICE','SEVERITY_WARNING',
           'SEVERITY_ERROR','SEVERITY_SECURITY'])[1 + (t.n / 7) % 6],
    'ACTOR_TYPE_USER', 'user-' || (t.n % 5000),
    (ARRAY['Jane Doe','John Smith','Ada Lovelace','Grace Hopper','Alan Turing'])[1 + t.n % 5],
    'document', 'doc-' || (t.n % 100000),
    (ARRAY['Quarterly plan','Budget forecast','Hiring roadmap','Security review'])[1 + t.n % 4],
    '[{"type":"folder","id":"folder-1","display_name":""}]'::jsonb,
    'Updated the sharing settings of document ' || (t.n % 100000) || ' in the workspace',
    '{"ip":"192.0.2.10","plan":"enterprise","region":"eu-west-1"}'::json,
    '192.0.2.10', 'Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0', md5(t.n::text),
    sha256(t.id::text::bytea)
FROM (
    SELECT 'tenant-' || lpad(floor(exp(random() * ln(1000)))::int::text, 4, '0') AS tenant,
           now() - random() * interval '30 days' AS ts,
           gen_random_uuid() AS id, g AS n
    FROM generate_series($1::bigint, $2::bigint) AS g
) t
"""


async def load(dsn: str, n: int) -> float:
    """Insert ``n`` skewed events server-side; returns seconds taken."""
    conn = await asyncpg.connect(dsn)
    try:
        for m in range(-2, 1):
            await conn.execute(
                "SELECT audit.ensure_partition(now() + make_interval(months => $1))", m
            )
        t0 = time.perf_counter()
        step = 250_000
        for lo in range(1, n + 1, step):
            await conn.execute(LOAD_SQL, lo, min(n, lo + step - 1))
            print(f"  loaded {min(n, lo + step - 1):,}/{n:,}", file=sys.stderr, flush=True)
        await conn.execute("ANALYZE audit.events")
        return time.perf_counter() - t0
    finally:
        await conn.close()


async def index(dsn: str) -> float:
    """Chain heads of the loaded tenants (the load bypasses the pipeline), then the search
    index brought up to date as the service's indexer does; returns seconds taken."""
    from infra.db import create_pool
    from infra.settings import Settings
    from pipeline.indexer import SearchIndexer

    conn = await asyncpg.connect(dsn)
    pool = await create_pool(dsn, max_size=1)
    try:
        await conn.execute(
            "INSERT INTO audit.chain_heads (tenant_id, last_seq, last_hash)"
            " SELECT tenant_id, max(seq), '\\x00' FROM audit.events GROUP BY 1"
        )
        t0 = time.perf_counter()
        indexer = SearchIndexer(Settings(database_url=dsn, nats_url="nats://unused"), pool)
        while await indexer.cycle():
            print(f"  indexed {indexer.indexed:,}", file=sys.stderr, flush=True)
        # The load's seqs are no hash chains: the checkpointer must not try to sign them.
        await conn.execute("DELETE FROM audit.chain_heads")
        await conn.execute("ANALYZE audit.search")
        return time.perf_counter() - t0
    finally:
        await pool.close()
        await conn.close()


def ms(seconds: list[float]) -> dict[str, object]:
    """Latency summary (ms) of samples in seconds."""
    return latency_summary([x * 1000 for x in seconds])


async def timed(session: aiohttp.ClientSession, url: str, params: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    async with session.get(url, params=params) as r:
        body = await r.json()
        assert r.status == 200, body
    return time.perf_counter() - t0, body


async def measure(base: str, big: str, reps: int) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    since = (datetime.now(UTC) - timedelta(hours=24)).isoformat().replace("+00:00", "Z")
    first = {"tenant_id": big, "start_time": since, "severities": "SEVERITY_SECURITY",
             "categories": "CATEGORY_AUTH", "page_size": "50"}  # fmt: skip
    out: dict[str, object] = {}
    async with aiohttp.ClientSession(headers=headers) as s:
        url = f"{base}/v1/audit/events"
        for _ in range(5):
            await timed(s, url, first)  # warm up
        lat = [(await timed(s, url, first))[0] for _ in range(reps)]
        out["first_page_ms"] = ms(lat)
        deep = {"tenant_id": big, "page_size": "50"}
        p1 = [(await timed(s, url, deep))[0] for _ in range(reps)]
        token, t200 = "", []
        for page in range(1, 201):
            dt, body = await timed(s, url, {**deep, **({"page_token": token} if token else {})})
            token = body["next_page_token"]
            if page == 200:
                t200.append(dt)
        # Re-request page 200 with its token many times for a distribution.
        token199 = token
        for _ in range(reps - 1):
            t200.append((await timed(s, url, {**deep, "page_token": token199}))[0])
        out["deep_paging_ms"] = {
            "page1_p50": statistics.median(p1) * 1000,
            "page200_p50": statistics.median(t200) * 1000,
            "ratio_p50": statistics.median(t200) / statistics.median(p1),
            "page1": ms(p1), "page200": ms(t200),
        }  # fmt: skip
        search = {"tenant_id": big, "q": "budget forecast", "page_size": "50"}
        lat = [(await timed(s, url, search))[0] for _ in range(reps)]
        out["search_first_page_ms"] = ms(lat)
        # A rare word (a document number: 1 event in 100,000), served by the search index.
        rare = {"tenant_id": big, "q": "4242", "page_size": "50"}
        lat = [(await timed(s, url, rare))[0] for _ in range(reps)]
        out["search_rare_first_page_ms"] = ms(lat)
        t0 = time.perf_counter()
        rows = 0
        async with s.get(f"{base}/v1/audit/export", params={"tenant_id": big}) as r:
            async for chunk in r.content.iter_chunked(1 << 20):
                rows += chunk.count(b"\n")
        el = time.perf_counter() - t0
        out["export"] = {"rows": rows, "seconds": el, "rows_per_s": rows / el}
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    with bench_servers() as (server, nurl):
        dsn = await fresh_database(server, "bench_query")
        load_s = await load(dsn, args.events)
        index_s = await index(dsn)
        conn = await asyncpg.connect(dsn)
        big, big_n = await conn.fetchrow(
            "SELECT tenant_id, count(*) FROM audit.events GROUP BY 1 ORDER BY 2 DESC LIMIT 1"
        )
        await conn.close()
        # Read latency and raw export speed: no admission limits or export pacing here
        # (the contention scenario measures those defaults against ingestion).
        async with running_service(dsn, nurl, ADMIN, "Q", AUDIT_EXPORT_ROWS_PER_S="0",
                                   AUDIT_HEAVY_READ_CONCURRENCY="0",
                                   AUDIT_HEAVY_READ_PER_KEY="0") as base:  # fmt: skip
            result = await measure(base, big, args.reps)
    result = {"events": args.events, "load_seconds": load_s, "index_seconds": index_s,
              "largest_tenant": big,
              "largest_tenant_rows": big_n, **result}  # fmt: skip
    emit(result, FIGURES)


if __name__ == "__main__":
    asyncio.run(main())
