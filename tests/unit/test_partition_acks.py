"""PartitionAcks: per partition, records are released for commit in delivery order, never
past an unsettled or held record, each exactly once, as early as the rule allows; held
records pause their partition; revoked partitions release nothing more — over any
interleaving of deliveries, redeliveries, settles, holds and revocations."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.partition_acks import PartitionAcks

Event = tuple[int, int, int]  # (partition, offset, delivery number)


def token(partition: int, offset: int) -> str:
    return f"t/{partition}:{offset}"


def test_worked_example_from_the_module_docstring() -> None:
    acks: PartitionAcks[str, str] = PartitionAcks()
    for offset in range(3):
        acks.delivered(f"p:{offset}", "p", f"e{offset}")
    assert acks.settle(["p:1"]) == []
    acks.hold(["p:0"])
    assert acks.paused() == {"p"}
    assert acks.settle(["p:2"]) == []
    assert acks.settle(["p:0"]) == ["e0", "e1", "e2"]
    assert acks.paused() == frozenset() and len(acks) == 0


def test_a_revoked_partition_releases_nothing_more() -> None:
    acks: PartitionAcks[int, str] = PartitionAcks()
    for p in (0, 1):
        for offset in range(2):
            acks.delivered(token(p, offset), p, token(p, offset))
    acks.hold([token(0, 0)])
    assert sorted(acks.revoke([0])) == [token(0, 0), token(0, 1)]
    assert acks.paused() == frozenset() and acks.partitions() == [1]
    assert acks.settle([token(0, 0), token(0, 1), token(1, 0)]) == [token(1, 0)]


def test_a_record_delivered_again_keeps_its_place_and_is_acked_as_delivered_last() -> None:
    acks: PartitionAcks[int, str] = PartitionAcks()
    acks.delivered(token(0, 0), 0, "first")
    acks.delivered(token(0, 1), 0, "other")
    assert acks.settle([token(0, 1)]) == []
    acks.delivered(token(0, 0), 0, "again")  # a rebalance seek read it again
    assert acks.settle([token(0, 0)]) == ["again", "other"]


ops = st.lists(
    st.one_of(
        st.tuples(st.just("deliver"), st.integers(0, 2), st.integers(1, 4)),
        st.tuples(st.just("again"), st.integers(0, 1000)),
        st.tuples(st.just("settle"), st.lists(st.integers(0, 1000), max_size=4)),
        st.tuples(st.just("hold"), st.lists(st.integers(0, 1000), max_size=2)),
        st.tuples(st.just("revoke"), st.integers(0, 2)),
    ),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(ops)
def test_never_past_a_held_record_and_everything_released_once(steps: list) -> None:
    acks: PartitionAcks[int, Event] = PartitionAcks()
    next_offset = {p: 0 for p in range(3)}
    order: dict[int, list[int]] = {p: [] for p in range(3)}  # unreleased, delivery order
    latest: dict[str, Event] = {}  # the event each unreleased record is acked as
    settled: set[str] = set()
    held: set[str] = set()  # NAKed and not settled since
    released: list[Event] = []
    gone: set[str] = set()  # tokens of revoked partitions

    def unreleased() -> list[str]:
        return [token(p, o) for p in order for o in order[p]]

    def pick(i: int) -> str | None:
        tokens = unreleased()
        return tokens[i % len(tokens)] if tokens else None

    def settle(tokens: list[str]) -> None:
        settled.update(t for t in tokens if t in latest)
        held.difference_update(tokens)
        out = acks.settle(tokens)
        for p, offset, n in out:
            t = token(p, offset)
            # Never past an unsettled (or held) record: a released record is settled and
            # is the first unreleased one of its partition, in delivery order.
            assert t in settled and t not in gone
            assert order[p] and order[p][0] == offset, (t, order[p])
            assert latest[t] == (p, offset, n)  # acked as it was delivered last
            order[p].pop(0)
            del latest[t]
            settled.discard(t)
            released.append((p, offset, n))
        # As early as the rule allows: no partition's first unreleased record is settled.
        for p, offsets in order.items():
            assert not offsets or token(p, offsets[0]) not in settled

    for step in steps:
        if step[0] == "deliver":
            _, p, count = step
            for _ in range(count):
                t = token(p, next_offset[p])
                order[p].append(next_offset[p])
                latest[t] = (p, next_offset[p], 1)
                acks.delivered(t, p, latest[t])
                next_offset[p] += 1
        elif step[0] == "again":
            t = pick(step[1])
            if t is not None:
                p, offset, n = latest[t]
                latest[t] = (p, offset, n + 1)
                settled.discard(t)
                acks.delivered(t, p, latest[t])
        elif step[0] == "settle":
            settle([t for i in step[1] if (t := pick(i)) is not None])
        elif step[0] == "hold":
            tokens = [t for i in step[1] if (t := pick(i)) is not None and t not in settled]
            held.update(tokens)
            acks.hold(tokens)
        elif step[0] == "revoke":
            p = step[1]
            forgotten = {token(p, o) for o in order[p]}
            assert set(acks.revoke([p])) == forgotten
            gone |= forgotten
            for t in forgotten:
                latest.pop(t, None)
                settled.discard(t)
                held.discard(t)
            order[p] = []
        assert acks.paused() == {int(t.split("/")[1].split(":")[0]) for t in held}
        assert len(acks) == len(latest)
    # Everything settled at last: every record not revoked is released, exactly once.
    settle(unreleased())
    assert len(acks) == 0 and acks.paused() == frozenset()
    want = {(p, o) for p in range(3) for o in range(next_offset[p])} - {
        (int(t.split("/")[1].split(":")[0]), int(t.split(":")[1])) for t in gone
    }
    got = [(p, o) for p, o, _ in released]
    assert len(got) == len(set(got)) and set(got) == want
