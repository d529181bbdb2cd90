"""Scenario *peers*: the same preloaded JetStream stream drained into the same PostgreSQL
by this service and by two peers, one after the other in one run, with the ratios.

    make peers-setup                                   # once: .venv-peers (mq-bridge, Pathway)
    python -m benchmarks.peers --events 500000 --tenants 1000

- **ours**: `auditlog pipeline --workers 1` (validation, dedupe, chain, search index,
  claims), from first delivery until nothing is pending or unacked (``benchmarks.drain``).
- Everyone writes ``--batch`` events per batch (default: the service's flush size,
  ``AUDIT_BATCH_MAX_EVENTS``, 20,000): ours' flushes, mq-bridge's ``batch_size``,
  Pathway's ``max_batch_size``.
- **mq-bridge** and **Pathway** (``benchmarks/peer_runner.py`` in ``.venv-peers``), each
  twice:

  - *raw*: each message stored as it is into a plain table of its own (``payload``/``data``
    plus an ``id bigserial`` this benchmark adds to count rows cheaply);
  - *like for like*: the event's columns (``audit.events``' but ``seq`` and ``hash``) into
    a table like ours: partitioned by month on ``occurred_at``, primary key ``(tenant_id,
    occurred_at, id)``, an index on ``(tenant_id, id)`` (ours: the claims) and the same
    full-text GIN index (``audit.search_doc``), kept in the insert (searchable at commit;
    ours is timed until its indexer caught up: ``searchable_per_s``). Plus ``n bigserial``
    to count rows (and Pathway's own ``time``/``diff`` columns);

  each timed from the first delivery (any consumer of the stream has delivered a
  message, as for ours) until all N are stored (the count is confirmed with
  ``count(*)``). Pathway reads a whole minibatch before it writes, so timing it from its
  first stored row would leave the reading out.

CPU time per event is split by process (PostgreSQL, nats-server, the consumer). The peers
need their own virtualenv, never the service's (``make test`` does not need them); when
it is missing the scenario prints a line saying so and skips them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import nats

from benchmarks.common import (
    bench_servers,
    cpu_per_item,
    cpu_seconds_by_component,
    emit,
    fast_publish,
    fresh_database,
    synthetic_events,
    tenant_ids,
    with_ids,
    worker_rss_kib,
)
from benchmarks.drain import drain
from infra.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("mq-bridge", "pathway")
TABLES = {
    "mq-bridge": "CREATE TABLE peer_rows (id bigserial, payload bytea)",
    "pathway": "CREATE TABLE peer_rows (id bigserial, data text, time bigint, diff smallint)",
}
COUNTERS = {"raw": "peer_rows_id_seq", "like": "peer_rows_n_seq"}
# The like-for-like table: ours (sql/001, sql/009) but seq/hash, with the same indexes.
LIKE_TABLE = """
CREATE TABLE peer_rows (
    tenant_id text NOT NULL, occurred_at timestamptz NOT NULL DEFAULT now(),
    {id_col} {id_type} NOT NULL, received_at timestamptz NOT NULL DEFAULT now(),
    action text NOT NULL, category text NOT NULL, severity text NOT NULL,
    actor_type text NOT NULL, actor_id text NOT NULL,
    actor_display_name text NOT NULL DEFAULT '', resource_type text NOT NULL DEFAULT '',
    resource_id text NOT NULL DEFAULT '', resource_display_name text NOT NULL DEFAULT '',
    related_resources jsonb NOT NULL DEFAULT '[]', description text NOT NULL DEFAULT '',
    metadata json NOT NULL DEFAULT '{{}}', changes json, ip text NOT NULL DEFAULT '',
    user_agent text NOT NULL DEFAULT '', request_id text NOT NULL DEFAULT '',
    trace_id text NOT NULL DEFAULT '', n bigserial, {extra}
    PRIMARY KEY (tenant_id, occurred_at, {id_col})
) PARTITION BY RANGE (occurred_at);
CREATE TABLE peer_rows_m PARTITION OF peer_rows
    FOR VALUES FROM (date_trunc('month', now())) TO (date_trunc('month', now()) + '2 months');
CREATE INDEX peer_rows_tenant_id ON peer_rows (tenant_id, {id_col});
CREATE INDEX peer_rows_search ON peer_rows USING gin (audit.search_doc(tenant_id, action,
    description, actor_display_name, resource_display_name)) WITH (fastupdate = on);
"""
# (event id column, its type, extra columns): Pathway names no column ``id`` (its own row
# key) and writes strings, and adds its time/diff columns.
LIKE_EXTRA = {
    "mq-bridge": ("id", "uuid", ""),
    "pathway": ("event_id", "text", "time bigint, diff smallint,"),
}


def peers_python() -> Path | None:
    """The peers' interpreter: AUDIT_PEERS_PYTHON, else .venv-peers; None if missing."""
    path = Path(os.environ.get("AUDIT_PEERS_PYTHON") or ROOT / ".venv-peers" / "bin" / "python")
    return path if path.exists() else None


async def drain_peer(peer: str, python: Path, server: str, nurl: str, payloads: list[bytes],
                     mode: str, batch: int) -> dict[str, object]:  # fmt: skip
    """One peer draining ``payloads`` (preloaded into a fresh stream) into a fresh table
    (``mode``: ``raw`` or ``like``, see the module docstring), ``batch`` rows per write."""
    tag = f"P{os.getpid()}{peer.replace('-', '')}"
    dsn = await fresh_database(server, f"bench_peer_{peer.replace('-', '_')}")
    stream, subject = f"BENCH_{tag}", f"bench.{tag}.events"
    nc = await nats.connect(nurl)
    js = nc.jetstream()
    with contextlib.suppress(Exception):
        await js.delete_stream(stream)
    await js.add_stream(name=stream, subjects=[subject])
    pub_rate = await fast_publish(nurl, subject, payloads)
    conn = await asyncpg.connect(dsn)
    if mode == "like":
        id_col, id_type, extra = LIKE_EXTRA[peer]
        await conn.execute(LIKE_TABLE.format(id_col=id_col, id_type=id_type, extra=extra))
    else:
        await conn.execute(TABLES[peer])
    total = len(payloads)
    proc = subprocess.Popen(
        [str(python), str(ROOT / "benchmarks" / "peer_runner.py"), peer, "--nats", nurl,
         "--stream", stream, "--subject", subject, "--dsn", dsn, "--table", "peer_rows",
         "--mode", mode, "--batch", str(batch)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    t_first = t_end = None
    cpu_first: dict[str, float] = {}
    cpu_end: dict[str, float] = {}
    peak_rss = 0
    report = time.perf_counter() + 5
    try:
        deadline = time.perf_counter() + 600
        while time.perf_counter() < deadline:
            now = time.perf_counter()
            last = await conn.fetchval(
                f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {COUNTERS[mode]}"
            )
            if t_first is None and (last or await _delivered(js, stream)):
                t_first, cpu_first = now, cpu_seconds_by_component()
            if last >= total and await conn.fetchval("SELECT count(*) FROM peer_rows") >= total:
                t_end, cpu_end = time.perf_counter(), cpu_seconds_by_component()
                break
            if now >= report:
                print(f"  {peer}: stored {last:,}/{total:,}", file=sys.stderr, flush=True)
                report += 5
            peak_rss = max(peak_rss, worker_rss_kib(proc.pid))
            if proc.poll() is not None:
                err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                raise RuntimeError(f"{peer} exited early: {err}")
            await asyncio.sleep(0.05)
        rows = int(await conn.fetchval("SELECT count(*) FROM peer_rows"))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        await conn.close()
        await nc.close()
    if t_first is None or t_end is None:
        raise RuntimeError(f"{peer} did not store {total} rows in 10 minutes ({rows} stored)")
    return {"events": total, "rows": rows, "seconds": t_end - t_first,
            "events_per_s": total / (t_end - t_first), "publish_per_s": pub_rate,
            "peak_rss_mib": peak_rss / 1024,
            "cpu_us_per_event": cpu_per_item(cpu_first, cpu_end, total)}  # fmt: skip


async def _delivered(js: object, stream: str) -> bool:
    """True once any consumer of ``stream`` has been delivered a message."""
    with contextlib.suppress(Exception):
        for info in await js.consumers_info(stream):  # type: ignore[attr-defined]
            if info.delivered and info.delivered.stream_seq:
                return True
    return False


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--only", default="ours," + ",".join(PEERS))
    ap.add_argument(
        "--modes",
        default="raw,like",
        help="peer runs: raw (bytes as they are), like (ours' table, see above)",
    )
    ap.add_argument(
        "--batch",
        type=int,
        default=Settings().batch_max_events,
        help="events per write for everyone: ours' flush (AUDIT_BATCH_MAX_EVENTS), "
        "mq-bridge's batch_size, Pathway's max_batch_size (default: the service's)",
    )
    args = ap.parse_args()
    modes = args.modes.split(",")
    wanted = args.only.split(",")
    # The same events for everyone, each with its id (peers store them as they are).
    payloads = with_ids(list(synthetic_events(args.events, tenant_ids(args.tenants))))[0]
    python = peers_python()
    out: dict[str, object] = {"avg_event_bytes": round(sum(map(len, payloads)) / len(payloads)),
                              "batch": args.batch}  # fmt: skip
    if python is None and any(p in wanted for p in PEERS):
        print("peers skipped: no .venv-peers (run `make peers-setup`, or set "
              "AUDIT_PEERS_PYTHON)", file=sys.stderr)  # fmt: skip
        out["skipped"] = "no .venv-peers"
    with bench_servers() as (server, nurl):
        if "ours" in wanted:
            out["ours"] = await drain(server, nurl, payloads, 1, args.batch)
            out["ours"].pop("series", None)  # type: ignore[attr-defined]
        for peer in PEERS:
            if peer in wanted and python is not None:
                if "raw" in modes:
                    out[peer] = await drain_peer(peer, python, server, nurl, payloads,
                                                 "raw", args.batch)  # fmt: skip
                if "like" in modes:
                    out[f"{peer}_like"] = await drain_peer(
                        peer, python, server, nurl, payloads, "like", args.batch
                    )
    ours = out.get("ours")
    if isinstance(ours, dict):
        # Raw: ours until stored; like for like: ours until stored and searchable.
        searchable = ours.get("searchable_per_s") or ours["events_per_s"]
        for peer in PEERS:
            for key, rate in ((peer, ours["events_per_s"]), (f"{peer}_like", searchable)):
                theirs = out.get(key)
                if isinstance(theirs, dict):
                    out[f"ours_over_{key}"] = rate / theirs["events_per_s"]
    ran = [k for k in ("ours", *PEERS, *(f"{p}_like" for p in PEERS)) if k in out]
    emit(out, {f"{k}.events_per_s": "no drain time measured" for k in ran})


if __name__ == "__main__":
    asyncio.run(main())
