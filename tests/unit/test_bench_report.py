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
