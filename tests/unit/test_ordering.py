"""TenantOrder: per-tenant order, one flush per tenant bucket at a time, skipped items
retried first, nothing lost or taken twice, never stuck — over any interleaving of offers,
takes and ends."""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.ordering import BUCKETS, FIRST_BACKOFF_S, MAX_BACKOFF_S, TenantOrder, bucket_of


@dataclass(frozen=True, eq=False)
class Item:
    tenant: str | None
    n: int  # arrival order


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _order(clock: Clock, buckets: int = 4) -> TenantOrder[Item]:
    return TenantOrder(lambda i: i.tenant, clock, buckets=buckets, start=0)


def _named(bucket: int, buckets: int, prefix: str) -> str:
    """A tenant name that falls in ``bucket``."""
    return next(name for k in range(1000) if bucket_of(name := f"{prefix}{k}", buckets) == bucket)


def test_bucket_of_is_stable_and_spreads_tenants() -> None:
    assert bucket_of("acme", 64) == zlib.crc32(b"acme") % 64  # the same in every process
    seen = Counter(bucket_of(f"tenant-{k}") for k in range(6400))
    assert len(seen) == BUCKETS
    assert max(seen.values()) < 2 * 6400 / BUCKETS


def test_worked_example_from_the_module_docstring() -> None:
    clock = Clock()
    order = _order(clock, buckets=2)
    t, u = _named(0, 2, "t"), _named(1, 2, "u")
    t1, u1, t2, t3, u2 = (Item(t, 1), Item(u, 2), Item(t, 3), Item(t, 4), Item(u, 5))
    order.offer([t1, u1, t2])
    a = order.take(100)
    assert a == [t1, u1, t2]  # two buckets, in arrival order
    order.offer([t3, u2])
    assert order.take(100) == []  # both buckets in flight
    assert order.next_ready_in() is None
    order.done(a, [u1])  # u's head was held by another worker
    assert order.take(100) == [t3]  # bucket 1 backs off, u2 behind u1
    assert order.next_ready_in() == FIRST_BACKOFF_S
    clock.now += FIRST_BACKOFF_S
    assert order.take(100) == [u1, u2]


def test_dead_letters_never_wait() -> None:
    order = _order(Clock())
    order.offer([Item("t", 1)])
    first = order.take(10)
    order.offer([Item("t", 2), Item(None, 3)])
    assert order.next_ready_in() == 0.0
    assert [i.n for i in order.take(10)] == [3]
    order.done(first, [])
    assert [i.n for i in order.take(10)] == [2]


def test_concurrent_flushes_over_a_backlog_are_full_and_share_no_tenant() -> None:
    """The regression this module exists for: with thousands of events over 1,000 tenants
    waiting, a second flush slot used to find every tenant in the first flush and take a
    few events; now both take full batches of disjoint tenants."""
    order: TenantOrder[Item] = TenantOrder(lambda i: i.tenant, Clock())
    order.offer([Item(f"tenant-{k % 1000}", k) for k in range(30_000)])
    a, b, c = order.take(5000), order.take(5000), order.take(5000)
    assert len(a) == len(b) == len(c) == 5000
    tenants = [{i.tenant for i in x} for x in (a, b, c)]
    assert not tenants[0] & tenants[1] and not tenants[1] & tenants[2]
    assert not tenants[0] & tenants[2]
    assert max(len(t) for t in tenants) < 400  # a slice of the tenants, not all of them


def test_backoff_doubles_per_consecutive_skip_up_to_the_cap() -> None:
    clock = Clock()
    order = _order(clock)
    item = Item("hot", 1)
    order.offer([item])
    waits = []
    for _ in range(12):
        clock.now = float(round(clock.now) + 10)
        batch = order.take(1)
        assert batch == [item]
        order.done(batch, batch)
        waits.append(order.next_ready_in())
    want = [FIRST_BACKOFF_S, 2 * FIRST_BACKOFF_S, 4 * FIRST_BACKOFF_S]
    assert [round(w, 9) for w in waits[:3]] == want
    assert round(waits[-1], 9) == MAX_BACKOFF_S
    clock.now += 10
    batch = order.take(1)
    order.done(batch, [])  # stored: the next skip starts over
    order.offer([item2 := Item("hot", 2)])
    batch = order.take(1)
    assert batch == [item2]
    order.done(batch, batch)
    assert round(order.next_ready_in() or 0, 9) == FIRST_BACKOFF_S


TENANTS = ["a", "b", "c", "d", "e", "f", None]
ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("offer"),
            st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f", None]), max_size=6),
        ),
        # take n [oldest] [rebind: 0 no, 1 copies, 2 copies and the first one a misfit]
        st.tuples(st.just("take"), st.integers(1, 5), st.booleans(), st.integers(0, 2)),
        st.tuples(st.just("end"), st.integers(0, 3), st.lists(st.booleans(), max_size=6)),
        st.tuples(st.just("tick"), st.floats(0, 0.3)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_any_interleaving_keeps_tenant_order_and_loses_nothing(steps: list) -> None:
    clock = Clock()
    order = _order(clock)
    offered: list[Item] = []
    running: list[list[Item]] = []
    took: dict[int, list[Item]] = {}  # id(running batch) -> what take gave (before a rebind)
    stored: list[Item] = []  # in the order flushes stored them
    misfits: set[int] = set()  # id() of items whose tenant the take did not know

    def end(k: int, skips: list[bool]) -> None:
        batch = running.pop(k % len(running))
        skipped_tenants = {i.tenant for i, s in zip(batch, skips, strict=False) if s}
        skipped = [i for i in batch if (i.tenant is not None and i.tenant in skipped_tenants)
                   or id(i) in misfits]  # fmt: skip
        misfits.difference_update(id(i) for i in skipped)
        stored.extend(i for i in batch if i not in skipped)
        order.done(batch, skipped)

    for step in steps:
        if step[0] == "offer":
            items = [Item(t, len(offered) + j) for j, t in enumerate(step[1])]
            offered.extend(items)
            order.offer(items)
        elif step[0] == "take":
            ready_in = order.next_ready_in()
            batch = order.take(step[1], oldest=step[2])
            assert len(batch) <= step[1]
            numbers = [i.n for i in batch if i.tenant is not None]
            assert numbers == sorted(numbers)  # arrival order, dead letters first
            assert bool(batch) == (ready_in == 0.0)  # never stuck, never early
            busy = {bucket_of(i.tenant, 4) for b in running for i in took[id(b)]
                    if i.tenant is not None}  # fmt: skip
            # A tenant (and its bucket) is in at most one running flush.
            assert not busy & {bucket_of(i.tenant, 4) for i in batch if i.tenant is not None}
            taken = batch
            if batch and step[3]:
                # The worker prepares what it took and flushes the prepared items: the same
                # arrivals in the same order, as new objects; a misfit (its tenant turned out
                # to be another: "m") goes back, as a skipped item, to its own bucket.
                prepared = [Item(i.tenant, i.n) for i in batch]
                if step[3] == 2 and prepared[0].tenant is not None:
                    prepared[0] = Item("m", prepared[0].n)
                    misfits.add(id(prepared[0]))
                    offered[prepared[0].n] = prepared[0]
                order.rebind(batch, prepared)
                batch = prepared
            if batch:
                running.append(batch)
                took[id(batch)] = taken
        elif step[0] == "end" and running:
            end(step[1], step[2])
        elif step[0] == "tick":
            clock.now += step[1]
    # Drain: end every flush without skips, take until empty.
    for _ in range(10_000):
        while running:
            end(0, [])
        if not len(order):
            break
        clock.now += MAX_BACKOFF_S
        batch = order.take(5)
        assert batch
        running.append(batch)
        took[id(batch)] = batch
    # Everything stored exactly once, each tenant's items in arrival order.
    assert sorted(i.n for i in stored) == [i.n for i in offered]
    # (not "m": a misfit waited in another tenant's bucket, so its place among m's items is
    # where its flush found it; a payload naming its tenant twice gets no better)
    for tenant in {"a", "b", "c", "d", "e", "f"}:
        seen = [i.n for i in stored if i.tenant == tenant]
        assert seen == sorted(seen), tenant


def test_a_misfit_rejoins_its_own_bucket_in_arrival_order() -> None:
    # An item that waited under a guessed tenant (a) turns out to be m's when prepared:
    # it goes back to m's bucket, where an older item of m waits. The bucket must stay in
    # arrival order (else take(oldest=True) found nothing to take and the worker spun).
    clock = Clock()
    order = _order(clock, buckets=2)
    a, m = _named(0, 2, "a"), _named(1, 2, "m")
    order.offer([m0 := Item(m, 0), Item(a, 1)])
    taken = order.take(5, only={0})
    assert [i.n for i in taken] == [1]
    order.rebind(taken, prepared := [misfit := Item(m, 1)])
    order.done(prepared, [misfit])
    clock.now += MAX_BACKOFF_S
    assert order.take(5, oldest=True) == [m0, misfit]


def test_rebind_refuses_a_batch_of_another_length() -> None:
    order = _order(Clock())
    order.offer([Item("a", 0), Item("a", 1)])
    taken = order.take(5)
    with pytest.raises(ValueError, match="one item per taken item"):
        order.rebind(taken, taken[:1])


def test_oldest_takes_the_oldest_items_of_every_ready_bucket() -> None:
    """A worker alone flushes what arrived first, whatever the buckets (flushing
    together what was allocated together), and keeps each tenant in one flush."""
    clock = Clock()
    order: TenantOrder[Item] = TenantOrder(lambda i: i.tenant, clock)
    items = [Item(f"tenant-{k % 1000}", k) for k in range(12_000)]
    order.offer(items)
    first = order.take(5000, oldest=True)
    assert first == items[:5000]
    # every bucket gave items: all are in flight until that flush is done
    assert order.take(5000, oldest=True) == [] and order.next_ready_in() is None
    order.done(first, [])
    assert {i.n for i in order.take(5000, oldest=True)} == set(range(5000, 10_000))
