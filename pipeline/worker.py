"""A pipeline worker: source → process (validate+enrich) → take → dedupe+flush → ack.

One worker owns one source subscription and one flush loop. The agents are composed as
Faust composes them: ``process`` is an agent over the source stream; ``take`` groups its
output into micro-batches; the flush agent stores each batch in one transaction, then
dead-letters what PostgreSQL refused, acks every message of the batch, and tells
waiters (the synchronous write API) which ids committed. Fetching and decoding the next
batch overlaps with flushing the current one (a :class:`TakeBuffer` between them grows
the next batch while a flush runs, up to ``batch_max_events``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
from nats.aio.client import Client

from pipeline.agents import Agent, Stream, TakeBuffer
from pipeline.dlq import dead_letter_headers
from pipeline.flush import FlushResult, PartitionCache, classify, find_rejected, write_batch
from pipeline.metrics import Metrics
from pipeline.settings import Settings
from pipeline.stages import Dead, Deduplicator, Message, Valid, process

log = logging.getLogger(__name__)

Key = tuple[str, uuid.UUID]
Now = Callable[[], datetime]


class Source(Protocol):
    """What the worker needs of a source (JetStream today; Kafka fits the same shape)."""

    async def start(self) -> None: ...
    def chunks(self) -> AsyncIterator[list[Message]]: ...
    async def ack(self, msgs: list[Message]) -> None: ...
    async def in_progress(self, msgs: list[Message]) -> None: ...
    async def stop(self) -> None: ...


# (stored keys, duplicate keys, rejected (key, reason)) after each batch.
CommitListener = Callable[[list[Key], list[Key], list[tuple[Key, str]]], Awaitable[None]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Worker:
    """Runs the agents for one source until :meth:`stop`.

    Args:
        settings: batch sizes, subjects, timeouts.
        pool: asyncpg pool connected with the app role.
        nc: NATS client (dead letters are published with it).
        source: where messages come from.
        metrics: where counts go.
        on_commit: called with (stored keys, duplicate keys) after each commit.
        now: wall clock for received_at fallbacks and dead-letter times.
    """

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        nc: Client,
        source: Source,
        metrics: Metrics,
        on_commit: CommitListener | None = None,
        now: Now = _utcnow,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.nc = nc
        self.source = source
        self.metrics = metrics
        self.on_commit = on_commit
        self.now = now
        self.dedup = Deduplicator(settings.dedup_window)
        self.partitions = PartitionCache()
        self.totals = {"stored": 0, "duplicates": 0, "dead_lettered": 0}
        self._take: TakeBuffer[Valid | Dead] = TakeBuffer(
            settings.batch_max_events, settings.batch_max_latency_ms / 1000
        )
        self._stopped = asyncio.Event()

    # -- agents ---------------------------------------------------------------------------
    async def _process(self, stream: Stream[Any]) -> AsyncIterator[list[Any]]:
        received = self.metrics.received.labels("process")
        async for chunk in stream:
            now = self.now()
            received.inc(len(chunk))
            yield [process(m, now) for m in chunk]

    async def _produce(self) -> None:
        stream = Agent("process", self._process)(Stream(self.source.chunks(), "source"))
        try:
            async for chunk in stream:
                self._take.put(chunk)
        finally:
            self._take.close()

    async def _consume(self) -> None:
        # Up to flush_concurrency transactions at once: small batches are bound by round
        # trips and fsync, which overlap well; the chain-head row locks keep per-tenant
        # order whatever interleaves.
        slots = asyncio.Semaphore(self.settings.flush_concurrency)
        running: set[asyncio.Task[None]] = set()
        while batch := await self._take.get():
            await slots.acquire()
            for task in [t for t in running if t.done()]:
                running.discard(task)
                task.result()  # a flush that failed for good stops the worker
            task = asyncio.create_task(self._flush_slot(batch, slots), name="flush")
            running.add(task)
        if running:
            await asyncio.gather(*running)

    async def _flush_slot(self, batch: list[Valid | Dead], slots: asyncio.Semaphore) -> None:
        try:
            await self.handle(batch)
        finally:
            slots.release()

    async def run(self) -> None:
        """Start the source and run until it is stopped and everything in flight is acked."""
        await self.source.start()
        producer = asyncio.create_task(self._produce(), name="agent-process")
        consumer = asyncio.create_task(self._consume(), name="agent-flush")
        try:
            await asyncio.gather(producer, consumer)
        finally:
            for t in (producer, consumer):
                t.cancel()
            self._stopped.set()

    async def stop(self) -> None:
        """Stop fetching; the batch in hand is flushed and acked before :meth:`run` returns."""
        await self.source.stop()

    # -- flush ----------------------------------------------------------------------------
    async def handle(self, batch: list[Valid | Dead]) -> None:
        """Store one micro-batch and ack all its messages (the flush agent's body)."""
        valid = [x for x in batch if isinstance(x, Valid)]
        dead = [x for x in batch if isinstance(x, Dead)]
        fresh, dupes = self.dedup.split(valid)
        result, rejected = await self._store(fresh)
        dead.extend(d for d, _ in rejected)
        if dead:
            await self._dead_letter(dead)
        await self.source.ack([x.msg for x in batch])
        dupe_keys: list[Key] = [(v.event.tenant_id, v.event.id) for v in dupes]  # type: ignore[misc]
        dupe_keys.extend(result.duplicates)
        self.dedup.remember(result.stored)
        self._account(result, dupe_keys, len(dead))
        if self.on_commit is not None:
            try:
                await self.on_commit(result.stored, dupe_keys,
                                     [(key, d.message) for d, key in rejected])  # fmt: skip
            except Exception as exc:  # waiters fall back to their timeout
                log.warning("commit notification failed: %r", exc)

    def _account(self, result: FlushResult, dupe_keys: list[Key], n_dead: int) -> None:
        m = self.metrics
        m.stored.inc(len(result.stored))
        m.duplicates.inc(len(dupe_keys))
        self.totals["stored"] += len(result.stored)
        self.totals["duplicates"] += len(dupe_keys)
        self.totals["dead_lettered"] += n_dead
        if result.records:
            m.batch_size.observe(len(result.records))
            now = time.time()
            received_idx = 4  # COLUMNS.index("received_at")
            # One observation per batch of its oldest event keeps this cheap.
            oldest = min(r[received_idx] for r in result.records)
            m.lag.observe(max(0.0, now - oldest.timestamp()))

    async def _store(self, items: list[Valid]) -> tuple[FlushResult, list[tuple[Dead, Key]]]:
        """Write ``items`` until it works; returns the result and events PostgreSQL refused.

        Connection problems are retried with capped exponential backoff forever (nothing
        is acked meanwhile, and JetStream is told the batch is still in progress).
        """
        rejected: list[tuple[Dead, Key]] = []
        delay, last_progress = 0.1, time.monotonic()
        while True:
            events = [v.event for v in items]
            started = time.perf_counter()
            try:
                await self.partitions.ensure(self.pool, events)
                async with self.pool.acquire() as conn:
                    result = await write_batch(conn, [v.prepared for v in items])
                self.metrics.flush_seconds.observe(time.perf_counter() - started)
                return result, rejected
            except Exception as exc:
                kind = classify(exc)
                self.metrics.flush_retries.labels(kind).inc()
                if kind == "row":
                    bad = await self._find_rejected([v.prepared for v in items])
                    if bad:
                        rejected.extend(
                            (Dead(msg=items[i].msg, reason="db_rejected", message=str(err),
                                  stage="flush"),
                             (items[i].event.tenant_id, items[i].event.id))  # type: ignore[misc]
                            for i, err in bad.items()
                        )  # fmt: skip
                        items = [v for i, v in enumerate(items) if i not in bad]
                        continue
                log.warning("flush failed (%s, retrying in %.1fs): %r", kind, delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            if time.monotonic() - last_progress > self.settings.ack_wait_s / 3:
                with contextlib.suppress(Exception):
                    await self.source.in_progress([v.msg for v in items])
                last_progress = time.monotonic()

    async def _find_rejected(self, events: list[Any]) -> dict[int, Any]:
        try:
            async with self.pool.acquire() as conn:
                return await find_rejected(conn, events)
        except Exception as exc:
            log.warning("could not isolate rejected rows: %r", exc)
            return {}

    async def _dead_letter(self, dead: list[Dead]) -> None:
        js = self.nc.jetstream()
        now = self.now()
        for d in dead:
            headers = dead_letter_headers(d, self.settings.stream, now)
            delay = 0.1
            while True:
                try:
                    await js.publish(self.settings.dlq_subject, d.msg.data, headers=headers)
                    break
                except Exception as exc:
                    log.warning("dead-letter publish failed, retrying: %r", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            self.metrics.dead_lettered.labels(d.reason, d.stage).inc()
