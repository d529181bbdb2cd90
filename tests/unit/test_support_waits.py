"""The tests' one poll (tests/support/waits.py) fails loudly, with what it last saw."""

from __future__ import annotations

import itertools

import pytest

from tests.support.waits import eventually, eventually_sync


async def test_eventually_returns_the_first_value_that_holds() -> None:
    counter = itertools.count()

    async def probe() -> int:
        return next(counter)

    assert await eventually(probe, lambda n: n >= 3, timeout=5, interval=0) == 3
    assert await eventually(lambda: "sync probe", timeout=1) == "sync probe"


async def test_eventually_times_out_naming_what_and_the_last_value() -> None:
    counter = itertools.count()
    with pytest.raises(AssertionError) as info:
        await eventually(lambda: next(counter), lambda n: n < 0, timeout=0.2, interval=0.01,
                         what="a negative number")  # fmt: skip
    message = str(info.value)
    assert message.startswith("a negative number: not true after 0.2s; last observed: ")
    assert int(message.rsplit(" ", 1)[1]) >= 1  # the last value, not the first


async def test_ignored_errors_count_as_not_yet_and_are_shown() -> None:
    calls = itertools.count()

    def flaky() -> str:
        if next(calls) < 3:
            raise ConnectionRefusedError("not yet listening")
        return "up"

    assert await eventually(flaky, timeout=5, interval=0, ignore=(OSError,)) == "up"
    with pytest.raises(AssertionError) as info:
        await eventually(lambda: 1 / 0, timeout=0.05, interval=0.01, ignore=(ZeroDivisionError,))
    assert "ZeroDivisionError" in str(info.value)
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    with pytest.raises(KeyError):  # not ignored: raised at once
        await eventually(lambda: {}["missing"], timeout=5)


def test_eventually_sync_and_long_values_are_cut() -> None:
    assert eventually_sync(lambda: [1, 2], lambda v: len(v) == 2, timeout=1) == [1, 2]
    with pytest.raises(AssertionError) as info:
        eventually_sync(lambda: "x" * 100_000, lambda v: False, timeout=0.05, interval=0.01,
                        what="never")  # fmt: skip
    assert len(str(info.value)) < 4000 and " ... " in str(info.value)
