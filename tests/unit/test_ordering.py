"""TenantOrder: per-tenant order, one flush per tenant at a time, skipped items retried
first, nothing lost or taken twice — over any interleaving of offers, takes and ends."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.ordering import FIRST_BACKOFF_S, MAX_BACKOFF_S, TenantOrder


@dataclass(frozen=True, eq=False)
class Item:
    tenant: str | None
    n: int  # arrival order


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _order(clock: Clock) -> TenantOrder[Item]:
    return TenantOrder(lambda i: i.tenant, clock)


def test_worked_example_from_the_module_docstring() -> None:
    clock = Clock()
    order = _order(clock)
    t1, u1, t2, t3, u2 = (Item("t", 1), Item("u", 2), Item("t", 3), Item("t", 4), Item("u", 5))
    order.offer([t1, u1, t2])
    a = order.take(100)
    assert a == [t1, u1, t2]
    order.offer([t3, u2])
    assert order.take(100) == []  # t and u in flight
    order.done(a, [u1])  # u's head was held by another worker
    assert order.take(100) == [t3]  # u1 waits its backoff, u2 behind it
    assert order.next_ready_in() == FIRST_BACKOFF_S
    clock.now += FIRST_BACKOFF_S
    assert order.take(100) == [u1, u2]


def test_dead_letters_never_wait() -> None:
    order = _order(Clock())
    order.offer([Item("t", 1)])
    first = order.take(10)
    order.offer([Item("t", 2), Item(None, 3)])
    assert [i.n for i in order.take(10)] == [3]
    order.done(first, [])
    assert [i.n for i in order.take(10)] == [2]


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


ops = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), st.lists(st.sampled_from(["a", "b", "c", None]), max_size=6)),
        st.tuples(st.just("take"), st.integers(1, 5)),
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
    stored: list[Item] = []  # in the order flushes stored them

    def end(k: int, skips: list[bool]) -> None:
        batch = running.pop(k % len(running))
        skipped_tenants = {i.tenant for i, s in zip(batch, skips, strict=False) if s}
        skipped = [i for i in batch if i.tenant is not None and i.tenant in skipped_tenants]
        stored.extend(i for i in batch if i not in skipped)
        order.done(batch, skipped)

    for step in steps:
        if step[0] == "offer":
            items = [Item(t, len(offered) + j) for j, t in enumerate(step[1])]
            offered.extend(items)
            order.offer(items)
        elif step[0] == "take":
            batch = order.take(step[1])
            assert len(batch) <= step[1]
            busy = {i.tenant for b in running for i in b} - {None}
            # A tenant is in at most one running flush.
            assert not busy & {i.tenant for i in batch if i.tenant is not None}
            if batch:
                running.append(batch)
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
    # Everything stored exactly once, each tenant's items in arrival order.
    assert sorted(i.n for i in stored) == [i.n for i in offered]
    for tenant in {"a", "b", "c"}:
        seen = [i.n for i in stored if i.tenant == tenant]
        assert seen == sorted(seen), tenant


class Reference:
    """The first TenantOrder, item by item, kept as the specification of the batch one."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.waiting: list[list] = []  # [item, not_before, skips]
        self.flying: dict[str, int] = {}
        self.skips: dict[int, int] = {}

    def offer(self, items: list[Item]) -> None:
        self.waiting += [[i, 0.0, 0] for i in items]

    def take(self, max_items: int) -> list[Item]:
        now, blocked = self.clock(), {t for t, n in self.flying.items() if n}
        taken, keep = [], []
        for w in self.waiting:
            t = w[0].tenant
            if len(taken) >= max_items:
                keep.append(w)
            elif t is None:
                taken.append(w)
            elif t in blocked or w[1] > now:
                blocked.add(t)
                keep.append(w)
            else:
                taken.append(w)
        self.waiting = keep
        for t in {w[0].tenant for w in taken} - {None}:
            self.flying[t] = self.flying.get(t, 0) + 1
        for w in taken:
            if w[2]:
                self.skips[id(w[0])] = w[2]
        return [w[0] for w in taken]

    def done(self, flushed: list[Item], skipped: list[Item]) -> None:
        for t in {i.tenant for i in flushed} - {None}:
            self.flying[t] -= 1
        now, back = self.clock(), []
        for item in skipped:
            skips = self.skips.pop(id(item), 0) + 1
            back.append([item, now + min(FIRST_BACKOFF_S * 2 ** (skips - 1), MAX_BACKOFF_S),
                         skips])  # fmt: skip
        for item in flushed:
            self.skips.pop(id(item), None)
        self.waiting[:0] = back

    def next_ready_in(self) -> float | None:
        now, blocked = self.clock(), {t for t, n in self.flying.items() if n}
        soonest = None
        for item, not_before, _ in self.waiting:
            if item.tenant is not None and item.tenant in blocked:
                continue
            left = max(0.0, not_before - now)
            soonest = left if soonest is None else min(soonest, left)
            if item.tenant is not None:
                blocked.add(item.tenant)
        return soonest


@settings(max_examples=500, deadline=None)
@given(ops)
def test_takes_exactly_what_the_item_by_item_reference_takes(steps: list) -> None:
    clock = Clock()
    order, ref = _order(clock), Reference(clock)
    running: list[list[Item]] = []
    n = 0
    for step in steps:
        if step[0] == "offer":
            items = [Item(t, n + j) for j, t in enumerate(step[1])]
            n += len(items)
            order.offer(items)
            ref.offer(items)
        elif step[0] == "take":
            got = order.take(step[1])
            assert got == ref.take(step[1])
            if got:
                running.append(got)
        elif step[0] == "end" and running:
            batch = running.pop(step[1] % len(running))
            skip = {i.tenant for i, s in zip(batch, step[2], strict=False) if s}
            skipped = [i for i in batch if i.tenant is not None and i.tenant in skip]
            order.done(batch, skipped)
            ref.done(batch, skipped)
        elif step[0] == "tick":
            clock.now += step[1]
        assert len(order) == len(ref.waiting)
        assert order.next_ready_in() == ref.next_ready_in()
