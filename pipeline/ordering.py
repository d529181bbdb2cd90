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
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
Clock = Callable[[], float]

# Backoff for items whose tenant another worker holds: first retry after FIRST_BACKOFF_S,
# doubling per consecutive skip up to MAX_BACKOFF_S (a flush holds heads ~0.05-0.5 s).
FIRST_BACKOFF_S = 0.005
MAX_BACKOFF_S = 0.2


@dataclass
class _Waiting(Generic[T]):
    item: T
    tenant: Hashable | None
    not_before: float = 0.0
    skips: int = 0


class TenantOrder(Generic[T]):
    """Items waiting for a flush, released so that each tenant's items stay in order and a
    tenant is in one flush at a time.

    Args:
        tenant_of: the item's tenant, or None for items that need no order (dead letters).
        clock: monotonic seconds.
    """

    def __init__(self, tenant_of: Callable[[T], Hashable | None],
                 clock: Clock = time.monotonic) -> None:  # fmt: skip
        self._tenant_of = tenant_of
        self._clock = clock
        self._waiting: list[_Waiting[T]] = []
        self._in_flight: Counter[Hashable] = Counter()
        self._skips: dict[int, int] = {}  # id(item) -> consecutive skips, while in flight

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def in_flight(self) -> frozenset[Hashable]:
        """Tenants in a running flush."""
        return frozenset(t for t, n in self._in_flight.items() if n)

    def offer(self, items: Iterable[T]) -> None:
        """Newly taken items, in the order the worker took them."""
        tenant_of = self._tenant_of
        self._waiting.extend(_Waiting(i, tenant_of(i)) for i in items)

    def take(self, max_items: int) -> list[T]:
        """Up to ``max_items`` items ready now, in order; their tenants become in flight.

        An item is ready when its tenant is not in flight, no earlier item of its tenant
        still waits, and its backoff (if it came back from a skip) has passed.
        """
        now = self._clock()
        blocked: set[Hashable] = set(self.in_flight)
        taken: list[_Waiting[T]] = []
        keep: list[_Waiting[T]] = []
        for w in self._waiting:
            if len(taken) >= max_items:
                keep.append(w)
                continue
            t = w.tenant
            if t is None:
                taken.append(w)
            elif t in blocked or w.not_before > now:
                blocked.add(t)  # newer items of t wait behind this one
                keep.append(w)
            else:
                taken.append(w)
        self._waiting = keep
        for t in {w.tenant for w in taken if w.tenant is not None}:
            self._in_flight[t] += 1
        for w in taken:
            if w.skips:
                self._skips[id(w.item)] = w.skips
        return [w.item for w in taken]

    def done(self, flushed: Sequence[T], skipped: Sequence[T]) -> None:
        """A flush of ``flushed`` (what :meth:`take` returned) ended; ``skipped`` (a subset,
        in order) were not stored because another worker held their tenant: they wait
        again, before every newer item of their tenant, after a backoff."""
        for t in {self._tenant_of(i) for i in flushed} - {None}:
            self._in_flight[t] -= 1
            if self._in_flight[t] <= 0:
                del self._in_flight[t]
        now = self._clock()
        back: list[_Waiting[T]] = []
        for item in skipped:
            skips = self._skips.pop(id(item), 0) + 1
            delay = min(FIRST_BACKOFF_S * 2 ** (skips - 1), MAX_BACKOFF_S)
            back.append(_Waiting(item, self._tenant_of(item), now + delay, skips))
        for item in flushed:
            self._skips.pop(id(item), None)
        # Skipped items are older than anything of their tenant still waiting (their
        # tenant was in flight, so newer items waited): they go first.
        self._waiting[:0] = back

    def next_ready_in(self) -> float | None:
        """Seconds until a waiting item whose tenant is free becomes ready (0: now), or
        None when every waiting item waits for a running flush (or nothing waits)."""
        now = self._clock()
        blocked = set(self.in_flight)
        soonest: float | None = None
        for w in self._waiting:
            if w.tenant is not None and w.tenant in blocked:
                continue
            left = max(0.0, w.not_before - now)
            soonest = left if soonest is None else min(soonest, left)
            if w.tenant is not None:
                blocked.add(w.tenant)
            if soonest == 0.0:
                break
        return soonest
