"""Token buckets per key, with an injected clock."""

from __future__ import annotations

import pytest

from query_api.ratelimit import RateLimited, RateLimiter, retry_after_header
from tests.support.clock import FakeClock


def test_burst_then_refusal_then_refill() -> None:
    clock = FakeClock()
    rl = RateLimiter(rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        rl.take("k")
    with pytest.raises(RateLimited) as info:
        rl.take("k")
    assert info.value.retry_after == pytest.approx(0.5)
    assert retry_after_header(info.value) == "1"
    clock.now += 0.5  # one token back
    rl.take("k")
    with pytest.raises(RateLimited):
        rl.take("k")


def test_keys_are_independent_and_refusals_cost_nothing() -> None:
    clock = FakeClock()
    rl = RateLimiter(rate=1.0, burst=1, clock=clock)
    rl.take("a")
    for _ in range(5):  # refused attempts do not push the wait further out
        with pytest.raises(RateLimited) as info:
            rl.take("a")
        assert info.value.retry_after == pytest.approx(1.0)
    rl.take("b")
    clock.now += 1.0
    rl.take("a")


def test_refill_never_exceeds_burst() -> None:
    clock = FakeClock()
    rl = RateLimiter(rate=10.0, burst=2, clock=clock)
    clock.now += 3600
    rl.take("k")
    rl.take("k")
    with pytest.raises(RateLimited):
        rl.take("k")


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 5), (1, 0)])
def test_nonsense_configuration_is_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst)
