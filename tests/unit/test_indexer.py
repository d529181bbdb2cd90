"""The search indexer's pure parts: what /readyz says of its lag, and its settings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.errors import ConfigError
from infra.settings import load_settings
from pipeline.indexer import Lag, lag_status


def test_the_lag_degrades_readiness_only_past_the_bound() -> None:
    assert lag_status(Lag(0, 0.0), 60) == "ok"
    assert lag_status(Lag(5_000, 60.0), 60) == "ok"  # at the bound: still fine
    line = lag_status(Lag(12_345, 61.4), 60)
    assert line.startswith("degraded: search index 61s behind (12345 events")
    assert "exact" in line  # says that results stay right, only slower


@given(events=st.integers(0, 10**9), seconds=st.floats(0, 1e6), bound=st.floats(0, 1e6))
def test_never_unready_and_ok_exactly_within_the_bound(events: int, seconds: float,
                                                      bound: float) -> None:  # fmt: skip
    status = lag_status(Lag(events, seconds), bound)
    assert (status == "ok") == (seconds <= bound)
    assert status == "ok" or status.startswith("degraded: ")


def test_settings() -> None:
    s = load_settings({})
    assert (s.search_index_interval_s, s.search_lag_degraded_s) == (1.0, 60.0)
    assert load_settings({"AUDIT_SEARCH_INDEX_INTERVAL_S": "0"}).search_index_interval_s == 0
    with pytest.raises(ConfigError) as info:
        load_settings({"AUDIT_SEARCH_INDEX_INTERVAL_S": "-1"})
    assert info.value.setting == "AUDIT_SEARCH_INDEX_INTERVAL_S"
