"""The *scaling* benchmark measures what it exists for, on a tiny input.

``python -m benchmarks.scaling --quick`` as a user runs it (its own embedded servers; new
code only, 3,000 events, 1 and 2 worker processes, 2 flush slots): every event stored and
chained, and each headline figure present and plausible. Not a timing test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_quick_scaling_run_reports_plausible_figures(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), AUDIT_STATE_DIR=str(tmp_path / "state"))
    for name in ("AUDIT_BENCH_DATABASE_URL", "AUDIT_BENCH_NATS_URL"):
        env.pop(name, None)  # servers of its own
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.scaling", "--quick", "--out", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout[proc.stdout.index("{") :])

    assert [(a["code"], a["workers"], a["slots"], a["pipelines"]) for a in out["arms"]] == [
        ("new", 1, 2, 1),
        ("new", 2, 2, 1),
        ("new", 2, 2, 2),  # the control: two independent 1-worker pipelines
    ]
    for arm in out["arms"]:
        assert arm["rows"] == arm["events"] == 3000, "every event stored once"
        assert arm["chained"] == 3000, "chain heads account for every row"
        assert arm["events_per_s"] > 0 and arm["searchable_per_s"] > 0
        assert arm["searchable_per_s"] <= arm["events_per_s"] * 1.001
        assert 0 <= arm["lock"]["share"] <= 1 and arm["lock"]["samples"] > 0
        cpu = arm["cpu_us_per_event"]
        assert cpu["workers"] > 0 and cpu["postgresql"] > 0 and cpu["nats-server"] > 0
        assert cpu["total"] >= cpu["workers"]
        assert arm["worker_process_us"] and all(x > 0 for x in arm["worker_process_us"])
        assert Path(arm["flush_module"]).is_relative_to(ROOT)
        own = arm["worker_own"]  # each worker's events, from its own metrics port
        # (a late worker may still be starting when a tiny drain ends: not scraped)
        assert 1 <= len(own) <= arm["workers"] and abs(sum(w["share"] for w in own) - 1) < 0.01
        assert all(w["events_per_flush"] > 0 for w in own if w["share"] > 0)
    assert [(g["workers"], g["pipelines"]) for g in out["groups"]] == [(1, 1), (2, 1), (2, 2)]
    lanes = out["arms"][2]  # each pipeline drained its half into its own database
    assert len(lanes["worker_own"]) == 2 and lanes["rows"] == 3000
    split = out["independence"]["new"]
    assert split["workers"] == 2 and split["host"] * split["own"] == pytest.approx(split["rise"])
    assert out["projections"]["new"]["cases"][0]["events_per_s"] > 0
    md = next(tmp_path.glob("scaling-*.md")).read_text()
    assert "| new | many | 2 | 2 |" in md and "Projection" in md
    assert "| new | many | 2 independent | 2 |" in md and "Independent pipelines control" in md
