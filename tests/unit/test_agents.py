"""pipeline.agents: take() semantics with an injected clock (no sleeps)."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.agents import Batcher, Stream, TakeBuffer
from tests.support.clock import FakeClock


def test_batcher_releases_full_batches_at_once() -> None:
    b: Batcher[int] = Batcher(3, 0.05, FakeClock())
    assert b.add([1, 2]) == []
    assert b.add([3, 4, 5, 6, 7]) == [[1, 2, 3], [4, 5, 6]]
    assert len(b) == 1


def test_batcher_releases_on_time_measured_from_the_first_item() -> None:
    clock = FakeClock()
    b: Batcher[int] = Batcher(100, 0.05, clock)
    assert b.time_left() is None and b.due() == []
    b.add([1])
    clock.now += 0.03
    b.add([2])
    assert b.due() == [] and b.time_left() == pytest.approx(0.02)
    clock.now += 0.02
    assert b.due() == [1, 2]
    assert b.time_left() is None


def test_batcher_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Batcher(0, 1.0)
    with pytest.raises(ValueError):
        Batcher(1, -0.001)


def test_batcher_with_zero_latency_releases_whatever_is_buffered_at_once() -> None:
    clock = FakeClock()
    b: Batcher[int] = Batcher(3, 0.0, clock)
    assert b.due() == []
    assert b.add([1, 2]) == []
    assert b.time_left() == 0.0 and b.due() == [1, 2]
    assert b.add([3, 4, 5, 6]) == [[3, 4, 5]]
    assert b.due() == [6]


async def test_take_buffer_with_zero_latency_batches_only_while_busy() -> None:
    clock = FakeClock()
    buf: TakeBuffer[int] = TakeBuffer(100, 0.0, clock)
    buf.put([1])
    assert await buf.get() == [1]  # an idle consumer takes it at once
    buf.put([2, 3])  # the consumer was busy: these accumulate into one batch
    buf.put([4])
    assert await buf.get() == [2, 3, 4]


async def test_take_buffer_grows_batches_while_consumer_is_busy() -> None:
    clock = FakeClock()
    buf: TakeBuffer[int] = TakeBuffer(5, 0.05, clock)
    buf.put([1, 2])
    clock.now += 0.06  # the consumer was busy past the window
    buf.put([3])
    assert await buf.get() == [1, 2, 3]
    buf.put(list(range(12)))
    assert await buf.get() == [0, 1, 2, 3, 4]
    assert await buf.get() == [5, 6, 7, 8, 9]
    buf.close()
    assert await buf.get() == [10, 11]
    assert await buf.get() == []


async def test_stream_take_yields_full_batches_and_the_rest_at_end() -> None:
    async def source():
        yield [1, 2, 3]
        yield [4, 5]
        yield [6]

    batches = [b async for b in Stream(source()).take(2, 60.0, FakeClock())]
    assert batches == [[1, 2], [3, 4], [5, 6]]


async def test_take_buffer_get_waits_for_put() -> None:
    buf: TakeBuffer[int] = TakeBuffer(2, 60.0, FakeClock())
    getter = asyncio.create_task(buf.get())
    await asyncio.sleep(0)
    assert not getter.done()
    buf.put([1, 2])
    assert await getter == [1, 2]
