"""Benchmark runner: scenarios in subprocesses, one JSON result and a Markdown report.

    python -m benchmarks.run            # drain 1,000,000 events (1 and 2 workers), naive
    python -m benchmarks.run --quick    # about two minutes: 100,000 / 20,000 events

Each run records the machine (cores, memory, Python, PostgreSQL, nats-server) and writes
``benchmarks/results/<time>.json``, ``.md`` and a throughput-over-time chart (PNG).
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

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_DRAIN = 30_000


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "unknown"


def machine() -> dict[str, object]:
    """Facts about this machine, recorded with every result."""
    from pipeline.embedded import nats_server_binary, postgres_bin_dir

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
    }


def scenario(module: str, *args: str) -> dict[str, Any]:
    """Run ``python -m benchmarks.<module> args`` (progress on stderr); parse its JSON."""
    print(f"--> {module} {' '.join(args)}", file=sys.stderr, flush=True)
    out = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args], check=True,
                         stdout=subprocess.PIPE, text=True).stdout  # fmt: skip
    return json.loads(out[out.index("{") :])  # type: ignore[no-any-return]


def chart(runs: dict[str, Any], path: Path) -> bool:
    """Throughput over time of the drain runs, as PNG (False without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    for name in ("drain_1_worker", "drain_2_workers"):
        series = runs[name]["drain"]["series"]
        ax.plot([t for t, _ in series], [n for _, n in series], label=name)
    ax.set_xlabel("seconds since first delivery")
    ax.set_ylabel("events committed and acked")
    ax.set_title("Pipeline drain")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def report(result: dict[str, Any], png: str | None) -> str:
    """The Markdown report of one run."""
    runs = result["runs"]
    one, two, naive = runs["drain_1_worker"], runs["drain_2_workers"], runs["naive"]["naive"]
    ceiling = one["ceiling_per_s"]
    lines = [f"# Benchmark run {result['started']}", "", f"Machine: `{result['machine']}`", "",
             "| scenario | events/s | / ceiling | / naive | peak RSS |", "|---|---|---|---|---|",
             f"| ceiling (COPY only) | {ceiling:,.0f} | 1.00 | | |",
             f"| naive (fetch + INSERT per event) | {naive['events_per_s']:,.0f} | "
             f"{naive['events_per_s'] / ceiling:.2f} | 1.00 | |"]  # fmt: skip
    for name, r in (("drain, 1 worker", one), ("drain, 2 workers", two)):
        d = r["drain"]
        rate = d["events_per_s"]
        what = (f"{name} ({d['events']:,} msgs, {d['duplicates_in_input']} dup, "
                f"{d['invalid_in_input']} invalid)")  # fmt: skip
        ratios = f"{rate / ceiling:.2f} | {rate / naive['events_per_s']:.2f}"
        lines.append(f"| {what} | {rate:,.0f} | {ratios} | {d['peak_rss_mib']:.0f} MiB |")
    best = max(one["drain"]["events_per_s"], two["drain"]["events_per_s"])
    naive_ratio = best / naive["events_per_s"]
    lines += [
        "",
        "Targets: drain >= 30,000 events/s, >= 0.6 x ceiling, >= 3 x naive, worker RSS <= 400 MB.",
        f"Best drain {best:,.0f}/s: {best / TARGET_DRAIN:.0%} of 30,000; "
        f"{best / ceiling:.2f} x ceiling; {naive_ratio:.1f} x naive.",
    ]
    if png:
        lines += ["", f"![throughput over time]({png})"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n, naive_n = ("100000", "20000") if args.quick else ("1000000", "100000")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    runs = {
        "drain_1_worker": scenario("drain", "--events", n, "--workers", "1"),
        "drain_2_workers": scenario("drain", "--events", n, "--workers", "2", "--skip-ceiling"),
        "naive": scenario("naive", "--events", naive_n),
    }
    result = {"started": started, "machine": machine(), "quick": args.quick, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    stamp = started.replace(":", "")
    (RESULTS / f"{stamp}.json").write_text(json.dumps(result, indent=2))
    png = f"{stamp}-drain.png" if chart(runs, RESULTS / f"{stamp}-drain.png") else None
    text = report(result, png)
    (RESULTS / f"{stamp}.md").write_text(text)
    print(text)
    print(f"results in {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
