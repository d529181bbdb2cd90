"""Per-tenant order of a worker's flushes, grouped in tenant buckets, as a pure class (no
I/O, an injected clock).

A worker runs several flushes at once, and several workers share the tenants. Three rules
keep every tenant's events in the order the worker took them, with no flush waiting on
another's locks and flushes that stay full-sized:

1. Tenants fall into :data:`BUCKETS` buckets by a stable hash (:func:`bucket_of`, the same
   in every process). Each flush takes *whole buckets* (the last one possibly in part),
   visiting them in a ring from where this worker's previous flush stopped, and hands
   them over in arrival order (cheaper to walk in memory). A bucket is
   in at most one running flush of the worker; its items wait until that flush is done.
   So the worker's concurrent flushes share no tenant, and each one covers a slice of the
   tenants instead of all of them (a flush over every tenant left the next one nothing to
   take: the second slot's and the second worker's flushes became small and many).
2. A flush that finds a tenant's chain head held by another worker skips that tenant
   (``pipeline.flush``: ``FOR UPDATE SKIP LOCKED``); its items come back through
   :meth:`TenantOrder.done` to the *front* of their bucket, which waits a short backoff
   (doubling while it keeps being skipped) while the ring moves on to other buckets.
3. Items without a tenant (dead letters) never wait: they go first.

Worked example (2 buckets: t in bucket 0, u in bucket 1; flush slots A and B):

    offer [t1, u1, t2]      take -> A gets [t1, u1, t2]        (buckets 0, 1 in flight)
    offer [t3, u2]          take -> nothing: both buckets in flight (B waits)
    A done, u busy (another worker held u's head): u1 back before u2, bucket 1 backs off
                            take -> B gets [t3]                (bucket 1 not due yet)
    5 ms later              take -> A gets [u1, u2]            (u1 first: order kept)
"""

from __future__ import annotations

import bisect
import heapq
import random
import time
import zlib
from collections.abc import Callable, Container, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
Clock = Callable[[], float]

# Backoff of a bucket whose items were skipped (another worker held a head): first retry
# after FIRST_BACKOFF_S, doubling per consecutive skip up to MAX_BACKOFF_S (a flush holds
# heads ~0.05-0.5 s).
FIRST_BACKOFF_S = 0.005
MAX_BACKOFF_S = 0.2

# Tenant buckets. More buckets: finer slices (two flushes collide less) but more buckets to
# visit per take; 64 keeps a take O(64) and a 5,000-event flush over 1,000 tenants at
# about a sixth of them when the worker holds 30,000 events.
BUCKETS = 64


def bucket_of(tenant: Hashable, buckets: int = BUCKETS) -> int:
    """The tenant's bucket: CRC-32 of its UTF-8 name modulo ``buckets`` (stable across
    processes and versions, unlike ``hash()``), so every worker slices tenants alike."""
    name = tenant if isinstance(tenant, str) else repr(tenant)
    return zlib.crc32(name.encode("utf-8", "surrogatepass")) % buckets


def _arrival(pair: tuple[int, object]) -> int:
    return pair[0]


class TenantOrder(Generic[T]):
    """Items waiting for a flush, released so that each tenant's items stay in order, a
    bucket of tenants is in one flush at a time, and concurrent flushes take disjoint
    slices of the tenants.

    Args:
        tenant_of: the item's tenant, or None for items that need no order (dead letters).
        clock: monotonic seconds.
        buckets: how many tenant buckets (:data:`BUCKETS`).
        start: the ring position of the first take (default: random, so that workers
            started together do not walk the ring in step).
    """

    def __init__(self, tenant_of: Callable[[T], Hashable | None],
                 clock: Clock = time.monotonic, *, buckets: int = BUCKETS,
                 start: int | None = None) -> None:  # fmt: skip
        if buckets < 1:
            raise ValueError("buckets must be at least 1")
        self._tenant_of = tenant_of
        self._clock = clock
        self._n = buckets
        # Each bucket's items as (arrival number, item), oldest first: a batch of several
        # buckets is put back in arrival order (objects allocated together are visited
        # together: the flush's per-item loops ran ~30% slower in bucket order).
        self._queues: list[list[tuple[int, T]]] = [[] for _ in range(buckets)]
        self._arrivals = 0
        self._dead: list[T] = []
        self._flying = [0] * buckets  # running flushes holding each bucket
        self._not_before = [0.0] * buckets  # backoff of a skipped bucket
        self._skips = [0] * buckets  # consecutive skips of each bucket
        self._next = random.randrange(buckets) if start is None else start % buckets
        self._waiting = 0
        self._bucket_cache: dict[Hashable, int] = {}
        # id(batch) -> (the batch, its buckets, its arrival numbers), take() until done()
        self._flights: dict[int, tuple[list[T], list[int], list[int]]] = {}

    def __len__(self) -> int:
        return self._waiting

    @property
    def in_flight(self) -> frozenset[int]:
        """Buckets in a running flush."""
        return frozenset(b for b, n in enumerate(self._flying) if n)

    def _bucket(self, tenant: Hashable) -> int:
        cache = self._bucket_cache
        b = cache.get(tenant)
        if b is None:
            if len(cache) >= 100_000:  # bounded memory: start over
                cache.clear()
            b = cache[tenant] = bucket_of(tenant, self._n)
        return b

    def offer(self, items: Iterable[T]) -> None:
        """Newly taken items, in the order the worker took them."""
        queues, dead, tenant_of, bucket = self._queues, self._dead, self._tenant_of, self._bucket
        n = self._arrivals
        for item in items:
            t = tenant_of(item)
            if t is None:
                dead.append(item)
            else:
                queues[bucket(t)].append((n, item))
            n += 1
        self._waiting += n - self._arrivals
        self._arrivals = n

    def ready(self) -> list[tuple[int, int]]:
        """The buckets :meth:`take` could take now, in the order it would: ``(bucket,
        items waiting)`` in ring order (to claim them first; see ``only``)."""
        now = self._clock()
        queues, flying, not_before, n = self._queues, self._flying, self._not_before, self._n
        out = []
        for k in range(self._next, self._next + n):
            b = k if k < n else k - n
            q = queues[b]
            if q and not flying[b] and not_before[b] <= now:
                out.append((b, len(q)))
        return out

    def backoff(self, buckets: Iterable[int], cap: float = MAX_BACKOFF_S) -> None:
        """``buckets`` were found held elsewhere (another worker flushes them): wait a
        backoff (at most ``cap``) before offering them again, as a skipped bucket does."""
        now = self._clock()
        for b in buckets:
            self._skips[b] += 1
            self._not_before[b] = now + min(FIRST_BACKOFF_S * 2 ** (self._skips[b] - 1),
                                            cap)  # fmt: skip

    def take(self, max_items: int, only: Container[int] | None = None,
             oldest: bool = False) -> list[T]:  # fmt: skip
        """Up to ``max_items`` items ready now: dead letters first, then whole ready buckets
        in ring order (the last one possibly in part); their buckets become in flight.

        A bucket is ready when it has items, is in no running flush, and its backoff (if
        its items were skipped) has passed; with ``only``, it must also be one of those
        (buckets claimed for this flush). Each bucket's items come in offer order.

        ``oldest``: instead of whole buckets, the oldest ``max_items`` of every ready
        bucket (a worker alone: items offered together are flushed together, which walks
        memory in order; measured 16 -> 11 µs of worker CPU per event), every bucket
        that gave one in flight.
        """
        dead: list[T] = []
        if self._dead:
            dead = self._dead[:max_items]
            del self._dead[:max_items]
        pairs: list[tuple[int, T]] = []
        queues, flying, n = self._queues, self._flying, self._n
        now = self._clock()
        not_before = self._not_before
        held: list[int] = []
        if oldest:
            return self._take_oldest(max_items - len(dead), dead, only, now)
        b = self._next
        for _ in range(n):
            room = max_items - len(dead) - len(pairs)
            if room <= 0:
                break
            q = queues[b]
            if q and not flying[b] and not_before[b] <= now and (only is None or b in only):
                self._cut(b, room, pairs, held)
            b = b + 1 if b + 1 < n else 0
        if len(held) > 1:
            pairs.sort()  # arrival order (numbers are unique: items never compared)
        if held:
            self._next = held[-1] + 1 if held[-1] + 1 < n else 0
        return self._hand_over(dead, pairs, held)

    def _cut(self, b: int, k: int, pairs: list[tuple[int, T]], held: list[int]) -> None:
        """Move the first ``k`` items of bucket ``b`` into ``pairs``; ``b`` is in flight."""
        q = self._queues[b]
        if k >= len(q):
            pairs += q
            self._queues[b] = []
        else:
            pairs += q[:k]
            del q[:k]
        held.append(b)
        self._flying[b] += 1

    def _hand_over(self, dead: list[T], pairs: list[tuple[int, T]], held: list[int]) -> list[T]:
        """The batch of ``dead`` then ``pairs``' items, recorded as a flight of ``held``."""
        taken = dead + [item for _, item in pairs] if dead else [item for _, item in pairs]
        self._waiting -= len(taken)
        if taken:
            self._flights[id(taken)] = (taken, held, [a for a, _ in pairs])
        return taken

    def _take_oldest(self, room: int, dead: list[T], only: Container[int] | None,
                     now: float) -> list[T]:  # fmt: skip
        queues, flying, not_before = self._queues, self._flying, self._not_before
        ready = [queues[b] for b in range(self._n) if queues[b] and not flying[b]
                 and not_before[b] <= now and (only is None or b in only)]  # fmt: skip
        cut = 0
        if ready and room > 0:
            # The arrival number ``cut`` below which the ready buckets hold at most
            # ``room`` items, found by bisection (each bucket is in arrival order).
            lo, hi = min(q[0][0] for q in ready), max(q[-1][0] for q in ready) + 1
            if sum(map(len, ready)) <= room:
                lo = hi
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if sum(bisect.bisect_left(q, mid, key=_arrival) for q in ready) <= room:
                    lo = mid
                else:
                    hi = mid
            cut = lo
        pairs: list[tuple[int, T]] = []
        held: list[int] = []
        for b in range(self._n):
            q = queues[b]
            if not q or q[0][0] >= cut or flying[b] or not_before[b] > now:
                continue
            if only is not None and b not in only:
                continue
            self._cut(b, bisect.bisect_left(q, cut, key=_arrival), pairs, held)
        # Back into arrival order (0.1 µs/item: Timsort merges the buckets' runs): the
        # flush's per-item loops walk memory in allocation order, ~0.7 µs/item cheaper
        # than bucket by bucket.
        pairs.sort()
        return self._hand_over(dead, pairs, held)

    def rebind(self, taken: list[T], batch: list[T]) -> None:
        """``batch`` stands for ``taken`` (what :meth:`take` returned) from now on: the same
        items in the same order, some replaced (the worker prepares pending messages when
        a flush takes them); :meth:`done` is then called with ``batch`` and items of it."""
        if batch is taken:
            return
        if len(batch) != len(taken):
            raise ValueError("a rebound batch must have one item per taken item")
        flight = self._flights.pop(id(taken), None)
        if flight is not None and flight[0] is taken:
            self._flights[id(batch)] = (batch, flight[1], flight[2])
        elif flight is not None:  # another list at that address: not ours
            self._flights[id(flight[0])] = flight

    def done(self, flushed: Sequence[T], skipped: Sequence[T]) -> None:
        """A flush of ``flushed`` (what :meth:`take` returned) ended; ``skipped`` (a subset,
        in order) were not stored because another worker held their tenant: they go back
        to the front of their buckets (older than anything of theirs still waiting: the
        bucket was in flight, so newer items waited), which back off before the next try."""
        flight = self._flights.pop(id(flushed), None)
        arrival: dict[int, int] = {}
        if flight is not None and flight[0] is flushed:
            held, arrivals = flight[1], flight[2]
            if skipped:  # the batch's bucketed part is its tail (dead letters lead)
                tail = flushed[len(flushed) - len(arrivals) :]
                arrival = {id(i): a for i, a in zip(tail, arrivals, strict=True)}
        else:
            if flight is not None:  # another list at that address: not ours to drop
                self._flights[id(flight[0])] = flight
            held = sorted({self._bucket(t) for i in flushed
                           if (t := self._tenant_of(i)) is not None})  # fmt: skip
        for b in held:
            self._flying[b] -= 1
        back: dict[int, list[T]] = {}
        for item in skipped:
            t = self._tenant_of(item)
            if t is None:  # (never skipped by a store; kept rather than lost)
                self._dead.append(item)
                self._waiting += 1
                continue
            back.setdefault(self._bucket(t), []).append(item)
        for b in held:
            if b not in back:
                self._skips[b] = 0
        for b, items in back.items():
            q = self._queues[b]
            # Their own arrival numbers, or (not taken from here) numbers just below the
            # bucket's oldest. A bucket stays in arrival order (take's bisection needs it):
            # skipped items are older than anything of their bucket still waiting (it was
            # in flight), but an item that waited in another tenant's bucket (a rebound
            # misfit) may not be, so it is merged into its place.
            below = (q[0][0] if q else self._arrivals) - len(items)
            pairs = sorted([(arrival.get(id(item), below + k), item)
                            for k, item in enumerate(items)], key=_arrival)  # fmt: skip
            if not q or pairs[-1][0] < q[0][0]:
                q[:0] = pairs
            else:
                self._queues[b] = list(heapq.merge(pairs, q, key=_arrival))
            self._waiting += len(items)
        self.backoff(back)

    def next_ready_in(self) -> float | None:
        """Seconds until a waiting item becomes ready (0: now), or None when every waiting
        item waits for a running flush of its bucket (or nothing waits)."""
        if self._dead:
            return 0.0
        now = self._clock()
        soonest: float | None = None
        for q, flying, not_before in zip(self._queues, self._flying, self._not_before,
                                         strict=True):  # fmt: skip
            if q and not flying:
                left = not_before - now if not_before > now else 0.0
                if left == 0.0:
                    return 0.0
                soonest = left if soonest is None else min(soonest, left)
        return soonest
