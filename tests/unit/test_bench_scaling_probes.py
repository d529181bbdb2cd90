"""Pure parts of ``benchmarks.scaling_probes``: how CPU seconds become µs per event."""

from __future__ import annotations

import pytest

from benchmarks.scaling_probes import cpu_split, log_problems, own_event_cost


def test_own_event_cost_divides_each_workers_cpu_by_the_events_it_stored() -> None:
    before = {10: ("workers", 1.0), 11: ("workers", 0.5), 99: ("postgresql", 7.0)}
    after = {10: ("workers", 4.0), 11: ("workers", 2.5), 99: ("postgresql", 9.0)}
    ready = {11: 1.5}  # worker 11 finished its set-up after the drain began
    port_of = {10: 9000, 11: 9001}
    stored = {9000: (150_000, 30), 9001: (50_000, 50)}

    out = own_event_cost(before, after, ready, port_of, stored)

    assert out == [
        {"share": 0.75, "us_per_own_event": 20.0, "events_per_flush": 5000},
        {"share": 0.25, "us_per_own_event": 20.0, "events_per_flush": 1000},
    ]


def test_own_event_cost_leaves_out_workers_it_could_not_ask_and_idle_ones() -> None:
    before = {10: ("workers", 0.0), 11: ("workers", 0.0)}
    after = {10: ("workers", 1.0), 11: ("workers", 0.2)}
    out = own_event_cost(before, after, {}, {10: 9000, 11: 9001}, {9001: (0, 0)})
    assert out == [{"share": 0.0, "us_per_own_event": None, "events_per_flush": None}]


def test_cpu_split_counts_a_late_worker_from_its_set_up() -> None:
    before = {10: ("workers", 1.0), 11: ("workers", 0.2), 99: ("postgresql", 3.0)}
    after = {10: ("workers", 2.0), 11: ("workers", 1.0), 99: ("postgresql", 5.0)}
    split, per_worker, total = cpu_split(before, after, 100_000, {11: 0.6})
    assert split["workers"] == pytest.approx(14.0)  # 1.0 s + 0.4 s over 100,000 events
    assert split["postgresql"] == pytest.approx(20.0)
    assert per_worker == [10.0, 4.0]
    assert total == pytest.approx(3.4)


def test_log_problems_keeps_warnings_and_errors_but_the_expected_notice() -> None:
    text = "\n".join([
        "2026-12-03 14:23:36,885 WARNING auditlog.credentials: database: AUDIT_DATABASE_URL's"
        " login postgres holds owner rights, so this process migrates",
        "2026-12-03 14:23:37,001 INFO pipeline.worker: pipeline hot path: compiled",
        "2026-12-03 14:23:40,112 ERROR auditlog.runtime: worker 1 (pid 4242) exited with code"
        " -9; restarting in 1s",
        "2026-12-03 14:23:41,500 WARNING pipeline.worker: flush failed (retrying in 0.1s): "
        + "x" * 400,
    ])  # fmt: skip
    out = log_problems(text)
    assert len(out) == 2
    assert "worker 1 (pid 4242) exited" in out[0]
    assert out[1].startswith("2026-12-03 14:23:41,500 WARNING") and len(out[1]) == 300
    assert log_problems(text, limit=1) == out[:1]
    assert log_problems("") == []
