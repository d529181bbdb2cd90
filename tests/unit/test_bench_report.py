"""The benchmark report's verdicts (pure: a synthetic result, no servers)."""

from __future__ import annotations

from benchmarks.run import Check, checks, report


def test_check_verdicts_say_how_far_off() -> None:
    assert (
        Check("drain", 12_000, 30_000, True, "events/s")
        .row()
        .endswith("**missed**: 40% of target |")
    )
    assert (
        Check("p99", 45.0, 30, False, "ms", "{:.1f}")
        .row()
        .endswith("**missed**: 1.5 x the limit |")
    )
    assert Check("p99", 8.0, 15, False, "ms").met
    assert not Check("rate", 49_999, 50_000, True, "rows/s").met


def _drain(rate: float) -> dict:
    return {"drain": {"events": 1000, "events_per_s": rate, "duplicates_in_input": 10,
                      "invalid_in_input": 1, "peak_rss_mib": 120.0, "series": [[0, 0]],
                      "cpu_us_per_event": {"postgresql": 50, "nats-server": 10,
                                           "pipeline": 60}}}  # fmt: skip


def test_report_lists_every_measured_target_with_ratios_from_the_same_run() -> None:
    runs = {
        "drain_1_worker": {**_drain(12_000), "ceiling_per_s": 24_000},
        "drain_2_workers": _drain(10_000),
        "naive": {"naive": {"events_per_s": 2_000}},
    }
    found = {c.what: c for c in checks(runs)}
    assert found["drain (best of 1 and 2 workers)"].value == 12_000
    assert found["drain / ceiling (same run)"].value == 0.5
    assert found["drain / naive (same run)"].value == 6.0
    assert found["pipeline worker peak RSS (drain, steady)"].met
    result = {"started": "t", "quick": True, "command": "python -m benchmarks.run --quick",
              "machine": {"cores": 2, "memory_mib": 1024, "python": "3.11", "postgresql": "16",
                          "nats_server": "2.15", "platform": "linux",
                          "external_servers": False},
              "runs": runs}  # fmt: skip
    text = report(result, {"throughput over time": "t-drain.png"})
    assert "| drain / ceiling (same run) | 0.50 x | >= 0.70 x | **missed**: 71% of target |" in text
    assert "| worker CPU per event (1-worker drain) | 60.0 µs | <= 10.0 µs | **missed**" in text
    assert "| 50 / 10 / 60 |" in text and "![throughput over time](t-drain.png)" in text
    assert "## Query" not in text  # scenarios that did not run are not reported


def test_a_measure_too_small_to_judge_says_so_instead_of_failing() -> None:
    row = Check("export", 40_000, 50_000, True, "rows/s", unjudged="20,000 rows").row()
    assert row.endswith("| not judged: 20,000 rows |") and "missed" not in row


def _result(runs: dict) -> dict:
    return {"started": "t", "quick": True, "command": "c",
            "machine": {"cores": 2, "memory_mib": 1024, "python": "3.11", "postgresql": "16",
                        "nats_server": "2.15", "platform": "linux", "external_servers": False},
            "runs": runs}  # fmt: skip


def test_peers_and_kafka_drain_are_reported_with_ratios_from_the_same_run() -> None:
    kafka = _drain(4_000)
    kafka["drain"]["source"] = "kafka"
    kafka["drain"]["cpu_us_per_event"] = {"postgresql": 54, "tansu": 5, "pipeline": 142}
    runs = {
        "drain_1_worker": {**_drain(12_000), "ceiling_per_s": 24_000},
        "drain_kafka": kafka,
        "peers": {"ours": {"events_per_s": 15_000, "cpu_us_per_event": {
                      "postgresql": 46, "nats-server": 15, "pipeline": 44}},
                  "mq-bridge": {"events_per_s": 60_000, "cpu_us_per_event": {
                      "postgresql": 8, "nats-server": 10, "peer": 6}},
                  "pathway": {"events_per_s": 30_000, "cpu_us_per_event": {
                      "postgresql": 5, "nats-server": 8, "peer": 11}}},
    }  # fmt: skip
    text = report(_result(runs), {})
    assert "| 4,000 | 0.17 |" in text and "| 54 / 5 / 142 |" in text  # tansu as the broker
    assert "| mq-bridge | 60,000 | 0.25 | 8 / 10 / 6 |" in text
    assert "| Pathway | 30,000 | 0.50 | 5 / 8 / 11 |" in text
    assert "| ours (validate, dedupe, chain, index) | 15,000 | 1.00 | 46 / 15 / 44 |" in text
    best = "| ours / best peer (same run) | 0.25 x | >= 1.00 x | **missed**: 25% of target |"
    assert best in text


def _writes(p99: float, batch: float, worker: bool) -> dict:
    cpu = {"service": 160, "postgresql": 90, "nats-server": 70, "load": 120}
    if worker:
        cpu["pipeline"] = 110
    return {"sync": [{"writers": 64, "per_s": 3000, "p50_ms": 20.0, "p99_ms": p99,
                      "cpu_us_per_write": cpu}],
            "batch": {"events": 1000, "batch": 1000, "events_per_s": batch},
            "batch_durable": {"events_per_s": batch * 1.5}}  # fmt: skip


def test_both_write_topologies_are_judged_and_shown() -> None:
    split = {**_writes(28.0, 14_000, worker=True), "topology": "two processes"}
    runs = {"write": {**_writes(36.0, 11_000, worker=False), "split": split}}
    found = {c.what: c for c in checks(runs)}
    assert not found["sync write p99, 64 writers"].met
    assert found["sync write p99, 64 writers (api + pipeline processes)"].met
    assert found["batch writes after commit (api + pipeline processes)"].value == 14_000
    text = report(_result(runs), {})
    assert "## Writes over HTTP (two processes)" in text
    assert "| 64 | 3,000 | 20.0 ms | 28.0 ms | 160 / 110 / 90 / 70 / 120 |" in text
    assert "| 64 | 3,000 | 20.0 ms | 36.0 ms | 160 / 0 / 90 / 70 / 120 |" in text
    assert text.count("the API column includes the worker") == 1


def test_sizing_follows_from_the_cpu_per_event() -> None:
    from benchmarks.run import sizing

    s = sizing({"pipeline": 50, "postgresql": 40, "nats-server": 10}, cores=2)
    assert s["per_core"] == 10_000 and s["here"] == 20_000 and s["per_worker"] == 20_000
    assert s["pg_cores_per_10k"] == 0.4
    assert sizing({}, 2) == {}
    runs = {"drain_1_worker": _drain(12_000), "drain_2_workers": _drain(15_000)}
    text = report(_result(runs), {})
    assert "with 2 workers 15,000 (1.25 x)" in text
    assert "each added core carries about 8,333 events/s" in text


def _steady(achieved: float, latencies: list[float]) -> dict:
    from benchmarks.common import latency_summary

    lat = latency_summary(latencies)
    return {"steady": {"offered_per_s": 8000, "achieved_per_s": achieved, "events": 480_000,
                       "rows": 480_000, "jetstream_acks": 480_000, "max_lag": 12,
                       "committed_seen": len(latencies), "lag_series": [[0.0, 12]],
                       "latency_ms": lat, "peak_rss_mib": 110.0}}  # fmt: skip


def test_a_scenario_that_could_not_measure_its_figures_says_so_and_exits_non_zero(capsys) -> None:
    import json

    import pytest

    from benchmarks.common import NOT_MEASURED_EXIT, emit
    from benchmarks.steady import FIGURES

    # Issue #27: every row stored, every publish acked, not one commit observed.
    with pytest.raises(SystemExit) as ended:
        emit(_steady(0.0, []), FIGURES)
    assert ended.value.code == NOT_MEASURED_EXIT != 0
    out, err = capsys.readouterr()
    assert "NOT MEASURED: steady.achieved_per_s = 0.0: no commit observed" in err
    assert "NOT MEASURED: steady.latency_ms.p50 = None: no end-to-end latency sample" in err
    assert len(json.loads(out)["not_measured"]) == 4  # achieved, seen, p50, p99
    emit(_steady(7_950.0, [20.0, 30.0, 90.0]), FIGURES)  # measured: no exit
    assert "not_measured" not in json.loads(capsys.readouterr().out)


def test_only_finite_positive_numbers_and_non_empty_collections_count_as_measured() -> None:
    from benchmarks.common import not_measured

    result = {"a": 0, "b": float("nan"), "c": [], "d": None, "e": True, "f": 1.5, "g": [[0, 3]],
              "rows": [{"per_s": 0.0}, {"per_s": 9.0}]}  # fmt: skip
    paths = ("a", "b", "c", "d", "e", "f", "g", "missing.deep", "rows.0.per_s", "rows.1.per_s",
             "rows.2.per_s")  # fmt: skip
    missing = [line.split(" = ")[0] for line in not_measured(result, dict.fromkeys(paths, "x"))]
    assert missing == ["a", "b", "c", "d", "e", "missing.deep", "rows.0.per_s", "rows.2.per_s"]


def test_the_report_names_unmeasured_scenarios_and_leaves_them_out_of_every_table() -> None:
    runs = {"drain_1_worker": _drain(12_000)}
    why = "steady.achieved_per_s = 0.0: no commit observed while publishing"
    result = {**_result(runs), "not_measured": {"steady": [why]}}
    text = report(result, {})
    assert "## Not measured" in text
    assert "- **steady**: steady.achieved_per_s = 0.0: no commit observed" in text
    assert "## Steady offered load" not in text and "end-to-end" not in text
    assert text.index("## Not measured") < text.index("## Targets")
    assert "## Not measured" not in report(_result(runs), {})


def test_rss_growth_is_the_least_squares_slope_per_minute() -> None:
    from benchmarks.common import slope_per_minute

    flat = [(float(t), 200.0 + (0.5 if t % 2 else -0.5)) for t in range(0, 600, 5)]
    assert abs(slope_per_minute(flat) or 0) < 0.05
    leak = [(float(t), 100.0 + t / 60 * 3) for t in range(0, 600, 5)]  # 3 MiB a minute
    assert abs((slope_per_minute(leak) or 0) - 3.0) < 1e-9
    assert slope_per_minute([(1.0, 5.0)]) is None


def test_steady_events_opt_into_commit_notices_and_map_back_from_their_ids() -> None:
    import json
    import uuid

    from benchmarks.steady import Offered
    from schemas.ids import IDEMPOTENCY_HEADER, tenant_subject

    offered = Offered(40)
    seen = set()
    for i in (0, 7, 39):
        subject, payload, headers = offered.message(i, "bench.x.events")
        doc = json.loads(payload)
        assert headers[IDEMPOTENCY_HEADER] == doc["id"]  # what the worker's notices key on
        assert headers["Nats-Msg-Id"] == f"{doc['tenant_id']}:{doc['id']}"
        assert subject == tenant_subject("bench.x.events", doc["tenant_id"])
        assert offered.index(uuid.UUID(doc["id"])) == i
        seen.add(doc["id"])
    assert len(seen) == 3
    assert offered.index(uuid.uuid4()) is None
    assert offered.index(uuid.UUID(int=41, version=4)) is None  # beyond the run


def test_the_hot_path_targets_are_judged_until_stored_and_searchable() -> None:
    """#28: total CPU (worker + PostgreSQL with search indexing + nats-server) and the drain
    over the ceiling both until searchable; ours against the best like-for-like peer (ours
    until searchable) and the best raw-bytes peer (ours until stored)."""
    one = _drain(20_000)
    one["drain"]["searchable_per_s"] = 16_000
    one["drain"]["cpu_us_per_event_searchable"] = {"postgresql": 20, "nats-server": 8,
                                                   "pipeline": 12}  # fmt: skip
    peers = {"ours": {**one["drain"]}, "mq-bridge": {"events_per_s": 60_000},
             "pathway": {"events_per_s": 40_000}, "mq-bridge_like": {"events_per_s": 20_000},
             "pathway_like": {"events_per_s": 8_000}}  # fmt: skip
    runs = {"drain_1_worker": {**one, "searchable_over_ceiling": 0.8}, "peers": peers}
    found = {c.what: c for c in checks(runs)}
    assert found["total CPU per event, until stored and searchable"].value == 40
    assert found["total CPU per event, until stored and searchable"].met
    assert found["drain / ceiling, both until stored and searchable"].value == 0.8
    assert found["ours / best like-for-like peer (same run)"].value == 16_000 / 20_000
    assert found["ours / best raw-bytes peer (same run)"].value == 20_000 / 60_000
    assert found["ours / best raw-bytes peer (same run)"].goal == 0.5
    text = report(_result(runs), {})
    assert "| mq-bridge, like for like | 20,000 | 0.80 |" in text
