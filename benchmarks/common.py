"""Shared benchmark plumbing: servers, synthetic events, a fast JetStream publisher."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import nats

from infra.db import ensure_database, with_database
from infra.migrate import migrate
from infra.settings import Settings
from pipeline.synthetic import synthetic_events, tenant_ids

__all__ = ["synthetic_events", "tenant_ids"]


def msg_id_headers(payload: bytes) -> dict[str, str]:
    """Headers as the README's producers set them: ``Nats-Msg-Id`` of ``<tenant>:<key>``
    (here a digest of the payload: an exact duplicate gets the same id, as a producer's
    retry does, and JetStream drops it)."""
    tenant = json.loads(payload).get("tenant_id")
    return {"Nats-Msg-Id": f"{tenant}:{hashlib.blake2b(payload, digest_size=12).hexdigest()}"}


async def fast_publish(
    url: str,
    subject: str,
    payloads: list[bytes],
    inflight: int = 4000,
    headers: Callable[[bytes], dict[str, str]] | None = None,
) -> float:
    """Publish with a reply inbox and bounded outstanding acks; returns msgs/s. With
    ``headers``, each message gets ``headers(payload)`` (made before the clock starts)."""
    per_msg = [headers(p) for p in payloads] if headers else None
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    inbox = nc.new_inbox()
    done = 0
    room = asyncio.Semaphore(inflight)
    finished = asyncio.Event()
    total = len(payloads)

    async def on_ack(msg: nats.aio.msg.Msg) -> None:
        nonlocal done
        done += 1
        room.release()
        if done == total:
            finished.set()

    await nc.subscribe(inbox + ".*", cb=on_ack)
    loop = asyncio.get_running_loop()
    start = loop.time()
    report = start + 5
    for i, p in enumerate(payloads):
        await room.acquire()
        await nc.publish(subject, p, reply=f"{inbox}.{i}",
                         headers=per_msg[i] if per_msg else None)  # fmt: skip
        if i % 10_000 == 0 and loop.time() >= report:
            print(f"  published {i:,}/{total:,}", file=sys.stderr, flush=True)
            report += 5
    await asyncio.wait_for(finished.wait(), 300)
    rate = total / (loop.time() - start)
    await nc.close()
    return rate


@contextlib.contextmanager
def bench_servers() -> Iterator[tuple[str, str]]:
    """(database server DSN, NATS URL): external via AUDIT_BENCH_* env, else embedded
    under a temporary directory that is removed afterwards."""
    db = os.environ.get("AUDIT_BENCH_DATABASE_URL")
    nurl = os.environ.get("AUDIT_BENCH_NATS_URL")
    from auditlog.embedded import EmbeddedNats, EmbeddedPostgres

    root = Path(tempfile.mkdtemp(prefix="auditlog-bench-"))
    pg = n = None
    try:
        if not db:
            pg = EmbeddedPostgres(root)
            pg.start()
            db = pg.dsn("postgres")
            with contextlib.suppress(OSError, ValueError):
                _SCOPE.add(int((pg.data / "postmaster.pid").read_text().split()[0]))
        if not nurl:
            n = EmbeddedNats(root)
            nurl = n.start()
            if n.pid:
                _SCOPE.add(n.pid)
        if pg and n:  # only our own servers' and children's CPU (a shared host runs others')
            _SCOPE.add(os.getpid())
        yield db, nurl
    finally:
        _SCOPE.clear()
        if n:
            n.stop()
        if pg:
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)


async def fresh_database(server_dsn: str, name: str) -> str:
    """Drop and recreate database ``name`` and migrate it; return its DSN."""
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    dsn = with_database(server_dsn, name)
    await ensure_database(dsn)
    await migrate(dsn)
    return dsn


def latency_summary(samples_ms: list[float]) -> dict[str, Any]:
    """p50/p90/p99/max of ``samples_ms`` and its 1st..99th percentiles (for CDF charts)."""
    if not samples_ms:
        return {}
    s = sorted(samples_ms)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]

    return {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": s[-1], "n": len(s),
            "cdf": [pct(q) for q in range(1, 100)]}  # fmt: skip


def with_ids(payloads: list[bytes]) -> tuple[list[bytes], dict[uuid.UUID, int]]:
    """Payloads with a known event id each, and id → index."""
    out, index = [], {}
    for i, p in enumerate(payloads):
        doc = json.loads(p)
        eid = uuid.UUID(int=i + 1, version=4)
        doc["id"] = str(eid)
        index[eid] = i
        out.append(json.dumps(doc, separators=(",", ":")).encode())
    return out, index


async def stored_rows(dsn: str) -> int:
    """Rows in audit.events of ``dsn``."""
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM audit.events"))
    finally:
        await conn.close()


def bench_settings(db: str, nurl: str, tag: str, **kw: object) -> Settings:
    """Settings with bench-specific stream names."""
    return Settings(database_url=db, nats_url=nurl, stream=f"BENCH_{tag}",
                    subject=f"bench.{tag}.events", dlq_stream=f"BENCH_DLQ_{tag}",
                    dlq_subject=f"bench.{tag}.dlq", commit_subject=f"bench.{tag}.committed",
                    **kw)  # type: ignore[arg-type]  # fmt: skip


STOP_GRACE_S = 30  # a service with nothing in flight stops in a second or two


@contextlib.asynccontextmanager
async def running_service(dsn: str, nats_url: str, admin_token: str, tag: str,
                          split: bool = False, **extra_env: str) -> AsyncIterator[str]:  # fmt: skip
    """`auditlog run` on free ports against ``dsn``/``nats_url`` (plus ``extra_env``);
    yields its base URL once /readyz answers 200, and stops it afterwards (SIGTERM, then
    SIGKILL with a warning line after :data:`STOP_GRACE_S`).

    ``split``: `auditlog api` and `auditlog pipeline` in two processes instead."""
    import signal
    import subprocess
    import sys

    import aiohttp

    from auditlog.embedded import free_port

    port = free_port()
    env = dict(os.environ, AUDIT_DATABASE_URL=dsn, AUDIT_NATS_URL=nats_url,
               AUDIT_ADMIN_TOKEN=admin_token, AUDIT_HTTP_PORT=str(port),
               AUDIT_GRPC_PORT=str(free_port()), AUDIT_LOG_LEVEL="WARNING",
               AUDIT_STREAM=f"BENCH{tag}", AUDIT_SUBJECT=f"bench{tag}.events",
               **extra_env)  # fmt: skip
    procs = [subprocess.Popen([sys.executable, "-m", "auditlog.cli", "api" if split else "run"],
                              env=env)]  # fmt: skip
    if split:
        worker_env = dict(env, AUDIT_METRICS_PORT=str(free_port()))
        procs.append(subprocess.Popen([sys.executable, "-m", "auditlog.cli", "pipeline"],
                                      env=worker_env))  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(300):
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"{base}/readyz") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.2)
        yield base
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                # The figures are in hand; a service that will not stop is killed so the
                # scenario can still report them, and the line says it happened.
                what = " ".join(proc.args[-2:])  # type: ignore[arg-type]
                print(f"WARNING: {what} did not stop within {STOP_GRACE_S} s of SIGTERM; "
                      "killed", file=sys.stderr, flush=True)  # fmt: skip
                proc.kill()
                proc.wait(10)


def start_pipeline(settings: Settings, workers: int,
                   **extra_env: str) -> tuple[subprocess.Popen[bytes], str]:  # fmt: skip
    """`auditlog pipeline --workers N` configured like ``settings`` (plus ``extra_env``),
    logging warnings only.

    Returns:
        (the process, the first worker's /readyz URL).
    """
    from auditlog.embedded import free_port

    port = free_port()
    env = dict(os.environ, AUDIT_LOG_LEVEL="WARNING", AUDIT_METRICS_PORT=str(port), **extra_env)
    for f in ("database_url", "nats_url", "stream", "subject", "dlq_stream", "dlq_subject",
              "commit_subject", "batch_max_events", "batch_max_latency_ms"):  # fmt: skip
        env["AUDIT_" + f.upper()] = str(getattr(settings, f))
    cmd = [sys.executable, "-m", "auditlog.cli", "pipeline", "--workers", str(workers)]
    return subprocess.Popen(cmd, env=env), f"http://127.0.0.1:{port}/readyz"


async def wait_ready(url: str, timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers 200."""
    import aiohttp

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as s:
        while loop.time() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def worker_rss_kib(pid: int, field: str = "VmHWM") -> int:
    """Peak RSS (``VmHWM``, KiB) of the worker, the process or its largest child; with
    ``field="VmRSS"`` its resident size now."""
    best = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    best = max(best, int(line.split()[1]))
        except OSError:
            continue
    return best


# With embedded servers: the pids whose process trees are this benchmark's (its own, the
# postmaster's, nats-server's). Empty: every process on the host counts (external servers).
_SCOPE: set[int] = set()


def _in_scope(pid: int, parents: dict[int, int]) -> bool:
    for _ in range(8):  # postgres backends are children, workers grandchildren
        if pid in _SCOPE:
            return True
        pid = parents.get(pid, 0)
        if pid <= 1:
            return False
    return False


def cpu_seconds_by_component() -> dict[str, float]:
    """CPU seconds (user + system) used so far by live processes, grouped as
    ``postgresql``, ``nats-server``, ``tansu`` (the Kafka scenario's broker), ``pipeline``
    (`auditlog pipeline` workers), ``service`` (`auditlog run`: API + worker, or `auditlog
    api`) and ``load`` (this benchmark process). With embedded servers only the processes
    of this benchmark count (other servers on a shared host are not ours)."""
    tick = os.sysconf("SC_CLK_TCK")
    own = os.times()
    out = {"postgresql": 0.0, "nats-server": 0.0, "tansu": 0.0, "pipeline": 0.0,
           "service": 0.0, "peer": 0.0, "load": own.user + own.system}  # fmt: skip
    procs: list[tuple[int, str, list[str], bytes]] = []
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(d.name)] = int(fields[1])
        procs.append((int(d.name), stat[stat.index("(") + 1 : stat.rindex(")")], fields, cmd))
    for pid, comm, fields, cmd in procs:
        if _SCOPE and not _in_scope(pid, parents):
            continue
        cpu = (int(fields[11]) + int(fields[12])) / tick
        if comm == "postgres":
            out["postgresql"] += cpu
        elif comm.startswith("nats-server"):
            out["nats-server"] += cpu
        elif comm.startswith("tansu"):
            out["tansu"] += cpu
        elif b"peer_runner.py" in cmd:
            out["peer"] += cpu
        elif b"auditlog.cli pipeline" in cmd:
            out["pipeline"] += cpu
        elif b"auditlog.cli run" in cmd or b"auditlog.cli api" in cmd:
            out["service"] += cpu
    return out


def cpu_per_item(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """CPU µs per item of each component between two :func:`cpu_seconds_by_component`."""
    return {k: round((after[k] - before[k]) / max(n, 1) * 1e6, 1) for k in after
            if after[k] - before[k] > 0}  # fmt: skip


async def _fetch(dsn: str, sql: str) -> list[asyncpg.Record]:
    """The rows of one query on a connection of its own."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


async def wal_counters(dsn: str) -> dict[str, int]:
    """The server's WAL counters (``pg_stat_wal``: records, full-page images, bytes), for
    :func:`wal_per_item`. Server-wide: meaningful on a benchmark's own server."""
    (row,) = await _fetch(dsn, "SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal")
    return {"records": int(row[0]), "fpi": int(row[1]), "bytes": int(row[2])}


def wal_per_item(before: dict[str, int], after: dict[str, int], n: int) -> dict[str, float]:
    """WAL written per item between two :func:`wal_counters` (bytes, records, full-page
    images): where PostgreSQL's time per event goes after the rows themselves."""
    return {k: round((after[k] - before[k]) / max(n, 1), 2) for k in after}


# Bytes on disk of the audit schema's tables, grouped: the heap of each (partitions
# summed) and its indexes.
_DISK_SQL = """
SELECT coalesce(parent.relname, c.relname) AS name,
       sum(pg_relation_size(c.oid)) AS heap, sum(pg_indexes_size(c.oid)) AS indexes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'audit'
LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
LEFT JOIN pg_class parent ON parent.oid = i.inhparent
WHERE c.relkind = 'r'
GROUP BY 1
"""


async def disk_per_item(dsn: str, n: int, tables: tuple[str, ...] = (
        "events", "event_ids", "search", "chain_heads")) -> dict[str, float]:  # fmt: skip
    """Bytes on disk per item of each of ``tables`` (schema ``audit``; partitions summed),
    ``<table>`` for its rows and ``<table>_indexes`` for its indexes: what each event
    makes PostgreSQL allocate, write and later read."""
    out: dict[str, float] = {}
    for r in await _fetch(dsn, _DISK_SQL):
        if r["name"] in tables:
            out[r["name"]] = round(int(r["heap"]) / max(n, 1), 1)
            out[r["name"] + "_indexes"] = round(int(r["indexes"]) / max(n, 1), 1)
    return out


# Exit status of a scenario that ran but could not measure a figure it exists for
# (its JSON is still printed, with the reasons under "not_measured").
NOT_MEASURED_EXIT = 3


def not_measured(result: Mapping[str, Any], figures: Mapping[str, str]) -> list[str]:
    """One line per headline figure of ``result`` that could not be measured.

    Args:
        result: a scenario's output.
        figures: dotted path into ``result`` (``"steady.latency_ms.p50"``; a number picks
            a list item) -> what its absence means. A figure counts as measured when the
            path resolves to a finite number > 0 or a non-empty collection: zero, None,
            NaN and empty are what an unmeasured figure looks like.
    """
    out = []
    for path, why in figures.items():
        value: Any = result
        for part in path.split("."):
            if isinstance(value, Mapping):
                value = value.get(part)
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                value = None
        if isinstance(value, bool) or not (
            (isinstance(value, int | float) and math.isfinite(value) and value > 0)
            or (isinstance(value, list | dict | str) and len(value) > 0)
        ):
            out.append(f"{path} = {value!r}: {why}")
    return out


def emit(result: dict[str, Any], figures: Mapping[str, str]) -> None:
    """Print ``result`` as JSON; when a figure of ``figures`` (see :func:`not_measured`)
    is missing, also a ``NOT MEASURED:`` line each on stderr and the reasons under
    ``"not_measured"``, then exit with :data:`NOT_MEASURED_EXIT`, so that neither a person
    nor ``benchmarks.run`` mistakes a zero for a measurement."""
    problems = not_measured(result, figures)
    if problems:
        result = {**result, "not_measured": problems}
    print(json.dumps(result, indent=2), flush=True)
    for line in problems:
        print(f"NOT MEASURED: {line}", file=sys.stderr, flush=True)
    if problems:
        raise SystemExit(NOT_MEASURED_EXIT)


def slope_per_minute(series: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``(seconds, value)`` samples, in value per minute (None for
    fewer than two distinct times)."""
    n = len(series)
    if n < 2:
        return None
    mt = sum(t for t, _ in series) / n
    mv = sum(v for _, v in series) / n
    var = sum((t - mt) ** 2 for t, _ in series)
    if var == 0:
        return None
    return 60 * sum((t - mt) * (v - mv) for t, v in series) / var
