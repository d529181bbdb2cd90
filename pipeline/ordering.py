"""Per-tenant order of a worker's flushes, as a pure class (no I/O, an injected clock).

A worker runs several flushes at once, and several workers share the tenants. Two rules
keep every tenant's events in the order the worker took them without any flush waiting
on another's locks:

1. Inside the worker, a tenant is in at most one running flush. Items of a tenant that
   is in flight wait here until that flush is done.
2. A flush that finds a tenant's chain head held by another worker skips that tenant
   (``pipeline.flush``: ``FOR UPDATE SKIP LOCKED``); its items come back through
   :meth:`TenantOrder.done` and are offered again after a short backoff, *before* any
   newer item of the same tenant.

Worked example (flush slots A and B, tenants t and u; ``t1`` is t's first item):

    offer [t1, u1, t2]      take -> A gets [t1, u1, t2]        (t, u in flight)
    offer [t3, u2]          take -> nothing: t and u in flight (B waits)
    A done, u busy (another worker held u's head): u1 comes back, ready in 10 ms
                            take -> B gets [t3]                (u1 not due; u2 behind it)
    10 ms later             take -> A gets [u1, u2]            (u1 first: order kept)

Items without a tenant (dead letters) never wait.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
Clock = Callable[[], float]

# Backoff for items whose tenant another worker holds: first retry after FIRST_BACKOFF_S,
# doubling per consecutive skip up to MAX_BACKOFF_S (a flush holds heads ~0.05-0.5 s).
FIRST_BACKOFF_S = 0.005
MAX_BACKOFF_S = 0.2


class TenantOrder(Generic[T]):
    """Items waiting for a flush, released so that each tenant's items stay in order and a
    tenant is in one flush at a time.

    Per batch, not per item, where it can be: items wait in a list beside a list of their
    tenants; only items that came back from a skip carry a backoff (by ``id``), and with
    none of those and no flush running, :meth:`take` is two slices.

    Args:
        tenant_of: the item's tenant, or None for items that need no order (dead letters).
        clock: monotonic seconds.
    """

    def __init__(self, tenant_of: Callable[[T], Hashable | None],
                 clock: Clock = time.monotonic) -> None:  # fmt: skip
        self._tenant_of = tenant_of
        self._clock = clock
        self._items: list[T] = []
        self._tenants: list[Hashable | None] = []  # the items' tenants, same positions
        self._retry: dict[int, tuple[float, int]] = {}  # id(item) -> (not before, skips)
        self._in_flight: Counter[Hashable] = Counter()
        self._skips: dict[int, int] = {}  # id(item) -> consecutive skips, while in flight
        # id(batch) -> (the batch, its tenants), from take() until done()
        self._flights: dict[int, tuple[list[T], set[Hashable]]] = {}
        # While no flush ends or starts, waiting items found not ready stay so: the next
        # take() looks only at items offered since (the worker calls it per arriving chunk).
        self._scanned = 0  # items[:_scanned] were looked at and are not ready
        self._scan_blocked: set[Hashable | None] = set()  # their tenants, and those in flight

    def __len__(self) -> int:
        return len(self._items)

    @property
    def in_flight(self) -> frozenset[Hashable]:
        """Tenants in a running flush."""
        return frozenset(t for t, n in self._in_flight.items() if n)

    def offer(self, items: Iterable[T]) -> None:
        """Newly taken items, in the order the worker took them."""
        items = list(items)
        self._items.extend(items)
        self._tenants.extend(map(self._tenant_of, items))

    def take(self, max_items: int) -> list[T]:
        """Up to ``max_items`` items ready now, in order; their tenants become in flight.

        An item is ready when its tenant is not in flight, no earlier item of its tenant
        still waits, and its backoff (if it came back from a skip) has passed.
        """
        items, tenants = self._items, self._tenants
        if not self._retry and not self._in_flight:  # all ready: the first max_items
            taken, taken_tenants = items[:max_items], tenants[:max_items]
            del items[:max_items], tenants[:max_items]
        else:
            taken, taken_tenants = self._take_ready(max_items)
        if not taken:
            return taken
        flying = set(taken_tenants)
        flying.discard(None)
        for t in flying:
            self._in_flight[t] += 1
        if self._retry:
            for item in taken:
                back = self._retry.pop(id(item), None)
                if back is not None:
                    self._skips[id(item)] = back[1]
        self._flights[id(taken)] = (taken, flying)
        return taken

    def _take_ready(self, max_items: int) -> tuple[list[T], list[Hashable | None]]:
        now = self._clock()
        retry = self._retry
        items, tenants = self._items, self._tenants
        if retry or not self._scanned:  # (backoffs expire with time: look at everything)
            first, blocked = 0, set(self.in_flight)
        else:
            first, blocked = self._scanned, self._scan_blocked
        for t in tenants[first:]:  # the first ready item, if any
            if t is None:
                break
            back = retry.get(id(items[first])) if retry else None
            if t not in blocked and (back is None or back[0] <= now):
                break
            blocked.add(t)
            first += 1
        else:
            self._scanned, self._scan_blocked = (0, set()) if retry else (first, blocked)
            return [], []
        self._scanned = 0
        taken: list[T] = []
        taken_tenants: list[Hashable | None] = []
        keep: list[T] = items[:first]
        keep_tenants: list[Hashable | None] = tenants[:first]
        for i, (item, t) in enumerate(zip(items[first:], tenants[first:], strict=True), first):
            if len(taken) >= max_items:
                keep += items[i:]
                keep_tenants += tenants[i:]
                break
            if t is not None:
                back = retry.get(id(item)) if retry else None
                if t in blocked or (back is not None and back[0] > now):
                    blocked.add(t)  # newer items of t wait behind this one
                    keep.append(item)
                    keep_tenants.append(t)
                    continue
            taken.append(item)
            taken_tenants.append(t)
        self._items, self._tenants = keep, keep_tenants
        return taken, taken_tenants

    def done(self, flushed: Sequence[T], skipped: Sequence[T]) -> None:
        """A flush of ``flushed`` (what :meth:`take` returned) ended; ``skipped`` (a subset,
        in order) were not stored because another worker held their tenant: they wait
        again, before every newer item of their tenant, after a backoff."""
        self._scanned = 0
        flight = self._flights.pop(id(flushed), None)
        if flight is not None and flight[0] is flushed:
            tenants = flight[1]
        else:
            if flight is not None:  # another list at that address: not ours to drop
                self._flights[id(flight[0])] = flight
            tenants = {self._tenant_of(i) for i in flushed} - {None}
        for t in tenants:
            self._in_flight[t] -= 1
            if self._in_flight[t] <= 0:
                del self._in_flight[t]
        now = self._clock()
        back: list[T] = []
        for item in skipped:
            skips = self._skips.pop(id(item), 0) + 1
            delay = min(FIRST_BACKOFF_S * 2 ** (skips - 1), MAX_BACKOFF_S)
            self._retry[id(item)] = (now + delay, skips)
            back.append(item)
        if self._skips:
            for item in flushed:
                self._skips.pop(id(item), None)
        # Skipped items are older than anything of their tenant still waiting (their
        # tenant was in flight, so newer items waited): they go first.
        if back:
            self._items[:0] = back
            self._tenants[:0] = map(self._tenant_of, back)

    def next_ready_in(self) -> float | None:
        """Seconds until a waiting item whose tenant is free becomes ready (0: now), or
        None when every waiting item waits for a running flush (or nothing waits)."""
        if not self._retry and self._scanned == len(self._items):
            return None  # take() just found every waiting item behind a running flush
        now = self._clock()
        blocked = set(self.in_flight)
        retry = self._retry
        soonest: float | None = None
        for item, t in zip(self._items, self._tenants, strict=True):
            if t is not None and t in blocked:
                continue
            back = retry.get(id(item)) if retry else None
            left = max(0.0, back[0] - now) if back is not None else 0.0
            soonest = left if soonest is None else min(soonest, left)
            if t is not None:
                blocked.add(t)
            if soonest == 0.0:
                break
        return soonest
