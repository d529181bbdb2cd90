"""Scenario *naive*: the consumer people write by hand, for scale.

nats-py ``pull_subscribe().fetch()``, ``json.loads`` per message, one ``INSERT`` per event
into the same events table, a commit per fetched batch, then an ack per message.

    python -m benchmarks.naive --events 30000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import nats

from benchmarks.common import (
    bench_servers,
    bench_settings,
    emit,
    fast_publish,
    fresh_database,
    synthetic_events,
    tenant_ids,
)
from pipeline.source_nats import ensure_stream

INSERT = """
INSERT INTO audit.events (tenant_id, occurred_at, id, seq, received_at, action, category,
    severity, actor_type, actor_id, actor_display_name, resource_type, resource_id,
    resource_display_name, related_resources, description, metadata, ip, user_agent,
    request_id, hash)
VALUES ($1, $2, $3, $4, $2, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::jsonb, $15,
    $16::json, $17, $18, $19, $20)
"""


async def naive(server: str, nurl: str, payloads: list[bytes], batch: int) -> dict[str, float]:
    """Drain a preloaded stream the hand-written way; events/s."""
    dsn = await fresh_database(server, "bench_naive")
    settings = bench_settings(dsn, nurl, "NAIVE")
    nc = await nats.connect(nurl)
    js = nc.jetstream()
    with contextlib.suppress(Exception):
        await js.delete_stream(settings.stream)
    await ensure_stream(nc, settings)
    await fast_publish(nurl, settings.subject, payloads)
    sub = await js.pull_subscribe(settings.subject, durable="naive", stream=settings.stream)
    conn = await asyncpg.connect(dsn)
    await conn.execute("SELECT audit.ensure_partition(now())")
    seqs: dict[str, int] = {}
    done = 0
    t0 = time.perf_counter()
    while done < len(payloads):
        try:
            msgs = await sub.fetch(batch, timeout=2)
        except nats.errors.TimeoutError:
            continue
        now = datetime.now(UTC)
        async with conn.transaction():
            for m in msgs:
                e = json.loads(m.data)
                t = e["tenant_id"]
                seqs[t] = seqs.get(t, 0) + 1
                pr = e.get("primary_resource") or {}
                await conn.execute(
                    INSERT, t, now, uuid.uuid4(), seqs[t], e["action"], e["category"],
                    e["severity"], e["actor"]["type"], e["actor"]["id"],
                    e["actor"].get("display_name", ""), pr.get("type", ""), pr.get("id", ""),
                    pr.get("display_name", ""), json.dumps(e.get("related_resources", [])),
                    e.get("description", ""), json.dumps(e.get("metadata", {})),
                    e.get("ip", ""), e.get("user_agent", ""), e.get("request_id", ""),
                    hashlib.sha256(m.data).digest(),
                )  # fmt: skip
        for m in msgs:
            await m.ack()
        done += len(msgs)
    elapsed = time.perf_counter() - t0
    await conn.close()
    await nc.close()
    return {"events": done, "seconds": elapsed, "events_per_s": done / elapsed}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args()
    payloads = list(synthetic_events(args.events, tenant_ids(1000)))
    with bench_servers() as (server, nurl):
        result = await naive(server, nurl, payloads, args.batch)
    emit({"naive": result}, {"naive.events_per_s": "no events drained"})


if __name__ == "__main__":
    asyncio.run(main())
