"""The scaling benchmark's medians, targets and projection (pure: synthetic arms)."""

from __future__ import annotations

import pytest

from benchmarks.scaling_report import (
    contention,
    groups,
    independence,
    markdown,
    per_control,
    projection,
    targets,
)


def _arm(code: str, workers: int, rate: float, lock: float, worker_us: float,
         hot: bool = False, slots: int = 2, pipelines: int = 1) -> dict:  # fmt: skip
    cpu = {"workers": worker_us, "postgresql": 30.0, "nats-server": 10.0, "benchmark": 2.0}
    cpu["total"] = worker_us + 40.0
    return {"code": code, "workers": workers, "slots": slots, "hot_tenant": hot, "repeat": 0,
            "pipelines": pipelines,
            "events_per_s": rate, "searchable_per_s": rate * 0.9,
            "lock": {"share": lock, "samples": 100}, "cpu_us_per_event": cpu,
            "worker_process_us": [worker_us / workers] * workers, "cores_busy": 2.0}  # fmt: skip


ARMS = [
    _arm("base", 1, 20_000, 0.20, 30.0), _arm("new", 1, 21_000, 0.00, 30.0),
    _arm("base", 4, 12_000, 0.70, 36.0), _arm("new", 4, 22_000, 0.02, 32.0),
    _arm("base", 1, 18_000, 0.22, 30.0), _arm("new", 1, 23_000, 0.00, 31.0),
    _arm("base", 2, 15_000, 0.60, 33.0), _arm("new", 2, 21_500, 0.01, 31.0),
    _arm("new", 1, 5_000, 0.0, 30.0, hot=True), _arm("new", 2, 4_000, 0.0, 40.0, hot=True),
]  # fmt: skip


def test_groups_take_medians_over_repeats() -> None:
    gs = groups(ARMS)
    one = next(g for g in gs if (g["code"], g["workers"], g["hot_tenant"]) == ("new", 1, False))
    assert one["repeats"] == 2 and one["events_per_s"] == 22_000
    assert one["cpu_us_per_event"]["workers"] == 30.5 and one["runs_per_s"] == [21_000, 23_000]


def test_targets_judge_the_new_code_with_the_base_beside() -> None:
    found = {t["what"]: t for t in targets(groups(ARMS), 2)}
    lock = found["lock-wait share, 4 workers"]
    assert lock["met"] and lock["value"] == 0.02 and lock["base"] == 0.70
    assert lock["code"] == "new"
    two = found["2 workers / 1 worker, events/s"]
    assert not two["met"] and two["value"] == pytest.approx(21_500 / 22_000)
    assert not found["2 workers / 1 worker, events/s (hot tenant)"]["met"]
    cpu = found["worker CPU µs/event, 4 workers / 1 worker - 1"]
    assert cpu["met"] and cpu["value"] == pytest.approx(32 / 30.5 - 1)
    search = found["1 worker, events/s until stored and searchable (medians)"]
    assert search["met"] and search["base"] == pytest.approx(19_000 * 0.9)


def test_projection_scales_cpu_per_event_to_the_cores_and_is_labelled() -> None:
    p = projection(groups(ARMS), 2, cores=16)
    assert p is not None and p["lock_share"] == 0.02
    first = p["cases"][0]
    assert first["from_workers"] == 1
    assert first["events_per_s"] == pytest.approx(16e6 / 70.5 * 0.98)
    assert first["worker_processes"] == 7  # 222k/s x 30.5 µs = 6.8 cores of workers
    assert p["hot_tenant_per_s"] == 5_000
    result = {
        "config": {"events": 1000, "tenants": 1000, "batch": 5000, "repeats": 2},
        "groups": groups(ARMS),
        "targets": targets(groups(ARMS), 2),
        "projections": {"new": p},
    }
    text = markdown(result)
    assert "**Projection** (not measured)" in text and "| new | 1 (hot) | 2 | 2 |" in text


def test_contention_control_sets_every_process_against_its_one_worker_arm() -> None:
    arms = [*ARMS, _arm("new", 4, 20_000, 0.0, 36.0)]
    arms[-1]["cpu_us_per_event"]["nats-server"] = 13.0  # the control rose by 30%
    c = contention(groups(arms), 2)
    assert c is not None and c["workers"] == 4 and c["code"] == "new"
    assert c["ratios"]["nats-server"] == pytest.approx(11.5 / 10.0)  # median of 10 and 13
    assert c["ratios"]["workers"] == pytest.approx(34.0 / 30.5)
    assert contention(groups([_arm("new", 1, 1.0, 0.0, 30.0)]), 2) is None  # no 2+ arm
    text = markdown({"config": {"events": 1, "tenants": 1, "batch": 1, "repeats": 1},
                     "groups": groups(arms), "contention": {"new": c}})  # fmt: skip
    assert "**Host contention control** (`new`, 4 workers against 1" in text
    assert "nats-server x1.15" in text


def test_every_arm_is_also_given_in_units_of_nats_servers_cpu_per_event() -> None:
    """A host that slows down between arms slows nats-server as much: each group's
    workers and PostgreSQL per nats-server microsecond, in the table."""
    arm = _arm("new", 1, 20_000, 0.0, 24.0)  # workers 24, PostgreSQL 30, nats-server 10
    assert per_control(arm["cpu_us_per_event"]) == {"workers": 2.4, "postgresql": 3.0}
    assert per_control({"workers": 1.0, "postgresql": 2.0}) == {"workers": None,
                                                               "postgresql": None}  # fmt: skip
    text = markdown({"config": {"events": 1, "tenants": 1, "batch": 1, "repeats": 1},
                     "groups": groups([arm])})  # fmt: skip
    row = next(line for line in text.splitlines() if line.startswith("| new | many | 1 |"))
    assert "| 2.40 / 3.00 |" in row


def test_independent_pipelines_split_the_workers_rise_into_host_and_own_parts() -> None:
    """The control arm (4 independent 1-worker pipelines) is its own group, never taken
    for the 4-worker arm by the targets or the projection, and splits the rise."""
    arms = [*ARMS, _arm("new", 4, 25_000, 0.0, 40.0, pipelines=4)]
    gs = groups(arms)
    assert [(g["workers"], g["pipelines"]) for g in gs if g["code"] == "new"][-1] == (4, 4)
    assert targets(gs, 2) == targets(groups(ARMS), 2)  # the control changes no target
    assert projection(gs, 2) == projection(groups(ARMS), 2)
    split = independence(gs, 2)
    assert split is not None and split["workers"] == 4
    # one worker: median of 30 and 31; 4 sharing a stream: 32; 4 independent: 40
    assert split["host"] == pytest.approx(40.0 / 30.5)
    assert split["own"] == pytest.approx(32.0 / 40.0)
    assert split["host"] * split["own"] == pytest.approx(split["rise"])
    assert independence(groups(ARMS), 2) is None  # no control arm run
    text = markdown({"config": {"events": 1, "tenants": 1, "batch": 1, "repeats": 1},
                     "groups": gs, "independence": {"new": split}})  # fmt: skip
    assert "| new | many | 4 independent | 2 |" in text
    own = [{"share": 0.25, "us_per_own_event": 10.0, "events_per_flush": 3000}] * 4
    with_own = [{**a, "worker_own": own} for a in arms]
    cfg = {"events": 1, "tenants": 1, "batch": 1, "repeats": 1}
    lines = markdown({"config": cfg, "groups": groups(with_own)}).splitlines()
    row = next(x for x in lines if "4 independent" in x)
    assert "25% / 10.0 / 3,000; 25% / 10.0 / 3,000" in row  # shares not rounded to 20%
    assert "**Independent pipelines control** (`new`" in text and "x1.31 per event" in text
    # a result saved before the control arm existed (no "pipelines") still groups
    old = [{k: v for k, v in a.items() if k != "pipelines"} for a in ARMS]
    assert groups(old) == groups(ARMS)
