"""The search indexer: ``audit.search`` brought up to date right behind ingestion, in bulk.

A flush commits its events and chain heads without touching any full-text index. Every
``AUDIT_SEARCH_INDEX_INTERVAL_S`` each process running the indexer calls
``audit.index_search`` (``sql/009_search_index.sql``), which takes the indexer lease
itself (a transaction-scoped PostgreSQL advisory lock, :data:`LEASE_KEY`: one indexer at a
time whatever the number of workers or replicas; the others find it taken and skip the
round), reads which tenants' chain heads moved past their ``indexed_seq``, and indexes
their new events in one statement of at most about :data:`BATCH_ROWS` rows, tenants least
behind first. The round repeats while some stay due (a backfill after the migration is
many such short transactions, never one long one), then exports how far behind the index
is. ``q`` stays exact meanwhile: queries match the not-yet-indexed tail of a tenant by the
expression itself (``audit.search_keys``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import asyncpg

from infra.metrics import Metrics
from infra.settings import Settings

log = logging.getLogger(__name__)

LEASE_KEY = 0x6175_6469_7469_6478  # "auditidx", taken by audit.index_search itself
BATCH_ROWS = 20_000  # events per indexer transaction (~0.3-1 s on 2 cores)
MAX_STEPS = 50  # transactions per round before the next round (others get the lease too)


@dataclass(frozen=True)
class Lag:
    """How far the search index is behind the events committed."""

    events: int  # committed, not yet indexed
    seconds: float  # the oldest of them is younger than this (0: none)


async def read_lag(conn: asyncpg.Connection) -> Lag:
    """The index's lag, as ``audit.search_lag()`` reads it (any role, any tenant)."""
    row = await conn.fetchrow("SELECT events, seconds FROM audit.search_lag()")
    return Lag(int(row["events"]), float(row["seconds"]))


def lag_status(lag: Lag, degraded_after_s: float) -> str:
    """``ok``, or the ``degraded: ...`` line /readyz shows when the lag passed the bound.

    Never a reason to be unready: ``q`` stays exact while the index is behind (its tail is
    matched directly), only slower.
    """
    if lag.seconds <= degraded_after_s:
        return "ok"
    return (f"degraded: search index {lag.seconds:.0f}s behind ({lag.events} events; `q` "
            "stays exact, slower)")  # fmt: skip


class SearchIndexer:
    """Indexes new events while it holds the lease (see the module docstring).

    Args:
        settings: the interval.
        pool: app-role pool.
        metrics: where the lag goes (None: nowhere, e.g. in tests).
        batch_rows: events per transaction.
    """

    def __init__(self, settings: Settings, pool: asyncpg.Pool, metrics: Metrics | None = None,
                 batch_rows: int = BATCH_ROWS) -> None:  # fmt: skip
        self.settings = settings
        self.pool = pool
        self.metrics = metrics
        self.batch_rows = batch_rows
        self.indexed = 0
        self.lag: Lag | None = None  # last read by this process (None: another holds it)

    async def run(self, stop: asyncio.Event) -> None:
        """Index every interval until ``stop``. Errors are logged and retried next interval."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.search_index_interval_s)
            if stop.is_set():
                break
            try:
                await self.cycle()
            except Exception as exc:
                log.warning("search indexing failed (retrying next interval): %r", exc)
                with contextlib.suppress(Exception):
                    self._export(await self._read_lag())  # the lag still shows

    async def cycle(self) -> int | None:
        """One round: index until nothing is due (at most :data:`MAX_STEPS` transactions).

        Returns:
            The events indexed, or None when another process holds the lease.
        """
        total = 0
        for _ in range(MAX_STEPS):
            step = await self.step()
            if step is None:
                self.lag = None
                self._export(None)
                return None
            indexed, more = step
            total += indexed
            if not more:
                break
            await asyncio.sleep(0)  # a backfill shares the loop with the pipeline
        self.indexed += total
        self._export(await self._read_lag())
        return total

    async def step(self) -> tuple[int, bool] | None:
        """One indexer transaction: (events indexed, whether some stay due), or None when
        another process holds the lease."""
        started = time.monotonic()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT indexed, more FROM audit.index_search($1)",
                                      self.batch_rows)  # fmt: skip
        if row is None or row["indexed"] is None:
            return None
        indexed, more = int(row["indexed"]), bool(row["more"])
        if indexed:
            log.debug("indexed %d events in %.3fs%s", indexed, time.monotonic() - started,
                      " (more due)" if more else "")  # fmt: skip
        if self.metrics is not None:
            self.metrics.search_indexed.inc(indexed)
        return indexed, more

    async def _read_lag(self) -> Lag:
        async with self.pool.acquire() as conn:
            self.lag = await read_lag(conn)
        return self.lag

    def _export(self, lag: Lag | None) -> None:
        # The lease holder exports the lag; a process that found the lease taken exports 0
        # (take the max over processes), so an ex-holder leaves no stale value behind.
        if self.metrics is None:
            return
        self.metrics.search_lag_events.set(lag.events if lag else 0)
        self.metrics.search_lag_seconds.set(lag.seconds if lag else 0)
