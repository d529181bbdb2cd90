"""Benchmark runner: runs scenarios in subprocesses and writes JSON + Markdown results.

python -m benchmarks.run            # full: drain of 1,000,000 events, 1 and 2 workers
python -m benchmarks.run --quick    # under two minutes: 100,000 events
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

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, object]:
    """Facts about this machine, recorded with every result."""
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
    }


def scenario(module: str, *args: str) -> dict[str, object]:
    """Run ``python -m benchmarks.<module> args`` and parse its JSON output."""
    print(f"--> {module} {' '.join(args)}", flush=True)
    out = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return json.loads(out[out.index("{") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = "100000" if args.quick else "1000000"
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    runs = {
        "drain_1_worker": scenario("drain", "--events", n, "--workers", "1"),
        "drain_2_workers": scenario("drain", "--events", n, "--workers", "2", "--skip-ceiling"),
    }
    result = {"started": started, "machine": machine(), "quick": args.quick, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    stamp = started.replace(":", "")
    (RESULTS / f"{stamp}.json").write_text(json.dumps(result, indent=2))
    one = runs["drain_1_worker"]
    lines = [
        f"# Benchmark run {started}",
        "",
        f"Machine: {result['machine']}",
        "",
        "| scenario | events/s | ratio to ceiling |",
        "|---|---|---|",
        f"| ceiling (COPY only) | {one['ceiling_per_s']:,.0f} | 1.00 |",  # type: ignore[index]
    ]
    for name, r in runs.items():
        rate = r["drain"]["events_per_s"]  # type: ignore[index]
        ratio = rate / one["ceiling_per_s"]  # type: ignore[operator]
        lines.append(f"| {name} | {rate:,.0f} | {ratio:.2f} |")
    report = "\n".join(lines) + "\n"
    (RESULTS / f"{stamp}.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
