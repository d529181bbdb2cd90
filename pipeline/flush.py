"""PostgreSQL adapter of the flush stage: one transaction per batch, binary COPY, hash chain.

Per batch, in one transaction:

0. (before the transaction, once per new tenant) make its chain-head row, committed at
   once, so no transaction ever waits on another's uncommitted head insert;
1. lock the chain heads of the batch's tenants that no other transaction holds
   (``SELECT .. FOR UPDATE SKIP LOCKED``): a flush never waits for another flush's heads.
   The tenants whose heads are busy are left out entirely (nothing of theirs is claimed
   or written) and reported in :attr:`FlushResult.busy`; the worker offers their events
   again in a later flush, in order (``pipeline.ordering``);
2. claim ``(tenant_id, id)`` of the remaining events in ``audit.event_ids``: an
   optimistic binary COPY (in a savepoint; duplicates are rare), else ``INSERT .. ON
   CONFLICT DO NOTHING RETURNING``. Keys that already exist are duplicates (redeliveries,
   replays, other workers) and are dropped. Two transactions can only claim the same key
   for the same tenant, and only the one holding that tenant's head claims at all, so
   claims never wait on each other either;
3. chain the new events: per-tenant ``seq`` and SHA-256 over canonical bytes prepared
   before the transaction (one hash per event while the heads are locked);
4. binary-COPY them into their month partitions, and move the chain heads.

Claims and rows go to PostgreSQL grouped by tenant, each tenant's in batch order
(``pipeline.chain.claims_copy``/``chain_copy``): every index of both tables leads with
``tenant_id``, so consecutive inserts share B-tree leaf pages.

The head row lock stays the correctness mechanism (one tenant's chain is a total order);
skipping busy heads only keeps flushes of different tenants from queueing behind each
other. Skips are rare: before taking a batch, a worker claims its tenant buckets
(``pipeline.bucket_claims``), so concurrent flushes of different workers hold different
tenants to begin with. The worker acknowledges the source only after
:meth:`PgStore.write` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from infra.errors import StorageUnavailable
from pipeline import fastpath
from pipeline.chain import Prepared, month_of
from pipeline.copy_binary import CLAIM_COLUMNS
from pipeline.sinks import FlushResult, RefusedRowError, RetryableStoreError, StoreError
from pipeline.stages import Valid
from schemas.canonical import GENESIS
from schemas.events import AuditEvent
from schemas.ids import EPOCH, EventKey
from schemas.rows import COLUMNS

log = logging.getLogger(__name__)

# 22 data exceptions, 23 integrity (other than the duplicates we handle), 54 limits.
_ROW_CLASSES = ("22", "23", "54")

_MAKE_HEADS = """
INSERT INTO audit.chain_heads (tenant_id, last_seq, last_hash)
SELECT t, 0, $2::bytea FROM unnest($1::text[]) AS t ORDER BY t
ON CONFLICT (tenant_id) DO NOTHING
"""
_LOCK_FREE_HEADS = """
SELECT tenant_id, last_seq, last_hash FROM audit.chain_heads
WHERE tenant_id = ANY($1::text[]) ORDER BY tenant_id
FOR UPDATE SKIP LOCKED
"""
_CLAIM_IDS = """
INSERT INTO audit.event_ids (tenant_id, id, occurred_at)
SELECT * FROM unnest($1::text[], $2::uuid[], $3::timestamptz[]) AS u(t, i, o) ORDER BY t
ON CONFLICT DO NOTHING
RETURNING tenant_id, id
"""
# The new heads as one JSON parameter ([[tenant, seq, hash in hex], ...]), not three
# arrays: asyncpg checks every element of an array parameter against three ABCs
# (isinstance: ~0.3 µs each), 3 elements per tenant per flush, ~3% of a worker's CPU.
_MOVE_HEADS = """
UPDATE audit.chain_heads AS h
SET last_seq = (u.e->>1)::bigint, last_hash = decode(u.e->>2, 'hex'), updated_at = now()
FROM json_array_elements($1::json) AS u(e)
WHERE h.tenant_id = u.e->>0
"""


_KEY = operator.attrgetter("tenant_id", "id")  # an EventKey
_JSON = msgspec.json.Encoder()

# From this many events on, claiming by COPY (in a savepoint) beats INSERT .. ON CONFLICT.
COPY_CLAIM_MIN = 500


def partition_name(ts: datetime) -> str:
    """Name of the month partition holding ``ts`` (UTC), as ``audit.ensure_partition`` makes."""
    ts = ts.astimezone(UTC)
    return f"events_{ts.year:04d}_{ts.month:02d}"


def month_partition(month: int) -> str:
    """:func:`partition_name` of a month given as ``pipeline.chain.month_of`` counts it."""
    return f"events_{month // 12:04d}_{month % 12 + 1:02d}"


def _month(item: AuditEvent | Prepared) -> int:
    if isinstance(item, Prepared):
        return month_of(item.occurred_us)
    ts = item.occurred_at
    assert ts is not None
    ts = ts.astimezone(UTC)
    return ts.year * 12 + ts.month - 1


def classify(exc: BaseException) -> type[StoreError]:
    """What a storage error means for the events: :class:`RetryableStoreError` (try the
    same events again later) or :class:`RefusedRowError` (some event's data is refused).

    Decided by exception class and SQLSTATE, never by message text:

    - retryable: the connection or the server (OSError, timeouts, asyncpg interface
      errors, SQLSTATE classes 08, 53, 57, 40, 55) and errors of the service's own set-up
      that no event causes (permissions, missing objects, internal errors): nothing is
      refused for these, the events wait in JetStream;
    - refused: data exceptions, integrity and limit violations (22, 23, 54) and values
      asyncpg cannot encode (``asyncpg.DataError``, Python ``ValueError``/``TypeError``):
      the batch is split until the refused events are found and dead-lettered.
    """
    if isinstance(exc, asyncpg.DataError):  # client-side encoding of one value
        return RefusedRowError
    if isinstance(exc, OSError | asyncpg.InterfaceError | StorageUnavailable):
        return RetryableStoreError
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", "") or ""
        if state.startswith(_ROW_CLASSES):
            return RefusedRowError
        return RetryableStoreError
    if isinstance(exc, ValueError | TypeError | OverflowError | UnicodeError):
        return RefusedRowError
    return RetryableStoreError


def describe(exc: BaseException) -> str:
    """One line naming a storage error: SQLSTATE (when PostgreSQL's) and message."""
    state = getattr(exc, "sqlstate", None)
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{state}: {text}" if state else f"{type(exc).__name__}: {text}"


class PartitionCache:
    """Remembers which month partitions exist; creates missing ones outside the batch txn."""

    def __init__(self) -> None:
        self._known: set[str] = set()

    async def ensure(self, pool: asyncpg.Pool,
                     events: Iterable[AuditEvent | Prepared]) -> dict[str, str]:  # fmt: skip
        """Make sure every month of ``events`` (enriched events, or prepared ones) has a
        partition (idempotent, concurrent-safe).

        Returns:
            partition name → why it cannot be made, for months PostgreSQL refuses for good
            (:func:`classify`: :class:`RefusedRowError`); their events cannot be stored.

        Raises:
            Exception: a transient error (:class:`RetryableStoreError`): try again later.
        """
        items = events if isinstance(events, list) else list(events)
        occurred = [p.occurred_us for p in items if isinstance(p, Prepared)]
        if (
            len(occurred) == len(items)
            and occurred
            and month_of(min(occurred)) == month_of(max(occurred))
        ):
            months = {month_of(occurred[0])}  # the usual batch: one month, found per batch
        else:
            months = {_month(ev) for ev in items}
        missing = {
            name: datetime(m // 12, m % 12 + 1, 1, tzinfo=UTC)
            for m in months
            if (name := month_partition(m)) not in self._known
        }
        refused: dict[str, str] = {}
        if not missing:
            return refused
        async with pool.acquire() as conn:
            for name, ts in missing.items():
                try:
                    await conn.execute("SELECT audit.ensure_partition($1)", ts)
                except Exception as exc:
                    if classify(exc) is not RefusedRowError:
                        raise
                    refused[name] = f"partition {name} cannot be created: {describe(exc)}"
                    continue
                self._known.add(name)
        return refused


class HeadCache:
    """Tenants known to have a chain-head row (rows are never deleted), so the insert that
    makes one runs once per new tenant and process, outside any batch transaction."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self._known: set[str] = set()
        self._limit = limit

    async def ensure(self, conn: asyncpg.Connection, tenants: list[str]) -> None:
        """Make the missing head rows (committed at once when ``conn`` is not in a
        transaction; concurrent makers of the same row wait only for that statement)."""
        new = [t for t in tenants if t not in self._known]
        if not new:
            return
        await conn.execute(_MAKE_HEADS, new, GENESIS)
        if len(self._known) + len(new) > self._limit:  # bounded memory: start over
            self._known.clear()
        self._known.update(new)


async def _lock_free_heads(conn: asyncpg.Connection,
                           tenants: list[str]) -> dict[str, tuple[int, bytes]]:  # fmt: skip
    """Lock the heads of ``tenants`` that no other transaction holds; skip the rest."""
    rows = await conn.fetch(_LOCK_FREE_HEADS, tenants)
    return {r["tenant_id"]: (r["last_seq"], bytes(r["last_hash"])) for r in rows}


async def _claim(conn: asyncpg.Connection, items: Sequence[Prepared]) -> set[EventKey] | None:
    """Claim the batch's keys; return the keys claimed, or None when all were new."""
    # Grouped by tenant (claims_copy), not sorted by key: keys collide between workers
    # only for redeliveries, and a rare deadlock is detected by PostgreSQL (40P01) and
    # the batch retried.
    if len(items) >= COPY_CLAIM_MIN:
        try:
            async with conn.transaction():  # a savepoint
                await conn.copy_to_table(
                    "event_ids", source=memoryview(fastpath.claims_copy(items)),
                    columns=CLAIM_COLUMNS, schema_name="audit", format="binary",
                )  # fmt: skip
            return None
        except asyncpg.UniqueViolationError:
            pass
    # Small batches (or a collision): one statement, no savepoint round trips.
    claimed = await conn.fetch(
        _CLAIM_IDS, [p.tenant_id for p in items], [p.id for p in items],
        [EPOCH + timedelta(microseconds=p.occurred_us) for p in items],
    )  # fmt: skip
    return {(r["tenant_id"], r["id"]) for r in claimed}


async def move_heads(conn: asyncpg.Connection,
                     moved: Mapping[str, tuple[int, bytes]]) -> None:  # fmt: skip
    """Move the chain heads of ``moved`` (tenant -> (last seq, last hash)), in the
    transaction holding them."""
    rows = [(tenant, seq, digest.hex()) for tenant, (seq, digest) in moved.items()]
    await conn.execute(_MOVE_HEADS, _JSON.encode(rows).decode())


async def write_batch(conn: asyncpg.Connection, items: Sequence[Prepared],
                      heads_made: HeadCache | None = None) -> FlushResult:  # fmt: skip
    """Store ``items`` (prepared, unique within the batch) in one transaction on ``conn``,
    except those of tenants whose chain head another transaction holds (``result.busy``:
    nothing of theirs is written; store them again later, in the same order).

    Raises:
        asyncpg.PostgresError / OSError: the transaction rolled back; :func:`classify` it.
    """
    result = FlushResult()
    if not items:
        return result
    tenants = sorted({p.tenant_id for p in items})
    await (heads_made or HeadCache()).ensure(conn, tenants)
    async with conn.transaction():
        heads = await _lock_free_heads(conn, tenants)
        if len(heads) < len(tenants):
            result.busy.update(t for t in tenants if t not in heads)
            items = [p for p in items if p.tenant_id in heads]
            if not items:
                return result
        claimed = await _claim(conn, items)
        if claimed is not None:
            fresh = []
            for p in items:
                key = (p.tenant_id, p.id)
                if key in claimed:
                    fresh.append(p)
                else:
                    result.duplicates.append(key)
            items = fresh
        if not items:
            return result
        by_month, moved = fastpath.chain_copy(items, heads)
        for month, data in by_month.items():
            await conn.copy_to_table(month_partition(month), source=memoryview(data),
                                     columns=COLUMNS, schema_name="audit",
                                     format="binary")  # fmt: skip
        await move_heads(conn, moved)
    result.stored = list(map(_KEY, items))
    result.oldest_received_us = min(p.received_us for p in items)
    return result


class PgStore:
    """The PostgreSQL :class:`~pipeline.sinks.Store`: partitions made ahead of the batch's
    transaction, then :func:`write_batch`; errors raised as the :class:`StoreError`
    subclass :func:`classify` picks.

    The connections of its flushes are kept between flushes (as many as ran at once, up
    to the pool's size less two), not handed back to the pool after each one: the pool
    resets what it gets back (``RESET ALL``, ``pg_advisory_unlock_all()``, ``UNLISTEN
    *``, ``CLOSE ALL``), one more round trip and statement per flush, which a flush (a
    transaction that commits or rolls back, and sets nothing for the session) does not
    need. A connection whose flush failed goes back to the pool (reset or dropped
    there); :meth:`close` hands the kept ones back.

    Args:
        pool: asyncpg pool connected with the app role.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.partitions = PartitionCache()
        self.heads = HeadCache()
        self._kept: list[Any] = []  # idle connections between flushes
        # At most this many kept: the pool's other users (bucket claims keep one; the
        # search indexer, partitions, leases borrow one) always find one free.
        self._keep_max = max(0, pool.get_max_size() - 2)

    async def write(self, items: Sequence[Valid]) -> tuple[FlushResult, list[tuple[Valid, str]]]:
        """See :meth:`pipeline.sinks.Store.write`."""
        try:
            prepared = [v.prepared for v in items]
            refused = await self.partitions.ensure(self.pool, prepared)
            out: list[tuple[Valid, str]] = []
            if refused:
                keep = []
                for v in items:
                    why = refused.get(month_partition(month_of(v.prepared.occurred_us)))
                    if why is None:
                        keep.append(v)
                    else:
                        out.append((v, why))
                prepared = [v.prepared for v in keep]
            if not prepared:
                return FlushResult(), out
            conn = self._kept.pop() if self._kept else await self.pool.acquire()
            try:
                result = await write_batch(conn, prepared, self.heads)
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.pool.release(conn))
                raise
            if len(self._kept) < self._keep_max:
                self._kept.append(conn)
            else:
                await self.pool.release(conn)
            return result, out
        except Exception as exc:
            raise classify(exc)(describe(exc)) from exc

    async def close(self) -> None:
        """Hand the kept connections back to the pool (see :meth:`pipeline.sinks.Store.close`)."""
        kept, self._kept = self._kept, []
        for conn in kept:
            with contextlib.suppress(Exception):
                await self.pool.release(conn)
