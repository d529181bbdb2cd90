"""PNG charts of a benchmark run (matplotlib, headless); each returns False when its data
is absent. ``draw`` makes every chart it can and returns {title: file name}."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PERCENTILES = list(range(1, 100))


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def drain(runs: dict[str, Any], path: Path) -> bool:
    """Events committed and acked over time, per drain run."""
    names = [n for n in ("drain_1_worker", "drain_2_workers") if n in runs]
    if not names:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    for name in names:
        series = runs[name]["drain"]["series"]
        ax.plot([t for t, _ in series], [n for _, n in series], label=name.replace("_", " "))
    ax.set_xlabel("seconds since first delivery")
    ax.set_ylabel("events committed and acked")
    ax.set_title("Pipeline drain: throughput over time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def steady(runs: dict[str, Any], path: Path) -> bool:
    """End-to-end latency distribution and consumer lag over time at a fixed offered rate."""
    s = runs.get("steady", {}).get("steady")
    if not s or not s["latency_ms"]:
        return False
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(s["latency_ms"]["cdf"], PERCENTILES)
    a.set_xscale("log")
    a.set_xlabel("publish → commit notice (ms, log)")
    a.set_ylabel("percentile")
    a.set_title(f"End-to-end latency at {s['offered_per_s']:,} events/s")
    a.grid(True, alpha=0.3)
    b.plot([t for t, _ in s["lag_series"]], [v for _, v in s["lag_series"]])
    b.set_xlabel("seconds")
    b.set_ylabel("pending + unacked messages")
    b.set_title("Consumer lag")
    b.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def latency(runs: dict[str, Any], path: Path) -> bool:
    """Latency distributions (CDF) of synchronous writes and of queries."""
    curves: list[tuple[str, list[float]]] = []
    for r in runs.get("write", {}).get("sync", []):
        curves.append((f"sync write, {r['writers']} writers", r["latency_ms"]["cdf"]))
    q = runs.get("query")
    if q:
        curves += [("query first page", q["first_page_ms"]["cdf"]),
                   ("query page 200 by token", q["deep_paging_ms"]["page200"]["cdf"]),
                   ("text search first page", q["search_first_page_ms"]["cdf"])]  # fmt: skip
    if not curves:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, cdf in curves:
        ax.plot(cdf, PERCENTILES, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log)")
    ax.set_ylabel("percentile")
    ax.set_title("Request latency distributions")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def draw(runs: dict[str, Any], folder: Path, stamp: str) -> dict[str, str]:
    """Every chart the run has data for, as ``folder/<stamp>-<name>.png``."""
    try:
        _plt()
    except ImportError:
        return {}
    made = {}
    for title, name, fn in (("throughput over time", "drain", drain),
                            ("steady load: latency and lag", "steady", steady),
                            ("latency distributions", "latency", latency)):  # fmt: skip
        file = f"{stamp}-{name}.png"
        if fn(runs, folder / file):
            made[title] = file
    return made
