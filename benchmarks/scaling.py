"""Scenario *scaling*: the same events drained by 1, 2, 4 worker processes (and 1..3
flush slots), by the base commit and by the new code, in one run (issue #26).

    python -m benchmarks.scaling --events 200000 --workers 1,2,4 --slots 1,2,3 \\
        --code base,new --hot-workers 1,2 --repeats 3
    python -m benchmarks.scaling --code new --workers 1,4 --independent 4 --repeats 3
    python -m benchmarks.scaling --code base,new=HEAD,wip=snapshot ...   # three codes
    python -m benchmarks.scaling --quick   # tiny: new code, 1 and 2 workers, 2 independent
    python -m benchmarks.scaling --report benchmarks/results/scaling-<time>.json

Arms: every worker count of ``--workers`` at ``--worker-slots`` flush slots
(AUDIT_FLUSH_CONCURRENCY, default 2), every slot count of ``--slots`` at 1 worker, and
with ``--hot-workers`` the same events all of one tenant; with ``--independent N`` the
control arm of N independent 1-worker pipelines, each with its own database, stream and
N-th of the events (what N worker processes cost on this host with no coordination
between them: the report splits the workers' rise in CPU per event into that part and
the part sharing one stream costs). Each arm of each code gets a
fresh database migrated by that code's own `auditlog migrate`, and a fresh stream (the
AUDIT stream's interest retention deletes what was acked) preloaded with the same events
(~690-byte synthetic events with ids, ``--tenants`` tenants), then ``auditlog pipeline
--workers N`` of that code: `python -m auditlog.cli` with cwd and PYTHONPATH at its tree
(``--code NAME=REF``: a commit is a ``git worktree`` made here and removed afterwards,
``snapshot`` a copy of this checkout taken at the start, ``live`` this checkout; ``base``
defaults to the commit before the chain-head rework, any other name to ``live``). Codes
alternate arm by arm (A/B/A/B), so drift of the host hits each; groups report medians
over ``--repeats``. Targets and the projection are computed for every code but ``base``,
with ``base`` beside.

Measured per arm, from the first delivery:

- events/s until every event is acked (acks follow commits: stored), and until stored and
  searchable: when the code's migrations made tables named ``*search*`` in schema
  ``audit`` (search indexed behind the pipeline), until they caught up
  (``benchmarks.scaling_probes.search_probe``: a per-tenant ``*_seq`` watermark reached
  every chain head, else a queue table is empty, else a row per event;
  ``--searchable-sql`` overrides); without them (the GIN index in the ingest transaction)
  stored is searchable;
- CPU µs per event of each process (psutil): the pipeline processes, this server's
  PostgreSQL processes, its nats-server, this benchmark process (apart); a pipeline
  process counts from the later of the first delivery and the moment it listens on its
  metrics port (worker processes start together and compete for the cores: the first
  drains while the others still import, ~0.5 s of CPU each, which is start-up, not CPU
  per event);
- the lock-wait share: every ``--sample-ms`` (20) ``pg_stat_activity`` of the benchmark
  database; of the active backends seen, the share with ``wait_event_type = 'Lock'``
  (heavyweight locks), summed over samples, while draining.

Writes ``<out>/scaling-<time>.json`` and ``.md`` (the table, the targets and a
projection to ``--project-cores`` cores) and prints the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import nats
import psutil

from benchmarks import scaling_report as report
from benchmarks.common import bench_servers, emit, fast_publish, synthetic_events, tenant_ids
from benchmarks.common import with_ids as ids_for
from benchmarks.scaling_probes import (
    CpuProbe,
    LockSampler,
    SearchProbe,
    cpu_split,
    host_cpu_seconds,
    log_problems,
    nats_process,
    own_event_cost,
    search_probe,
    stored_by_port,
)
from infra.db import with_database
from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
BASE_REF = "55d6f51"  # chain heads locked blocking (INSERT .. ON CONFLICT DO UPDATE)
DB_NAME = "bench_scaling"
FIGURES = {
    "groups.0.events_per_s": "no drain time measured",
    "groups.0.searchable_per_s": "never stored and searchable",
    "groups.0.cpu_us_per_event.workers": "the workers' CPU time was not measured",
    "groups.0.lock_samples": "pg_stat_activity was never sampled while draining",
}

# Run in a code tree (cwd and PYTHONPATH there): that code's own stream set-up, and where
# its modules come from.
PREPARE = """
import asyncio, contextlib, importlib, json, os, sys
import nats
import pipeline.flush
from infra.settings import load_settings
from pipeline.source_nats import ensure_stream

async def main():
    s = load_settings()
    nc = await nats.connect(s.nats_url)
    for name in (s.stream, s.dlq_stream):
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(name)
    await ensure_stream(nc, s)
    await nc.close()
    return s.consumer

consumer = asyncio.run(main())
for name in ("auditlog.cli", "auditlog.runtime", "pipeline.worker", "pipeline.fastpath"):
    with contextlib.suppress(ImportError):
        importlib.import_module(name)
checkout, tree = os.environ["SCALING_CHECKOUT"], os.path.realpath(os.getcwd()) + os.sep
leaks = sorted(n for n, m in list(sys.modules.items())
               if (f := os.path.realpath(getattr(m, "__file__", None) or "/"))
               .startswith(checkout + os.sep) and not f.startswith(tree)
               and not f.startswith(os.path.realpath(sys.prefix) + os.sep))
fast = sys.modules.get("pipeline.fastpath")
print(json.dumps({"flush_module": pipeline.flush.__file__, "consumer": consumer,
                  "leaks": leaks, "fastpath": getattr(fast, "KIND", None)}))
"""
# Put first on an arm's PYTHONPATH after its tree: the venv's editable install of this
# checkout adds a meta-path finder that would serve modules missing from the tree (a
# compiled extension built here only, say) from this checkout; this drops it.
SITECUSTOMIZE = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if "__editable__" not in (getattr(f, "__module__", "") or "")]
"""
NO_SEARCH = "none (stored = searchable: the index is in the ingest transaction)"


@dataclass(frozen=True)
class Tree:
    """One code under test: where it is and what it is."""

    name: str
    path: Path
    describe: str


@dataclass(frozen=True)
class Arm:
    code: str
    workers: int
    slots: int
    hot_tenant: bool
    repeat: int
    # >1: the control arm of that many independent 1-worker pipelines (``workers`` of
    # them), each with its own database and stream and its share of the events.
    pipelines: int = 1


def plan(codes: list[str], workers: list[int], worker_slots: int, slots: list[int],
         hot_workers: list[int], repeats: int,
         independent: list[int] | None = None) -> list[Arm]:  # fmt: skip
    """Every arm, in run order: per repeat, per configuration, the codes in turn. Each n
    of ``independent`` (> 1) adds the control arm of n independent pipelines."""
    configs = [(w, worker_slots, False, 1) for w in workers]
    configs += [(1, s, False, 1) for s in slots if (1, s, False, 1) not in configs]
    configs += [(n, worker_slots, False, n) for n in independent or [] if n > 1]
    configs += [(w, worker_slots, True, 1) for w in hot_workers]
    return [Arm(code, w, s, hot, r, lanes) for r in range(repeats)
            for w, s, hot, lanes in configs for code in codes]  # fmt: skip


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


@contextlib.contextmanager
def code_trees(codes: list[str], refs: dict[str, str | None]):  # type: ignore[no-untyped-def]
    """{code: Tree}. A ref of None is this checkout as it is (live: edits made during the
    run reach the arms started after them); ``snapshot`` a copy of it (tracked and
    untracked files, not ignored ones) taken now; anything else a commit, checked out as
    a detached ``git worktree``. Copies and worktrees are removed on the way out."""
    made: list[Path] = []
    try:
        out = {}
        for code in codes:
            ref = refs.get(code)
            if ref is None:
                out[code] = Tree(code, ROOT, f"this checkout, live: {_describe_checkout()}")
                continue
            path = Path(tempfile.mkdtemp(prefix=f"auditlog-scaling-{code}-")) / "tree"
            if ref == "snapshot":
                files = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard")
                for name in filter(None, files.split("\0")):
                    if (ROOT / name).is_file():
                        (path / name).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(ROOT / name, path / name)
                out[code] = Tree(code, path, f"a copy of this checkout ({_describe_checkout()})")
            else:
                _git("worktree", "add", "--detach", str(path), ref)
                sha = _git("-C", str(path), "rev-parse", "--short", "HEAD")
                out[code] = Tree(code, path, f"commit {sha} (`{ref}`), worktree {path}")
            made.append(path)
            build_extensions(out[code])
        yield out
    finally:
        for path in made:
            with contextlib.suppress(subprocess.CalledProcessError):
                if (path / ".git").is_file():
                    _git("worktree", "remove", "--force", str(path))
            shutil.rmtree(path.parent, ignore_errors=True)


def build_extensions(tree: Tree) -> None:
    """Build a tree's C extensions in place, as installing that code would (``setup.py``;
    a failed build leaves the code on its pure Python path, which the tree reports)."""
    if (tree.path / "setup.py").is_file():
        subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                       cwd=tree.path, capture_output=True, timeout=600)  # fmt: skip


def _describe_checkout() -> str:
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    head = _git("rev-parse", "--short", "HEAD")
    return f"{head}{' with uncommitted changes' if dirty else ''}"


def arm_env(tree: Tree, dsn: str, nurl: str, slots: int, state: Path,
            batch: int, lane: int = 0) -> dict[str, str]:  # fmt: skip
    """The environment of an arm's processes: none of ours AUDIT_*, the tree first.
    ``lane``: which of an arm's independent pipelines (streams and subjects apart)."""
    from auditlog.embedded import free_port

    tag = f"SC{os.getpid()}" + (f"L{lane}" if lane else "")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env.update(PYTHONPATH=f"{tree.path}{os.pathsep}{state / 'site'}", AUDIT_DATABASE_URL=dsn,
               SCALING_CHECKOUT=os.path.realpath(ROOT), AUDIT_NATS_URL=nurl,
               AUDIT_STREAM=f"BENCH_{tag}", AUDIT_SUBJECT=f"bench.{tag}.events",
               AUDIT_DLQ_STREAM=f"BENCH_DLQ_{tag}", AUDIT_DLQ_SUBJECT=f"bench.{tag}.dlq",
               AUDIT_COMMIT_SUBJECT=f"bench.{tag}.committed",
               AUDIT_BATCH_MAX_EVENTS=str(batch), AUDIT_FLUSH_CONCURRENCY=str(slots),
               AUDIT_LOG_LEVEL="WARNING", AUDIT_STATE_DIR=str(state),
               AUDIT_METRICS_PORT=str(free_port()))  # fmt: skip
    return env


def _in_tree(tree: Tree, env: dict[str, str], *args: str) -> str:
    """``python args`` in ``tree`` (cwd and PYTHONPATH); its stdout. Fails loudly."""
    proc = subprocess.run([sys.executable, *args], cwd=tree.path, env=env, text=True,
                          capture_output=True, timeout=300)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{tree.name}: python {' '.join(args)[:60]} exited "
                           f"{proc.returncode}:\n{proc.stderr[-3000:]}")  # fmt: skip
    return proc.stdout


def _inside(file: str, folder: Path) -> bool:
    return os.path.realpath(file).startswith(os.path.realpath(folder) + os.sep)


async def prepare(server: str, tree: Tree, env: dict[str, str],
                  database: str = DB_NAME) -> dict[str, Any]:  # fmt: skip
    """A fresh ``database`` migrated by ``tree``'s code, and a fresh stream made by it.

    Returns:
        what the tree's own process imported (``flush_module``) and its ``consumer``.
    """
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await admin.close()
    _in_tree(tree, env, "-m", "auditlog.cli", "migrate")
    info: dict[str, Any] = json.loads(_in_tree(tree, env, "-c", PREPARE).strip().splitlines()[-1])
    if not _inside(info["flush_module"], tree.path) or info["leaks"]:
        raise RuntimeError(f"{tree.name}: pipeline.flush came from {info['flush_module']}, "
                           f"and {info['leaks']} from {ROOT}, not from {tree.path}")  # fmt: skip
    return info


def check_imports(pipeline_pid: int, tree: Tree) -> None:
    """Every pipeline process runs with cwd and PYTHONPATH at ``tree`` (so it imports
    the modules :func:`prepare` saw, not the editable install's)."""
    root = psutil.Process(pipeline_pid)
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            cwd, path = p.cwd(), p.environ().get("PYTHONPATH", "").split(os.pathsep)[0]
            if os.path.realpath(cwd) != os.path.realpath(tree.path) or path != str(tree.path):
                where = (cwd, path)
                raise RuntimeError(f"pipeline process {p.pid} runs with cwd/PYTHONPATH "
                                   f"{where}, not {tree.path}")  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the pipeline (it forwards to its workers), SIGKILL the tree after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        print("WARNING: pipeline did not stop within 30 s of SIGTERM; killed",
              file=sys.stderr, flush=True)  # fmt: skip
        with contextlib.suppress(psutil.Error):
            for p in psutil.Process(proc.pid).children(recursive=True):
                p.kill()
        proc.kill()
        proc.wait(10)


@dataclass
class Servers:
    server: str  # a DSN of the server (database ``postgres``)
    nurl: str
    sampler_conn: asyncpg.Connection
    postmaster: psutil.Process | None
    nats_proc: psutil.Process | None


async def wait_drained(js: Any, stream: str, consumer: str, total: int,
                       proc: subprocess.Popen[bytes], on_first: Any,
                       timeout: float) -> tuple[float, float]:  # fmt: skip
    """(first delivery, all acked) by polling the consumer every 25 ms; ``on_first()`` at
    the first delivery."""
    t_first = None
    deadline = time.perf_counter() + timeout
    report_at = time.perf_counter() + 5
    while True:
        info = await js.consumer_info(stream, consumer)
        now = time.perf_counter()
        if t_first is None and info.num_pending < total:
            t_first = now
            on_first()
        if t_first is not None and info.num_pending == 0 and info.num_ack_pending == 0:
            return t_first, now
        if proc.poll() is not None:
            raise RuntimeError(f"pipeline exited early ({proc.returncode})")
        if now > deadline:
            raise TimeoutError(f"not drained after {timeout:.0f} s: {info.num_pending} "
                               f"pending, {info.num_ack_pending} unacked")  # fmt: skip
        if now >= report_at:
            done = total - info.num_pending - info.num_ack_pending
            # Pending (not yet delivered) and unacked (held by a worker) apart, and
            # redeliveries: a stall shows where the missing messages are.
            print(f"    drained {done:,}/{total:,} (pending {info.num_pending:,}, unacked "
                  f"{info.num_ack_pending:,}, redelivered {info.num_redelivered or 0:,})",
                  file=sys.stderr, flush=True)  # fmt: skip
            report_at += 5
        await asyncio.sleep(0.025)


async def wait_searchable(conn: asyncpg.Connection, probe: SearchProbe | None, events: int,
                          timeout: float) -> float | None:  # fmt: skip
    """When ``probe`` says caught up (now if there is none); None after ``timeout``."""
    deadline = time.perf_counter() + timeout
    while probe is not None and not await probe.caught_up(conn, events):
        if time.perf_counter() > deadline:
            return None
        await asyncio.sleep(0.05)
    return time.perf_counter()


@dataclass
class Lane:
    """One pipeline of an arm: its database, environment, stream and process."""

    database: str
    dsn: str
    env: dict[str, str]
    info: dict[str, Any]
    payloads: list[bytes]
    conn: Any = None
    probe: SearchProbe | None = None
    proc: Any = None
    log: Any = None
    log_path: Path | None = None
    log_from: int = 0


async def run_arm(arm: Arm, tree: Tree, srv: Servers, payloads: list[bytes],
                  opts: argparse.Namespace, state: Path) -> dict[str, Any]:  # fmt: skip
    """One arm: fresh database(s) and stream(s), preload, drain, measure. An arm of n
    independent pipelines gives each its own database and stream and the events
    ``payloads[k::n]``, starts them together and measures them as one."""
    n = arm.pipelines
    lanes: list[Lane] = []
    for k in range(n):
        db = DB_NAME if n == 1 else f"{DB_NAME}_{k}"
        dsn = with_database(srv.server, db)
        env = arm_env(tree, dsn, srv.nurl, arm.slots, state, opts.batch, lane=k)
        lanes.append(Lane(db, dsn, env, await prepare(srv.server, tree, env, db), payloads[k::n]))
    total = len(payloads)
    publish_s = 0.0
    for lane in lanes:
        publish_s += len(lane.payloads) / await fast_publish(
            srv.nurl, lane.env["AUDIT_SUBJECT"], lane.payloads
        )
    nc = await nats.connect(srv.nurl)
    workers_each = 1 if n > 1 else arm.workers
    try:
        for k, lane in enumerate(lanes):
            lane.conn = await asyncpg.connect(lane.dsn)
            lane.probe = await search_probe(lane.conn, opts.searchable_sql)
            with contextlib.suppress(asyncpg.PostgresError):
                # the preload's dirty pages are not this arm's
                await lane.conn.execute("CHECKPOINT")
            name = f"{arm.code}-{arm.workers}w" + (f"-independent{k}" if n > 1 else "")
            lane.log_path = state / f"pipeline-{name}.log"
            lane.log_from = lane.log_path.stat().st_size if lane.log_path.exists() else 0
        for lane in lanes:
            lane.log = open(lane.log_path, "ab")  # type: ignore[arg-type]  # noqa: SIM115
            cmd = [sys.executable, "-m", "auditlog.cli", "pipeline", "--workers",
                   str(workers_each)]  # fmt: skip
            lane.proc = subprocess.Popen(cmd, cwd=tree.path, env=lane.env, stdout=lane.log,
                                         stderr=lane.log)  # fmt: skip
        cpu = CpuProbe([lane.proc.pid for lane in lanes], workers_each, srv.postmaster,
                       srv.nats_proc)  # fmt: skip
        ports = {int(lane.env["AUDIT_METRICS_PORT"]) + i for lane in lanes
                 for i in range(workers_each)}  # fmt: skip
        watcher = asyncio.create_task(cpu.watch_ready(ports))
        sampler = LockSampler(srv.sampler_conn, [lane.database for lane in lanes],
                              opts.sample_ms / 1000)  # fmt: skip
        marks: dict[str, Any] = {}

        def first() -> None:
            if "cpu0" not in marks:  # (the first delivery of any lane)
                marks["cpu0"], marks["host0"] = cpu.snapshot(), host_cpu_seconds()
                sampler.open = True

        try:
            async with sampler:
                spans = await asyncio.gather(*[
                    wait_drained(nc.jetstream(), lane.env["AUDIT_STREAM"],
                                 lane.info["consumer"], len(lane.payloads), lane.proc, first,
                                 120 + total / 200)
                    for lane in lanes])  # fmt: skip
                sampler.open = False
            t0, t_stored = min(a for a, _ in spans), max(b for _, b in spans)
            for lane in lanes:
                check_imports(lane.proc.pid, tree)
            t_search: float | None = t_stored
            for lane in lanes:
                t = await wait_searchable(lane.conn, lane.probe, len(lane.payloads),
                                          60 + 2 * (t_stored - t0))  # fmt: skip
                t_search = None if t is None or t_search is None else max(t_search, t)
            cpu1, host1, t_cpu = cpu.snapshot(), host_cpu_seconds(), time.perf_counter()
            stored = await stored_by_port(cpu.port_of.values())
        finally:
            watcher.cancel()
            for lane in lanes:
                stop(lane.proc)
                lane.log.close()
        problems: list[str] = []
        rows = chained = 0
        for lane in lanes:
            assert lane.log_path is not None
            with lane.log_path.open("rb") as f:
                f.seek(lane.log_from)
                problems += log_problems(f.read().decode("utf-8", "replace"))
            r, c = await lane.conn.fetchrow(
                "SELECT (SELECT count(*) FROM audit.events),"
                " (SELECT coalesce(sum(last_seq), 0) FROM audit.chain_heads)")  # fmt: skip
            rows, chained = rows + r, chained + int(c)
            with contextlib.suppress(Exception):
                await nc.jetstream().delete_stream(lane.env["AUDIT_STREAM"])
    finally:
        await nc.close()
        for lane in lanes:
            if lane.conn is not None:
                await lane.conn.close()
    split, per_worker, cpu_s = cpu_split(marks["cpu0"], cpu1, total, cpu.ready)
    info, probe = lanes[0].info, lanes[0].probe
    return {
        **{k: getattr(arm, k) for k in ("code", "workers", "slots", "hot_tenant", "repeat",
                                        "pipelines")},
        "events": total, "rows": rows, "chained": chained, "publish_per_s": total / publish_s,
        "seconds": t_stored - t0, "events_per_s": total / (t_stored - t0),
        "searchable_seconds": None if t_search is None else t_search - t0,
        "searchable_per_s": None if t_search is None else total / (t_search - t0),
        "lock": sampler.result(), "cpu_us_per_event": split, "worker_process_us": per_worker,
        "worker_own": own_event_cost(marks["cpu0"], cpu1, cpu.ready, cpu.port_of, stored),
        "cores_busy": cpu_s / (t_cpu - t0),
        "other_cores_busy": max(0.0, (host1 - marks["host0"] - cpu_s) / (t_cpu - t0)),
        "flush_module": info["flush_module"], "fastpath": info["fastpath"],
        "search": probe.describe if probe else None, "log_problems": problems,
    }  # fmt: skip


async def open_servers(server: str, nurl: str) -> Servers:
    conn = await asyncpg.connect(server)
    postmaster = None
    with contextlib.suppress(psutil.Error):
        postmaster = psutil.Process(
            psutil.Process(await conn.fetchval("SELECT pg_backend_pid()")).ppid()
        )
    return Servers(server, nurl, conn, postmaster, nats_process(nurl))


async def machine(srv: Servers) -> dict[str, Any]:
    nc = await nats.connect(srv.nurl)
    version = nc.connected_server_version
    await nc.close()
    pg = await srv.sampler_conn.fetchval("SHOW server_version")
    return {"cores": os.cpu_count(), "memory_mib": psutil.virtual_memory().total >> 20,
            "python": platform.python_version(), "postgresql": f"PostgreSQL {pg}",
            "nats_server": f"{version.major}.{version.minor}.{version.patch}",
            "external_servers": bool(os.environ.get("AUDIT_BENCH_DATABASE_URL")),
            "postgresql_cpu_measured": srv.postmaster is not None,
            "nats_cpu_measured": srv.nats_proc is not None}  # fmt: skip


def _progress(arm: Arm, out: dict[str, Any]) -> None:
    cpu = out["cpu_us_per_event"]
    lanes = f" in {arm.pipelines} independent pipelines" if arm.pipelines > 1 else ""
    print(f"  {arm.code} {'hot ' if arm.hot_tenant else ''}{arm.workers}w/{arm.slots}s{lanes} "
          f"#{arm.repeat + 1}: {out['events_per_s']:,.0f}/s stored, "
          f"{out['searchable_per_s'] or 0:,.0f}/s searchable, lock {out['lock']['share']:.1%}, "
          f"CPU µs/event workers {cpu.get('workers')} pg {cpu.get('postgresql')} "
          f"nats {cpu.get('nats-server')}; per worker (share of events, µs per own event, "
          f"events per flush) {[tuple(w.values()) for w in out.get('worker_own', [])]}",
          file=sys.stderr, flush=True)  # fmt: skip
    for line in out.get("log_problems", []):  # why an arm stalled or lost a worker
        print(f"    pipeline log: {line}", file=sys.stderr, flush=True)


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    arms = plan(list(opts.code), opts.workers, opts.worker_slots, opts.slots, opts.hot_workers,
                opts.repeats, opts.independent)  # fmt: skip
    events = {False: ids_for(list(synthetic_events(opts.events, tenant_ids(opts.tenants))))[0]}
    if opts.hot_workers:
        events[True] = ids_for(list(synthetic_events(opts.events, tenant_ids(1))))[0]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    state = Path(tempfile.mkdtemp(prefix="auditlog-scaling-state-"))
    (state / "site").mkdir()
    (state / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    results: list[dict[str, Any]] = []
    try:
        with code_trees(list(opts.code), opts.code) as trees, bench_servers() as (server, nurl):
            srv = await open_servers(server, nurl)
            try:
                mach = await machine(srv)
                seen: dict[str, dict[str, Any]] = {}
                for i, arm in enumerate(arms):
                    print(f"  arm {i + 1}/{len(arms)}", file=sys.stderr, flush=True)
                    out = await run_arm(arm, trees[arm.code], srv, events[arm.hot_tenant],
                                        opts, state)  # fmt: skip
                    _progress(arm, out)
                    results.append(out)
                    seen.setdefault(arm.code, {"describe": trees[arm.code].describe,
                                               "flush_module": out["flush_module"],
                                               "fastpath": out["fastpath"],
                                               "search": out["search"] or NO_SEARCH})  # fmt: skip
            finally:
                await srv.sampler_conn.close()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return summarise({
        "started": started, "command": "python -m benchmarks.scaling " + " ".join(sys.argv[1:]),
        "machine": mach, "trees": seen, "arms": results,
        "config": {"events": opts.events, "tenants": opts.tenants, "batch": opts.batch,
                   "repeats": opts.repeats, "worker_slots": opts.worker_slots,
                   "sample_ms": opts.sample_ms, "project_cores": opts.project_cores,
                   "avg_event_bytes": round(sum(map(len, events[False])) / opts.events)},
    })  # fmt: skip


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with its groups (medians), and targets and a projection for each code but
    ``base`` (re-computable from the arms)."""
    cfg = result["config"]
    gs = report.groups(result["arms"])
    slots, cores = cfg["worker_slots"], cfg["project_cores"]
    codes = [c for c in dict.fromkeys(a["code"] for a in result["arms"]) if c != "base"]
    return {**result, "groups": gs,
            "targets": [t for c in codes for t in report.targets(gs, slots, c)],
            "projections": {c: report.projection(gs, slots, cores, c) for c in codes},
            "contention": {c: found for c in [*codes, "base"]
                           if (found := report.contention(gs, slots, c))},
            "independence": {c: found for c in [*codes, "base"]
                             if (found := report.independence(gs, slots, c))}}  # fmt: skip


def _codes(text: str) -> dict[str, str | None]:
    """``base,new=HEAD,wip=snapshot`` -> {name: ref}: ``base`` defaults to
    :data:`BASE_REF`, any other name to this checkout (None, also for ``live``)."""
    out: dict[str, str | None] = {}
    for item in filter(None, text.split(",")):
        name, _, ref = item.partition("=")
        out[name] = (ref or (BASE_REF if name == "base" else None)) if ref != "live" else None
    return out


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def options(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add = ap.add_argument
    add("--events", type=int, default=200_000)
    add("--tenants", type=int, default=1000)
    add("--workers", type=_ints, default=[1, 2, 4], help="e.g. 1,2,4")
    add("--worker-slots", type=int, default=2, help="AUDIT_FLUSH_CONCURRENCY of those arms")
    add("--slots", type=_ints, default=[1, 2, 3], help="flush slots swept with 1 worker")
    add("--hot-workers", type=_ints, default=[], help="one tenant sends everything: e.g. 1,2")
    add("--independent", type=_ints, default=[],
        help="control arms: n independent 1-worker pipelines, each its own database, "
             "stream and n-th of the events (what n worker processes cost on this host "
             "with no coordination between them): e.g. 4")  # fmt: skip
    add("--code", type=_codes, default=_codes("base,new"),
        help="codes to compare, NAME[=REF] each: a commit, 'snapshot' (a copy of this "
             f"checkout taken at the start) or 'live' (this checkout as it is); default "
             f"base={BASE_REF},new=live")  # fmt: skip
    add("--repeats", type=int, default=1)
    add("--batch", type=int, default=Settings().batch_max_events, help="AUDIT_BATCH_MAX_EVENTS")
    add("--sample-ms", type=float, default=20)
    add("--searchable-sql", help="SQL answering true once search caught up ($1: events)")
    add("--project-cores", type=int, default=16)
    add("--out", type=Path, default=ROOT / "benchmarks" / "results")
    add("--quick", action="store_true", help="tiny: 3,000 events, new code, workers 1,2")
    add("--report", type=Path, help="re-render a saved JSON result")
    opts = ap.parse_args(argv)
    if opts.quick:
        opts.events, opts.workers, opts.slots, opts.code = 3000, [1, 2], [2], _codes("new")
        opts.hot_workers, opts.repeats, opts.worker_slots = [], 1, 2
        opts.independent = [2]
    return opts


def main() -> None:
    opts = options()
    if opts.report:
        print(report.markdown(summarise(json.loads(opts.report.read_text()))))
        return
    result = asyncio.run(run(opts))
    opts.out.mkdir(parents=True, exist_ok=True)
    stamp = result["started"].replace(":", "")
    (opts.out / f"scaling-{stamp}.json").write_text(json.dumps(result, indent=2))
    text = report.markdown(result)
    (opts.out / f"scaling-{stamp}.md").write_text(text)
    print(text, file=sys.stderr)
    print(f"results in {opts.out}/scaling-{stamp}.json and .md", file=sys.stderr)
    emit(result, FIGURES)


if __name__ == "__main__":
    main()
