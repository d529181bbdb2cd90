"""What the *scaling* scenario reads while an arm drains (``benchmarks.scaling``): the
search structure's progress, ``pg_stat_activity`` lock waits, and CPU time by process."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import psutil

from benchmarks.scaling_report import COMPONENTS

_SEARCH_TABLES = """
SELECT c.relname AS name, array_agg(a.attname::text ORDER BY a.attnum) AS columns
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = 'audit' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND c.relname LIKE '%search%'
GROUP BY c.relname ORDER BY c.relname
"""
_QUEUE_WORDS = ("queue", "pending", "backlog", "outbox", "todo")


class SearchProbe:
    """Whether the search structure has caught up with the stored events."""

    def __init__(self, describe: str, sql: str) -> None:
        self.describe, self.sql = describe, sql

    async def caught_up(self, conn: asyncpg.Connection, events: int) -> bool:
        args = (events,) if "$1" in self.sql else ()
        return bool(await conn.fetchval(self.sql, *args))


async def search_probe(conn: asyncpg.Connection, override: str | None) -> SearchProbe | None:
    """The code's search structure behind the pipeline, if its migrations made one: tables
    of schema ``audit`` named ``*search*``. Caught up, by the first that applies:

    1. a per-tenant watermark (a table with ``tenant_id`` and a ``*_seq`` column): it
       reached every chain head's ``last_seq``;
    2. a queue (``*queue*``, ``*pending*``, ...): empty;
    3. tables with an ``id`` column (a row per event): as many rows as events.
    """
    if override:
        return SearchProbe(f"--searchable-sql {override!r}", override)
    rows = await conn.fetch(_SEARCH_TABLES)
    if not rows:
        return None
    names = ", ".join(f"audit.{r['name']}" for r in rows)
    for r in rows:
        seq = [c for c in r["columns"] if c.endswith("_seq")]
        if "tenant_id" in r["columns"] and seq:
            t, col = r["name"], seq[0]
            sql = (f'SELECT NOT EXISTS (SELECT 1 FROM audit.chain_heads h LEFT JOIN audit."{t}"'
                   f' s USING (tenant_id) WHERE h.last_seq > coalesce(s."{col}", 0))')  # fmt: skip
            return SearchProbe(f"{names}: caught up when audit.{t}.{col} reached every "
                               "chain head's last_seq", sql)  # fmt: skip
    queues = [r["name"] for r in rows if any(w in r["name"] for w in _QUEUE_WORDS)]
    if queues:
        sql = " AND ".join(f'NOT EXISTS (SELECT 1 FROM audit."{q}")' for q in queues)
        return SearchProbe(f"{names}: caught up when {', '.join(queues)} empty", f"SELECT {sql}")
    per_event = [r["name"] for r in rows if "id" in r["columns"]]
    if not per_event:
        return None
    sql = " AND ".join(f'(SELECT count(*) FROM audit."{n}") >= $1' for n in per_event)
    return SearchProbe(f"{names}: caught up when {', '.join(per_event)} hold a row per event",
                       f"SELECT {sql}")  # fmt: skip


class LockSampler:
    """Samples ``pg_stat_activity`` of ``databases`` (several: an arm of independent
    pipelines) every ``interval`` s while open."""

    SQL = """
    SELECT coalesce(wait_event_type, 'running') || ':' || coalesce(wait_event, '') AS w,
           count(*) FILTER (WHERE state = 'active') AS active,
           count(*) FILTER (WHERE query LIKE '%SKIP LOCKED%') AS skip
    FROM pg_stat_activity WHERE datname = ANY($1::text[]) AND pid <> pg_backend_pid()
    GROUP BY 1
    """

    def __init__(self, conn: asyncpg.Connection, databases: Sequence[str],
                 interval: float) -> None:  # fmt: skip
        self.conn, self.interval = conn, interval
        self.databases = list(databases)
        self.open = False
        self.samples = 0
        self.waits: Counter[str] = Counter()
        self.skip_locked_seen = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LockSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            rows = await self.conn.fetch(self.SQL, self.databases)
            if self.open:
                self.samples += 1
                for r in rows:
                    if r["active"]:
                        self.waits[r["w"]] += r["active"]
                self.skip_locked_seen += sum(r["skip"] for r in rows)
            due = max(due + self.interval, loop.time())
            await asyncio.sleep(due - loop.time())

    def result(self) -> dict[str, Any]:
        active = sum(self.waits.values())
        lock = sum(n for w, n in self.waits.items() if w.startswith("Lock:"))
        return {"share": lock / active if active else 0.0, "samples": self.samples,
                "active_seen": active, "lock_seen": lock,
                "by_wait": {w: round(n / active, 4) for w, n in self.waits.most_common(8)}
                if active else {}, "skip_locked_queries_seen": self.skip_locked_seen}  # fmt: skip


def nats_process(url: str) -> psutil.Process | None:
    """The local nats-server listening on ``url``'s port (None if not on this host)."""
    port = urlsplit(url.split(",")[0]).port or 4222
    for p in psutil.process_iter(["name"]):
        if not (p.info["name"] or "").startswith("nats-server"):
            continue
        with contextlib.suppress(psutil.Error):
            for c in p.net_connections("tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
                    return p
    return None


class CpuProbe:
    """CPU seconds (user + system) of each process of an arm, by component."""

    def __init__(self, pipeline_pids: Sequence[int], workers: int,
                 postmaster: psutil.Process | None,
                 nats_proc: psutil.Process | None) -> None:  # fmt: skip
        """``pipeline_pids``: the ``auditlog pipeline`` process(es) of the arm, each
        running ``workers`` worker processes."""
        self.pipelines = [psutil.Process(pid) for pid in pipeline_pids]
        # `auditlog pipeline --workers N>1` supervises N worker processes it spawned.
        self.root = "supervisor" if workers > 1 else "workers"
        self.postmaster, self.nats = postmaster, nats_proc

    def _procs(self) -> list[tuple[str, psutil.Process]]:
        out = [("benchmark", psutil.Process())]
        for pipeline in self.pipelines:
            out.append((self.root, pipeline))
            with contextlib.suppress(psutil.Error):
                out += [("workers", p) for p in pipeline.children(recursive=True)]
        if (pm := self.postmaster) is not None:
            with contextlib.suppress(psutil.Error):
                out += [("postgresql", p) for p in [pm, *pm.children(recursive=True)]]
        if self.nats is not None:
            out.append(("nats-server", self.nats))
        return out

    def snapshot(self) -> dict[int, tuple[str, float]]:
        snap = {}
        for group, p in self._procs():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                snap[p.pid] = (group, t.user + t.system)
        return snap

    async def watch_ready(self, ports: set[int], every_s: float = 0.02) -> None:
        """Until cancelled: note each pipeline process's CPU seconds when it first listens
        on one of ``ports`` (its metrics port: imports and set-up done), in
        :attr:`ready`. Worker processes start together and compete for the cores, so
        the first one drains while the others still import; their start-up is not CPU
        per event (see :func:`cpu_split`'s ``ready``)."""
        self.ready: dict[int, float] = {}
        self.port_of: dict[int, int] = {}
        while True:
            for group, p in self._procs():
                if group not in ("workers", "supervisor") or p.pid in self.ready:
                    continue
                with contextlib.suppress(psutil.Error):
                    listening = {c.laddr.port for c in p.net_connections(kind="tcp")
                                 if c.status == psutil.CONN_LISTEN}  # fmt: skip
                    if listening & ports:
                        t = p.cpu_times()
                        self.ready[p.pid] = t.user + t.system
                        self.port_of[p.pid] = min(listening & ports)
            await asyncio.sleep(every_s)


def cpu_split(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
              events: int, ready: dict[int, float] | None = None,
              ) -> tuple[dict[str, float], list[float], float]:  # fmt: skip
    """(µs per event by component with ``total`` of :data:`COMPONENTS`, µs per
    event of each worker process busiest first, CPU seconds of everything). ``workers``
    counts every pipeline process, the supervisor too (also shown apart). A process in
    ``ready`` (CPU seconds when its set-up was done) counts from the later of that and
    ``before``: start-up that overlapped the drain is not CPU per event."""
    by: Counter[str] = Counter()
    per_worker = []
    ready = ready or {}
    for pid, (group, t) in after.items():
        used = t - max(before.get(pid, (group, 0.0))[1], ready.get(pid, 0.0))
        by[group] += used
        if group == "workers" and used > 0.001:
            per_worker.append(round(used / events * 1e6, 1))
    by["workers"] += by.get("supervisor", 0.0)
    out = {k: round(v / events * 1e6, 1) for k, v in by.items()}
    out["total"] = round(sum(out.get(k, 0.0) for k in COMPONENTS), 1)
    return out, sorted(per_worker, reverse=True), sum(by.values())


def host_cpu_seconds() -> float:
    """CPU seconds every process of the host has used (all cores, idle and iowait not)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)


async def stored_by_port(ports: Iterable[int]) -> dict[int, tuple[int, int]]:
    """(events stored, flushes that stored any) of each worker process, from its metrics
    port (``auditlog_events_stored_total``, every source summed, and
    ``auditlog_flush_batch_size_count``); a port that does not answer is left out."""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    wanted = ("auditlog_events_stored_total", "auditlog_flush_batch_size_count")
    out: dict[int, tuple[int, int]] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        for port in ports:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                    text = await r.text()
                sums: Counter[str] = Counter()
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        if sample.name in wanted:
                            sums[sample.name] += sample.value
                out[port] = (int(sums[wanted[0]]), int(sums[wanted[1]]))
    return out


def own_event_cost(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                   ready: dict[int, float], port_of: dict[int, int],
                   stored: dict[int, tuple[int, int]]) -> list[dict[str, Any]]:  # fmt: skip
    """Each worker process's share of the events it stored, its CPU µs per event *it*
    stored (counted as :func:`cpu_split` counts) and its mean flush size, busiest first:
    whether more workers cost more per event because each does more per event, or
    because idle ones spend CPU."""
    out = []
    total = sum(n for n, _ in stored.values()) or 1
    for pid, port in port_of.items():
        if pid not in after or port not in stored:
            continue
        used = after[pid][1] - max(before.get(pid, ("", 0.0))[1], ready.get(pid, 0.0))
        n, flushes = stored[port]
        out.append({"share": round(n / total, 3),
                    "us_per_own_event": round(used / n * 1e6, 1) if n else None,
                    "events_per_flush": round(n / flushes) if flushes else None})  # fmt: skip
    return sorted(out, key=lambda x: -x["share"])


# Lines of a pipeline log that say something went wrong in an arm (a worker that exited
# and was restarted, a flush retried, an internal error), not start-up notices.
_PROBLEM_LEVELS = (" ERROR ", " CRITICAL ", " WARNING ")
_EXPECTED = ("holds owner rights",)  # the benchmark migrates with the server's login


def log_problems(text: str, limit: int = 10) -> list[str]:
    """The first ``limit`` lines of a pipeline log (one arm's part of it) at WARNING or
    above, but the notices every arm prints, each cut to 300 characters. An arm that
    stalled or lost a worker shows why here (``worker 1 (pid ...) exited ...``)."""
    out: list[str] = []
    for line in text.splitlines():
        if any(level in line for level in _PROBLEM_LEVELS) and not any(
            e in line for e in _EXPECTED
        ):
            out.append(line[:300])
            if len(out) >= limit:
                break
    return out
