"""pipeline.deliveries: held messages and their bytes stay in step with deliveries,
redeliveries and settles; chunks come in order, bounded, and end after stop."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.deliveries import Deliveries
from pipeline.stages import Message


def msg(n: int, size: int = 10, stamp: int = 0) -> Message:
    return Message(data=b"x", ack=f"a/{n}", size=size, timestamp_ns=stamp or n * 10**9)


async def test_held_bytes_follow_deliveries_redeliveries_and_settles() -> None:
    d = Deliveries()
    for n in range(3):
        d.deliver(msg(n, size=10 + n))
    d.deliver(msg(1, size=50))  # the same record read again: replaces, not adds
    assert (len(d.held), d.held_bytes) == (3, 10 + 50 + 12)
    assert d.oldest_held_age_s(5 * 10**9) == 5.0
    again = msgspec.structs.replace(msg(2, size=12), delivered=2)
    assert d.again([again, msg(9)]) == 1  # only what is still held
    assert d.held["a/2"].delivered == 2
    settled = d.settle([msg(0), msg(0), msg(7)])
    assert [m.ack for m in settled] == ["a/0"] and d.held_bytes == 62
    assert d.room.is_set()


async def test_chunks_in_order_bounded_and_ending_after_stop() -> None:
    d = Deliveries()
    for n in range(5):
        d.deliver(msg(n))
    d.again([msg(1)])
    d.stop()
    chunks = [c async for c in d.chunks(max_items=2, gather_s=0.01)]
    assert [[m.ack for m in c] for c in chunks] == [["a/0", "a/1"], ["a/2", "a/3"], ["a/4", "a/1"]]


async def test_unbuffered_messages_stay_held() -> None:
    d = Deliveries()
    for n in range(3):
        d.deliver(msg(n))
    d.unbuffer(lambda m: m.ack == "a/1")
    d.stop()
    got = [m.ack for c in [c async for c in d.chunks()] for m in c]
    assert got == ["a/0", "a/2"] and "a/1" in d.held


@settings(max_examples=300, deadline=None)
@given(runs=st.lists(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 99)), max_size=8),
                     max_size=6))  # fmt: skip
def test_many_delivered_at_once_is_each_delivered_in_turn(
    runs: list[list[tuple[int, int]]],
) -> None:
    """deliver_many leaves what deliver() one by one leaves: the held message per token
    (a token seen again replaces the held one, also within one run), the held bytes, the
    buffer in order."""
    one, many = Deliveries(), Deliveries()
    for run in runs:
        msgs = [msg(n, size=size) for n, size in run]
        for m in msgs:
            one.deliver(m)
        many.deliver_many(msgs)
        assert many.held == one.held and many.held_bytes == one.held_bytes
        assert many._buffer == one._buffer
