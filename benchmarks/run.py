"""Benchmark runner: every scenario in its own subprocess; one JSON result, a Markdown
report with targets (met, or missed by how much) and PNG charts.

    python -m benchmarks.run            # full: drain 1,000,000 (1 and 2 workers), naive,
                                        # steady, write, query over 5,000,000 events
    python -m benchmarks.run --quick    # the same scenarios, small: about two minutes
    python -m benchmarks.run --only drain,steady

Each run records the machine (cores, memory, Python, PostgreSQL, nats-server) and writes
``benchmarks/results/<time>.json``, ``<time>.md`` and charts ``<time>-*.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import charts
from benchmarks.common import NOT_MEASURED_EXIT
from benchmarks.write import TOPOLOGIES

RESULTS = Path(__file__).resolve().parent / "results"

# Scenario name -> (module, full args, quick args).
SCENARIOS: dict[str, tuple[str, list[str], list[str]]] = {
    "drain_1_worker": ("drain", ["--events", "1000000", "--workers", "1"],
                       ["--events", "60000", "--workers", "1"]),
    "drain_2_workers": ("drain", ["--events", "1000000", "--workers", "2", "--skip-ceiling"],
                        ["--events", "60000", "--workers", "2", "--skip-ceiling"]),
    # The README's producers: each event published with a Nats-Msg-Id header.
    "drain_msg_id": ("drain", ["--events", "1000000", "--msg-id", "--skip-ceiling"],
                     ["--events", "60000", "--msg-id", "--skip-ceiling"]),
    "drain_kafka": ("drain", ["--events", "1000000", "--source", "kafka", "--skip-ceiling"],
                    ["--events", "60000", "--source", "kafka", "--skip-ceiling"]),
    "naive": ("naive", ["--events", "100000"], ["--events", "10000"]),
    "peers": ("peers", ["--events", "500000"], ["--events", "30000"]),
    "steady": ("steady", ["--rate", "5000", "--seconds", "30"],
               ["--rate", "3000", "--seconds", "8"]),
    "write": ("write", ["--seconds", "10", "--batch-events", "100000"],
              ["--seconds", "2", "--batch-events", "10000"]),
    "query": ("query", ["--events", "5000000", "--reps", "200"],
              ["--events", "200000", "--reps", "50"]),
    "verify_bundle": ("verify_bundle", ["--events", "1000000"],
                      ["--events", "100000", "--rounds", "1"]),
}  # fmt: skip


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "unknown"


def machine() -> dict[str, object]:
    """Facts about this machine, recorded with every result."""
    from auditlog.embedded import nats_server_binary, postgres_bin_dir

    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "memory_mib": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "postgresql": _version([str(postgres_bin_dir() / "postgres"), "--version"]),
        "nats_server": _version([nats_server_binary(), "--version"]),
        "external_servers": bool(os.environ.get("AUDIT_BENCH_DATABASE_URL")),
    }


def scenario(module: str, *args: str) -> dict[str, Any]:
    """Run ``python -m benchmarks.<module> args`` (progress on stderr); parse its JSON.

    A scenario that exits non-zero comes back with ``not_measured``: the figures it says
    it could not measure, else a line with its exit status.
    """
    print(f"--> {module} {' '.join(args)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args],
                          stdout=subprocess.PIPE, text=True)  # fmt: skip
    print(f"    {module} took {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    out = proc.stdout
    try:
        result: dict[str, Any] = json.loads(out[out.index("{") :])
    except ValueError:
        result = {}
    if proc.returncode != 0 and not result.get("not_measured"):
        result["not_measured"] = [f"benchmarks.{module} exited with status "
                                  f"{proc.returncode} (its stderr is above)"]  # fmt: skip
    return result


class Check:
    """One target: ``value`` against ``goal`` (``at_least`` or at most)."""

    def __init__(self, what: str, value: float, goal: float, at_least: bool, unit: str,
                 fmt: str = "{:,.0f}", unjudged: str = "") -> None:  # fmt: skip
        self.what, self.value, self.goal, self.at_least = what, value, goal, at_least
        self.unit, self.fmt = unit, fmt
        self.unjudged = unjudged  # why this measure cannot be held to its target

    @property
    def met(self) -> bool:
        return self.value >= self.goal if self.at_least else self.value <= self.goal

    def row(self) -> str:
        """A Markdown table row: measure, value, target, verdict (with the shortfall)."""
        v, g = self.fmt.format(self.value), self.fmt.format(self.goal)
        if self.unjudged:
            verdict = f"not judged: {self.unjudged}"
        elif self.met:
            verdict = "met"
        elif self.at_least:
            verdict = f"**missed**: {self.value / self.goal:.0%} of target"
        else:
            verdict = f"**missed**: {self.value / self.goal:.1f} x the limit"
        sign = ">=" if self.at_least else "<="
        return f"| {self.what} | {v} {self.unit} | {sign} {g} {self.unit} | {verdict} |"


def checks(runs: dict[str, Any]) -> list[Check]:
    """Every target of the benchmark issue that this run measured."""
    out: list[Check] = []
    drains = [runs[k]["drain"] for k in ("drain_1_worker", "drain_2_workers") if k in runs]
    if drains:
        best = max(d["events_per_s"] for d in drains)
        out.append(Check("drain (best of 1 and 2 workers)", best, 30_000, True, "events/s"))
        if "ceiling_per_s" in runs.get("drain_1_worker", {}):
            ratio = best / runs["drain_1_worker"]["ceiling_per_s"]
            out.append(Check("drain / ceiling (same run)", ratio, 0.7, True, "x", "{:.2f}"))
        one = runs.get("drain_1_worker", {})
        worker = one.get("drain", {}).get("cpu_us_per_event", {})
        if "pipeline" in worker:
            out.append(Check("worker CPU per event (1-worker drain)", worker["pipeline"], 10,
                             False, "µs", "{:.1f}"))  # fmt: skip
        searchable = one.get("drain", {}).get("cpu_us_per_event_searchable", {})
        if "pipeline" in searchable:  # #28: worker + PostgreSQL (search included) + NATS
            total = sum(searchable.get(k, 0) for k in ("pipeline", "postgresql", "nats-server"))
            out.append(Check("total CPU per event, until stored and searchable", total, 45,
                             False, "µs", "{:.1f}"))  # fmt: skip
        if "searchable_over_ceiling" in one:
            out.append(Check("drain / ceiling, both until stored and searchable",
                             one["searchable_over_ceiling"], 0.7, True, "x", "{:.2f}"))  # fmt: skip
        if "naive" in runs:
            ratio = best / runs["naive"]["naive"]["events_per_s"]
            out.append(Check("drain / naive (same run)", ratio, 3.0, True, "x", "{:.1f}"))
    rss = [d["peak_rss_mib"] for d in drains]
    if "steady" in runs:
        rss.append(runs["steady"]["steady"]["peak_rss_mib"])
    if rss:
        out.append(Check("pipeline worker peak RSS (drain, steady)", max(rss), 400, False, "MiB"))
    peers = runs.get("peers", {})
    rivals = [peers[k]["events_per_s"] for k in ("mq-bridge", "pathway")
              if isinstance(peers.get(k), dict)]  # fmt: skip
    like = [peers[k]["events_per_s"] for k in ("mq-bridge_like", "pathway_like")
            if isinstance(peers.get(k), dict)]  # fmt: skip
    if "ours" in peers and like:  # ours until stored and searchable, as the peers' index is
        ours = peers["ours"].get("searchable_per_s") or peers["ours"]["events_per_s"]
        out.append(Check("ours / best like-for-like peer (same run)", ours / max(like), 1.0,
                         True, "x", "{:.2f}"))  # fmt: skip
    if "ours" in peers and rivals:
        label = "ours / best raw-bytes peer (same run)" if like else "ours / best peer (same run)"
        out.append(Check(label, peers["ours"]["events_per_s"] / max(rivals),
                         0.5 if like else 1.0, True, "x", "{:.2f}"))  # fmt: skip
    if "write" in runs:
        w = runs["write"]
        for label, t in (("", w), (" (api + pipeline processes)", w.get("split"))):
            if not t:
                continue
            top = max(t["sync"], key=lambda r: r["writers"])
            n = top["writers"]
            out.append(Check(f"sync write p99, {n} writers{label}", top["p99_ms"], 30, False,
                             "ms", "{:.1f}"))  # fmt: skip
            out.append(Check(f"batch writes after commit{label}", t["batch"]["events_per_s"],
                             20_000, True, "events/s"))  # fmt: skip
    if "verify_bundle" in runs:
        v = runs["verify_bundle"]["verify_bundle"]
        out.append(Check("offline bundle verification", v["median_events_per_s"], 200_000,
                         True, "events/s"))  # fmt: skip
    if "query" in runs:
        q = runs["query"]
        out += [
            Check("query first page p99", q["first_page_ms"]["p99"], 15, False, "ms", "{:.1f}"),
            Check("page 200 / page 1 (p50)", q["deep_paging_ms"]["ratio_p50"], 1.5, False, "x",
                  "{:.2f}"),
            Check("text search first page p99", q["search_first_page_ms"]["p99"], 100, False,
                  "ms", "{:.1f}"),
            Check("export NDJSON", q["export"]["rows_per_s"], 50_000, True, "rows/s",
                  unjudged="" if q["export"]["rows"] >= 100_000 else
                  f"{q['export']['rows']:,} rows, start-up dominates (the full run exports "
                  "~500,000)"),
        ]  # fmt: skip
    return out


def _ingest(runs: dict[str, Any]) -> list[str]:
    """The ingest table: ceiling, naive, drains, with ratios and CPU split."""
    if not ("drain_1_worker" in runs or "naive" in runs):
        return []
    lines: list[str] = []
    lines += ["", "## Ingest", "",
              "| scenario | events/s | / ceiling | / naive | peak RSS "
              "| CPU µs/event: PostgreSQL / broker (NATS or tansu) / worker |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    ceiling = runs.get("drain_1_worker", {}).get("ceiling_per_s")
    naive = runs["naive"]["naive"]["events_per_s"] if "naive" in runs else None

    def ratio(x: float, base: float | None) -> str:
        return f"{x / base:.2f}" if base else ""

    if ceiling:
        lines.append(
            f"| ceiling (COPY only) | {ceiling:,.0f} | 1.00 | {ratio(ceiling, naive)} | | |"
        )
    if naive:
        lines.append(f"| naive (fetch + INSERT per event) | {naive:,.0f} | "
                     f"{ratio(naive, ceiling)} | 1.00 | | |")  # fmt: skip
    for name in ("drain_1_worker", "drain_2_workers", "drain_msg_id", "drain_kafka"):
        if name not in runs or "drain" not in runs[name]:
            continue
        d = runs[name]["drain"]
        what = (f"{name.replace('_', ' ')} ({d['events']:,} msgs, "
                f"{d['duplicates_in_input']} dup, "
                f"{d['invalid_in_input']} invalid)")  # fmt: skip
        rate = d["events_per_s"]
        cpu = d.get("cpu_us_per_event", {})
        broker = "tansu" if d.get("source") == "kafka" else "nats-server"
        split = (
            " / ".join(f"{cpu.get(k, 0):.0f}" for k in ("postgresql", broker, "pipeline"))
            if cpu
            else ""
        )
        rss = f"{d['peak_rss_mib']:.0f} MiB"
        lines.append(f"| {what} | {rate:,.0f} | {ratio(rate, ceiling)} | "
                     f"{ratio(rate, naive)} | {rss} | {split} |")  # fmt: skip
    return lines


def _peers(runs: dict[str, Any]) -> list[str]:
    """Ours and the peers draining one preloaded stream, with the ratios."""
    p = runs.get("peers")
    if not p or "ours" not in p:
        return []
    ours = p["ours"]["events_per_s"]
    lines = ["", "## Peers (same stream, same PostgreSQL, one after the other)", "",
             "| system | rows/s | ours / it | CPU µs/event: PostgreSQL / nats-server / "
             "consumer |", "|---|---|---|---|"]  # fmt: skip
    searchable = p["ours"].get("searchable_per_s")
    rows = [("ours (validate, dedupe, chain, index)", "ours", ours),
            ("mq-bridge", "mq-bridge", ours), ("Pathway", "pathway", ours)]  # fmt: skip
    if searchable:  # like for like: ours until searchable against the peers' indexed tables
        rows += [("ours, until stored and searchable", "ours", searchable),
                 ("mq-bridge, like for like", "mq-bridge_like", searchable),
                 ("Pathway, like for like", "pathway_like", searchable)]  # fmt: skip
    for name, key, mine in rows:
        d = p.get(key)
        if not isinstance(d, dict):
            continue
        rate = searchable if name.startswith("ours, until") else d["events_per_s"]
        cpu = d.get("cpu_us_per_event_searchable" if rate == searchable and key == "ours"
                    else "cpu_us_per_event", {})  # fmt: skip
        consumer = cpu.get("pipeline", 0) + cpu.get("peer", 0)
        split = f"{cpu.get('postgresql', 0):.0f} / {cpu.get('nats-server', 0):.0f} / {consumer:.0f}"
        lines.append(f"| {name} | {rate:,.0f} | {mine / rate:.2f} | {split} |")  # fmt: skip
    if p.get("skipped"):
        lines.append(f"\nPeers skipped: {p['skipped']} (`make peers-setup`).")
    return lines


def sizing(cpu: dict[str, float], cores: int) -> dict[str, float]:
    """What the measured CPU per event says about bigger machines (pure arithmetic).

    Args:
        cpu: µs of CPU per event by process (``postgresql``, ``nats-server``, ``pipeline``)
            from one drain.
        cores: cores of the machine it was measured on.

    Returns:
        ``per_core``: events/s each added core carries when the whole path scales
        (1e6 / total µs); ``per_worker``: the most one worker process (one Python thread)
        takes (1e6 / worker µs); ``here``: the CPU bound on this machine; ``pg_cores_at``:
        cores PostgreSQL alone needs at a given rate, per 10,000 events/s.
    """
    w, p, n = (cpu.get(k, 0.0) for k in ("pipeline", "postgresql", "nats-server"))
    total = w + p + n
    if total <= 0 or w <= 0:
        return {}
    return {"per_core": 1e6 / total, "per_worker": 1e6 / w, "here": cores * 1e6 / total,
            "pg_cores_per_10k": p * 10_000 / 1e6}  # fmt: skip


def _sizing(runs: dict[str, Any], cores: int) -> list[str]:
    """Scaling: drain with 1 and 2 worker processes and what the CPU split predicts."""
    one = runs.get("drain_1_worker", {}).get("drain")
    if not one or not one.get("cpu_us_per_event"):
        return []
    cpu = one["cpu_us_per_event"]
    s = sizing(cpu, cores)
    if not s:
        return []
    lines = ["", "## Sizing (from the 1-worker drain's CPU per event)", ""]
    two = runs.get("drain_2_workers", {}).get("drain")
    rates = f"drain with 1 worker {one['events_per_s']:,.0f} events/s"
    if two:
        rates += (f", with 2 workers {two['events_per_s']:,.0f} "
                  f"({two['events_per_s'] / one['events_per_s']:.2f} x)")  # fmt: skip
    total = sum(cpu.get(k, 0) for k in ("pipeline", "postgresql", "nats-server"))
    lines += [
        f"- Measured here ({cores} cores): {rates}.",
        f"- One event costs {total:.0f} µs of CPU (worker {cpu.get('pipeline', 0):.0f}, PostgreSQL "
        f"{cpu.get('postgresql', 0):.0f}, nats-server {cpu.get('nats-server', 0):.0f}): "
        f"each added core carries about {s['per_core']:,.0f} events/s while every part scales; "
        f"this machine's CPU bound is {s['here']:,.0f} events/s.",
        f"- One worker process (one Python thread) takes at most about {s['per_worker']:,.0f} "
        f"events/s: add a worker process per that much load (`auditlog pipeline --workers N`).",
        f"- PostgreSQL needs about {s['pg_cores_per_10k']:.2f} cores per 10,000 events/s; it "
        f"becomes the limit when the cores it gets fall below that share (per-tenant chain "
        f"locks serialise one tenant's batches, so one hot tenant does not scale with cores).",
    ]  # fmt: skip
    return lines


def _steady(runs: dict[str, Any]) -> list[str]:
    """The steady offered-load row."""
    if "steady" not in runs:
        return []
    lines: list[str] = []
    s = runs["steady"]["steady"]
    lat = s["latency_ms"]
    lines += ["", "## Steady offered load (1 worker)", "",
              "| offered | achieved | end-to-end p50 | p90 | p99 | max | max lag | peak RSS |",
              "|---|---|---|---|---|---|---|---|",
              f"| {s['offered_per_s']:,}/s | {s['achieved_per_s']:,.0f}/s | "
              f"{lat.get('p50', 0):.1f} ms | {lat.get('p90', 0):.1f} ms | "
              f"{lat.get('p99', 0):.1f} ms | {lat.get('max', 0):.0f} ms | {s['max_lag']:,} | "
              f"{s['peak_rss_mib']:.0f} MiB |"]  # fmt: skip
    return lines


def _writes(runs: dict[str, Any]) -> list[str]:
    """The write-API tables and batch figures, one per topology measured."""
    if "write" not in runs:
        return []
    lines: list[str] = []
    w = runs["write"]
    for t, one_process in ((w, True), (w.get("split"), False)):
        if t:
            lines += _write_topology(t, one_process)
    return lines


def _write_topology(t: dict[str, Any], one_process: bool) -> list[str]:
    where = t.get("topology", TOPOLOGIES["run"])
    lines = ["", f"## Writes over HTTP ({where})", "",
             "| writers | writes/s | p50 | p99 | CPU µs/write: API / worker / PostgreSQL / "
             "NATS / load generator |", "|---|---|---|---|---|"]  # fmt: skip
    for r in t["sync"]:
        cpu = r.get("cpu_us_per_write", {})
        parts = ("service", "pipeline", "postgresql", "nats-server", "load")
        split = " / ".join(f"{cpu.get(k, 0):.0f}" for k in parts)
        lines.append(f"| {r['writers']} | {r['per_s']:,.0f} | {r['p50_ms']:.1f} ms | "
                     f"{r['p99_ms']:.1f} ms | {split if cpu else ''} |")  # fmt: skip
    b = t["batch"]
    lines += ["", f"Batch writes: {b['events']:,} events in batches of {b['batch']:,}: "
              f"{b['events_per_s']:,.0f} events/s answered after commit"]  # fmt: skip
    if "batch_durable" in t:
        lines[-1] += (
            f"; {t['batch_durable']['events_per_s']:,.0f} events/s with "
            "`wait=false` (answered once durable in JetStream)"
        )
    lines[-1] += "."
    if one_process:
        lines.append("(One process: the API column includes the worker's CPU.)")
    return lines


def _query(runs: dict[str, Any]) -> list[str]:
    """The query table and export rate."""
    if "query" not in runs:
        return []
    lines: list[str] = []
    q = runs["query"]
    fp, dp, sp, ex = (q["first_page_ms"], q["deep_paging_ms"], q["search_first_page_ms"],
                      q["export"])  # fmt: skip
    lines += ["", f"## Query ({q['events']:,} events; largest tenant "
              f"{q['largest_tenant_rows']:,} rows)", "",
              "| measure | p50 | p99 |", "|---|---|---|",
              f"| first page: tenant + 24 h + severity + category | {fp['p50']:.1f} ms | "
              f"{fp['p99']:.1f} ms |",
              f"| page 1 (tenant only) | {dp['page1']['p50']:.1f} ms | "
              f"{dp['page1']['p99']:.1f} ms |",
              f"| page 200 by tokens | {dp['page200']['p50']:.1f} ms | "
              f"{dp['page200']['p99']:.1f} ms |",
              f"| text search first page | {sp['p50']:.1f} ms | {sp['p99']:.1f} ms |",
              "", f"Export NDJSON: {ex['rows']:,} rows in {ex['seconds']:.1f} s = "
              f"{ex['rows_per_s']:,.0f} rows/s."]  # fmt: skip
    return lines


def _not_measured(result: dict[str, Any]) -> list[str]:
    """A line per figure a scenario could not measure (those scenarios are left out of
    every table: a zero there would read as a measurement)."""
    failed = result.get("not_measured") or {}
    if not failed:
        return []
    lines = ["## Not measured", "",
             f"{len(failed)} scenario(s) could not measure what they exist for and are left "
             "out of the tables below (the run exits with a non-zero status):", ""]  # fmt: skip
    for name, why in failed.items():
        lines += [f"- **{name}**: {line}" for line in why]
    return [*lines, ""]


def report(result: dict[str, Any], pngs: dict[str, str]) -> str:
    """The Markdown report of one run."""
    runs = result["runs"]
    m = result["machine"]
    lines = [f"# Benchmark run {result['started']}{' (quick)' if result['quick'] else ''}", "",
             f"Machine: {m['cores']} cores, {m['memory_mib']:,} MiB, Python {m['python']}, "
             f"{m['postgresql']}, {m['nats_server']}, {m['platform']}"
             f"{', external servers' if m['external_servers'] else ', embedded servers'}.",
             "", f"Command: `{result['command']}`", ""]  # fmt: skip
    lines += _not_measured(result)
    lines += ["## Targets", "", "| measure | result | target | verdict |", "|---|---|---|---|"]
    lines += [c.row() for c in checks(runs)]
    for section in (_ingest, _peers, _steady, _writes, _query):
        lines += section(runs)
    lines += _sizing(runs, int(m.get("cores") or 1))
    for title, png in pngs.items():
        lines += ["", f"![{title}]({png})"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes: about two minutes")
    ap.add_argument("--only", default="", help=f"comma list of: {', '.join(SCENARIOS)}")
    ap.add_argument("--report", metavar="JSON", help="re-render the report of a saved result")
    args = ap.parse_args()
    if args.report:
        saved = Path(args.report)
        result = json.loads(saved.read_text())
        stamp = saved.stem
        text = report(result, charts.draw(result["runs"], saved.parent, stamp))
        saved.with_suffix(".md").write_text(text)
        print(text)
        return
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    runs: dict[str, Any] = {}
    unmeasured: dict[str, Any] = {}  # partial outputs of scenarios that missed a figure
    t0 = time.perf_counter()
    for name in names:
        module, full, quick = SCENARIOS[name]
        out = scenario(module, *(quick if args.quick else full))
        (unmeasured if out.get("not_measured") else runs)[name] = out
    result = {"started": started, "seconds": round(time.perf_counter() - t0),
              "command": "python -m benchmarks.run " + " ".join(sys.argv[1:]),
              "machine": machine(), "quick": args.quick, "runs": runs,
              "not_measured": {k: v["not_measured"] for k, v in unmeasured.items()},
              "unmeasured_runs": unmeasured,
              "targets": [{"what": c.what, "value": c.value, "goal": c.goal,
                           "met": None if c.unjudged else c.met}
                          for c in checks(runs)]}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    stamp = started.replace(":", "")
    (RESULTS / f"{stamp}.json").write_text(json.dumps(result, indent=2))
    pngs = charts.draw(runs, RESULTS, stamp)
    text = report(result, pngs)
    (RESULTS / f"{stamp}.md").write_text(text)
    print(text)
    print(f"results in {RESULTS} ({result['seconds']} s)", file=sys.stderr)
    for name, why in result["not_measured"].items():
        for line in why:
            print(f"NOT MEASURED: {name}: {line}", file=sys.stderr)
    if unmeasured:
        raise SystemExit(NOT_MEASURED_EXIT)


if __name__ == "__main__":
    main()
