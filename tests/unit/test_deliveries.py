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


async def test_heartbeats_name_only_messages_held_since_the_previous_tick() -> None:
    d = Deliveries()
    d.deliver_many([msg(0), msg(1)])
    assert d.due_for_heartbeat() == []  # first tick: all delivered within it
    d.deliver(msg(2))
    d.settle([msg(0)])
    assert [m.ack for m in d.due_for_heartbeat()] == ["a/1"]  # a/2 arrived since
    assert [m.ack for m in d.due_for_heartbeat()] == ["a/1", "a/2"]
    d.settle([msg(1), msg(2)])
    assert d.due_for_heartbeat() == [] and d.due_for_heartbeat() == []


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.one_of(st.tuples(st.just("deliver"), st.integers(1, 5)),
                                st.tuples(st.just("settle"), st.integers(0, 2**16)),
                                st.tuples(st.just("tick"), st.just(0))), max_size=60))  # fmt: skip
def test_no_held_message_goes_two_ticks_without_a_heartbeat(
    steps: list[tuple[str, int]],
) -> None:
    """Ticks come every third of the ack wait: a held message is named at the latest at
    the second tick after its delivery and at every tick after that (its timer never runs
    out), and nothing settled or delivered since the previous tick is ever named."""
    d = Deliveries()
    n = 0
    ticks_since_reset: dict[str, int] = {}  # held message -> ticks since delivery/heartbeat
    delivered_since_tick: set[str] = set()
    for kind, arg in steps:
        if kind == "deliver":
            fresh = [msg(n + i) for i in range(arg)]
            n += arg
            d.deliver_many(fresh)
            ticks_since_reset.update((m.ack, 0) for m in fresh)
            delivered_since_tick.update(m.ack for m in fresh)
        elif kind == "settle":
            held = sorted(ticks_since_reset)
            gone = [a for i, a in enumerate(held) if arg >> (i % 16) & 1]
            d.settle([Message(data=b"x", ack=a) for a in gone])
            for a in gone:
                del ticks_since_reset[a]
        else:
            due = [m.ack for m in d.due_for_heartbeat()]
            assert due == [a for a in d.held if a not in delivered_since_tick]
            delivered_since_tick.clear()
            for a in ticks_since_reset:
                ticks_since_reset[a] = 0 if a in due else ticks_since_reset[a] + 1
                assert ticks_since_reset[a] < 2, f"{a} went two ticks without a heartbeat"
