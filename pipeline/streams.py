"""Streams out, the delivery agent: each tenant's committed events, in seq order, to the
tenant's streams (webhooks, Splunk HEC, S3), at least once.

Which process delivers: every ``auditlog run`` and ``auditlog pipeline`` worker runs a
:class:`StreamAgent` (``AUDIT_STREAMS_DELIVER``; ``auditlog api`` does not). Each stream
is delivered by one process at a time: the agent takes a stream's lease (a session-level
PostgreSQL advisory lock, ``pipeline.stream_store.Leases``) before starting its
:class:`StreamRunner`, and a process holds at most ``AUDIT_STREAMS_MAX_PER_PROCESS``
streams. Every second the agent lists the streams to deliver and takes the free ones; a
lease goes with its process or connection (``kill -9``), so another process resumes the
stream from its cursor within a tick. Before each send a runner checks that the lease
connection still answers.

One stream, one task: a runner reads the tenant's events after the stream's cursor
(``seq > last_seq``, in seq order, under the tenant's row-level security), filters them,
batches them by count, bytes and time (``AUDIT_STREAMS_BATCH_MAX_*``), sends a batch and
moves the cursor past it only after the receiver answered 2xx. A batch that fails is sent
again, the same records (same ids), after a backoff with jitter; the stream pauses when
the failure cannot be fixed by retrying (a redirect, a refused address, unreadable
secrets) or has lasted ``AUDIT_STREAMS_PAUSE_AFTER_S``, with the reason, until an
operator resumes it or ``AUDIT_STREAMS_COOLDOWN_S`` passes. Nothing of a stream runs in
the ingest path, and runners share nothing but a small connection pool and the HTTP
session, so a slow or failing receiver delays only its own stream.

Retention: when the next seqs after a cursor were dropped (``audit.retention_gaps``), the
runner sends a ``gap`` record for them (with the signed gap note), logs it, counts it and
moves the cursor past; seqs missing with no gap to explain them (which a gapless chain
never has: someone deleted rows) pause the stream, naming them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from infra.db import create_pool
from infra.errors import AuditLogError
from infra.metrics import Metrics
from infra.settings import Settings
from pipeline import outbound
from pipeline import stream_store as store
from pipeline.outbound import Outbound, Outcome
from pipeline.stream_format import Batch, Gap, Item, Row, last_seq, record
from pipeline.stream_rules import Filters, backoff, should_pause
from pipeline.stream_secrets import SecretBox, SecretsUnreadable

log = logging.getLogger(__name__)
TICK_S = 1.0  # how often the agent looks for streams to take
STOP_GRACE_S = 5.0  # a send in flight at shutdown may finish within this


class MissingSeqs(AuditLogError):
    """Seqs of the tenant are missing and no retention gap explains them."""


@dataclass
class Pending:
    """What a runner read and has not delivered yet: items in seq order, each with its
    record (None when the stream's filters leave it out: it only moves the cursor)."""

    cursor: int  # the stream's cursor (everything up to it is delivered)
    read_upto: int  # everything up to here is in ``items`` (or delivered)
    items: list[tuple[Item, bytes | None]] = field(default_factory=list)
    since: float | None = None  # when the oldest item was read (monotonic)

    def records(self) -> int:
        return sum(1 for _, rec in self.items if rec is not None)

    def size(self) -> int:
        return sum(len(rec) for _, rec in self.items if rec is not None)

    def cut(self, stream_id: str, tenant_id: str, max_events: int, max_bytes: int) -> Batch:
        """The next batch: a prefix of the items with at most ``max_events`` records and
        ``max_bytes`` of them (at least one record)."""
        taken: list[tuple[Item, bytes | None]] = []
        count = size = 0
        for item, rec in self.items:
            if rec is not None:
                if count and (count >= max_events or size + len(rec) > max_bytes):
                    break
                count += 1
                size += len(rec)
            taken.append((item, rec))
        sent = [(i, r) for i, r in taken if r is not None]
        return Batch(stream_id, tenant_id, self.cursor + 1, last_seq(taken[-1][0]),
                     tuple(i for i, _ in sent), tuple(r for _, r in sent))  # fmt: skip

    def delivered(self, batch: Batch) -> None:
        """Drop the items ``batch`` covered; the cursor moves to its last seq."""
        self.items = [(i, r) for i, r in self.items if last_seq(i) > batch.last_seq]
        self.cursor = batch.last_seq
        self.since = time.monotonic() if self.items else None


class StreamAgent:
    """Takes the leases of streams to deliver and runs one :class:`StreamRunner` each.

    Args:
        settings: the ``AUDIT_STREAMS_*`` settings.
        dsn: the runtime login's DSN (a small pool and the lease connection).
        metrics: where lags and counts go (None: nowhere).
        box: opens stream secrets (default: this process's stream key).
        resolver: name resolution for :class:`Outbound` (tests).
        tick_s: how often to look for streams.
    """

    def __init__(self, settings: Settings, dsn: str, metrics: Metrics | None = None, *,
                 box: SecretBox | None = None, resolver: Any = None,
                 tick_s: float = TICK_S) -> None:  # fmt: skip
        self.settings = settings
        self.dsn = dsn
        self.metrics = metrics
        self.box = box or SecretBox.from_settings(settings)
        self.resolver = resolver
        self.tick_s = tick_s
        self.pool: asyncpg.Pool | None = None
        self.leases = store.Leases(dsn)
        self.out: Outbound | None = None
        self.runners: dict[str, asyncio.Task[None]] = {}
        self.stopping = False
        self.paused = 0  # streams paused, as last listed

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop``; errors (PostgreSQL away) are logged and retried."""
        failed = 0
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                    failed = 0
                except Exception as exc:  # PostgreSQL away: back off, take streams anew
                    failed += 1
                    log.warning("streams: supervisor round failed (retrying): %r", exc)
                    await self._drop_all()
                wait = min(30.0, self.tick_s * 2 ** min(failed, 5))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
        finally:
            await self.close()

    async def tick(self) -> None:
        """One round: reap finished runners, check the leases, take free streams."""
        for stream_id, task in list(self.runners.items()):
            if task.done():
                await self._finished(stream_id, task)
        if self.runners and not await self.leases.alive():
            log.warning("streams: the lease connection was lost; taking streams anew")
            await self._drop_all()
        if self.pool is None:
            self.pool = await create_pool(self.dsn, max_size=2, min_size=1)
        async with self.pool.acquire() as conn:
            due, self.paused = await store.deliverable(conn)
        if self.metrics is not None:
            self.metrics.streams_paused.set(self.paused)
        limit = self.settings.streams_max_per_process
        for stream_id in due:
            if stream_id in self.runners or len(self.runners) >= limit or self.stopping:
                continue
            if await self.leases.take(stream_id):
                self.runners[stream_id] = asyncio.create_task(
                    StreamRunner(self, stream_id).run(), name=f"stream-{stream_id}"
                )

    async def _finished(self, stream_id: str, task: asyncio.Task[None]) -> None:
        self.runners.pop(stream_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("streams: %s stopped on an unexpected error: %r", stream_id,
                      task.exception())  # fmt: skip
            if self.metrics is not None:
                self.metrics.internal_errors.labels("stream").inc()
        await self.leases.release(stream_id)
        self._forget(stream_id)

    def _forget(self, stream_id: str) -> None:
        if self.metrics is not None:
            for gauge in (self.metrics.stream_lag_events, self.metrics.stream_lag_seconds):
                with contextlib.suppress(KeyError):
                    gauge.remove(stream_id)

    async def _drop_all(self) -> None:
        """Stop every runner and let go of every lease (a new connection takes them anew)."""
        tasks = list(self.runners.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream_id in list(self.runners):
            self._forget(stream_id)
        self.runners.clear()
        await self.leases.close()

    def outbound(self) -> Outbound:
        """The HTTP session every runner sends through (made on first use)."""
        if self.out is None:
            self.out = Outbound(self.settings, self.resolver)
        return self.out

    async def close(self) -> None:
        """Let sends in flight finish (up to :data:`STOP_GRACE_S`), then stop everything."""
        self.stopping = True
        if self.runners:
            await asyncio.wait(list(self.runners.values()), timeout=STOP_GRACE_S)
        await self._drop_all()
        if self.out is not None:
            await self.out.close()
            self.out = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    def held(self) -> list[str]:
        """The streams this process delivers now."""
        return sorted(s for s, t in self.runners.items() if not t.done())


class StreamRunner:
    """Delivers one stream while its agent holds the lease (see the module docstring)."""

    def __init__(self, agent: StreamAgent, stream_id: str,
                 rng: random.Random | None = None,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.agent = agent
        self.settings = agent.settings
        self.stream_id = stream_id
        self.rng = rng or random.Random()
        self.clock = clock
        self.pending: Pending | None = None
        self.head = 0  # the tenant's head seq, as last read

    def _pool(self) -> asyncpg.Pool:
        assert self.agent.pool is not None
        return self.agent.pool

    async def _load(self) -> store.Stream | None:
        async with self._pool().acquire() as conn:
            return await store.load(conn, self.stream_id)

    async def run(self) -> None:
        """Batches until the stream is deleted or paused, the lease lost or the agent
        stops."""
        stream = await self._load()
        if stream is None:
            return
        if stream.state == "paused":
            async with self._pool().acquire() as conn:
                if not await store.wake(conn, self.stream_id):
                    return
            log.info("stream %s of %s: cool-down over, delivering again", self.stream_id,
                     stream.tenant_id)  # fmt: skip
        self.pending = Pending(stream.last_seq, stream.last_seq)
        filters = Filters.of(stream.filters)
        while not self.agent.stopping:
            try:
                batch = await self._next_batch(stream, filters)
            except MissingSeqs as exc:
                await self._pause(str(exc))
                return
            if batch is None:
                return
            if not batch.records:  # everything filtered out: only the cursor moves
                if not await self._advance(batch):
                    return
                continue
            if not await self._deliver(batch):
                return
            fresh = await self._load()
            if fresh is None or fresh.state != "active":
                return
            stream, filters = fresh, Filters.of(fresh.filters)

    # -- reading -------------------------------------------------------------------------
    async def _next_batch(self, stream: store.Stream, filters: Filters) -> Batch | None:
        """Wait until a batch is due (full, or its oldest item waited the latency); None
        when the stream was deleted or paused meanwhile, or the agent stops."""
        assert self.pending is not None
        p = self.pending
        s = self.settings
        latency = s.streams_batch_max_latency_ms / 1000
        checked = time.monotonic()
        while not self.agent.stopping:
            if p.records() < s.streams_batch_max_events and p.size() < s.streams_batch_max_bytes:
                await self._fill(stream, filters)
            full = (p.records() >= s.streams_batch_max_events
                    or p.size() >= s.streams_batch_max_bytes)  # fmt: skip
            if p.items and (full or time.monotonic() - (p.since or 0) >= latency
                            or not p.records()):  # fmt: skip
                return p.cut(self.stream_id, stream.tenant_id, s.streams_batch_max_events,
                             s.streams_batch_max_bytes)  # fmt: skip
            wait = s.streams_poll_ms / 1000
            if p.since is not None:
                wait = min(wait, max(0.0, latency - (time.monotonic() - p.since)))
            await asyncio.sleep(wait)
            if time.monotonic() - checked >= 1.0:  # deleted or paused by an operator?
                checked = time.monotonic()
                fresh = await self._load()
                if fresh is None or fresh.state != "active":
                    return None
        return None

    async def _fill(self, stream: store.Stream, filters: Filters) -> None:
        """Read what follows ``read_upto`` into the pending items (gaps explained)."""
        assert self.pending is not None
        p = self.pending
        room = self.settings.streams_batch_max_events - p.records()
        async with store.tenant_snapshot(self._pool(), stream.tenant_id) as conn:
            rows, head = await store.read_after(conn, stream.tenant_id, p.read_upto, room)
            expected = p.read_upto + 1
            found: list[Item] = []
            for row in rows:
                if row.seq != expected:
                    found.extend(await self._explain(conn, stream.tenant_id, expected, row.seq))
                found.append(row)
                expected = row.seq + 1
            if len(rows) < room and head >= expected:  # the tenant's newest seqs are gone
                found.extend(await self._explain(conn, stream.tenant_id, expected, head + 1))
        for item in found:
            if isinstance(item, Row):
                keep = filters.passes(item.severity, item.category, item.action)
                p.items.append((item, record(stream.tenant_id, item) if keep else None))
            else:
                p.items.append((item, record(stream.tenant_id, item)))
            p.read_upto = last_seq(item)
        if found and p.since is None:
            p.since = time.monotonic()
        self._export_lag(head)

    async def _explain(self, conn: asyncpg.Connection, tenant_id: str, first: int,
                       until: int) -> list[Gap]:  # fmt: skip
        """The retention gaps covering seqs ``first .. until-1``, exactly.

        Raises:
            MissingSeqs: some of those seqs are missing with no gap for them.
        """
        gaps = await store.gaps_between(conn, tenant_id, first - 1, until)
        expected = first
        for gap in gaps:
            if gap.first_seq > expected:
                break
            expected = gap.last_seq + 1
        if expected < until:
            raise MissingSeqs(f"seqs {expected}..{until - 1} of {tenant_id} are missing and no "
                              f"retention gap explains them: run `auditlog verify "
                              f"{tenant_id}`; resume the stream once that is "
                              "understood")  # fmt: skip
        for gap in gaps:
            log.info("stream %s: seqs %d..%d of %s were dropped by retention (%s): a gap "
                     "record is delivered instead", self.stream_id, gap.first_seq,
                     gap.last_seq, tenant_id, gap.partition)  # fmt: skip
        if self.agent.metrics is not None and gaps:
            self.agent.metrics.stream_gaps.labels(self.stream_id).inc(len(gaps))
        return gaps

    def _export_lag(self, head: int | None = None) -> None:
        metrics, p = self.agent.metrics, self.pending
        if metrics is None or p is None:
            return
        if head is not None:
            self.head = head
        metrics.stream_lag_events.labels(self.stream_id).set(max(0, self.head - p.cursor))
        oldest = next((i.received_at for i, _ in p.items if isinstance(i, Row)), None)
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0
        metrics.stream_lag_seconds.labels(self.stream_id).set(max(0.0, age))

    # -- delivering ----------------------------------------------------------------------
    async def _advance(self, batch: Batch) -> bool:
        assert self.pending is not None
        async with self._pool().acquire() as conn:
            moved = await store.advance(conn, self.stream_id, self.pending.cursor, batch.last_seq)
        if moved:
            self.pending.delivered(batch)
            self._export_lag()
        else:
            log.warning("stream %s: cursor moved elsewhere (deleted?); stopping", self.stream_id)
        return moved

    async def _deliver(self, batch: Batch) -> bool:
        """Send ``batch`` until the receiver takes it (then move the cursor): True; False
        when the stream was deleted or paused, the lease lost, or the agent stops."""
        attempt = 0
        while True:
            stream = await self._load()
            if stream is None or stream.state != "active" or not await self.agent.leases.alive():
                return False
            outcome = await self._send(stream, batch)
            attempt += 1
            async with self._pool().acquire() as conn:
                await store.record_attempt(conn, self.stream_id, batch.first_seq,
                                           batch.last_seq, len(batch.records), outcome.ok,
                                           outcome.status, outcome.error, outcome.seconds,
                                           prune=self.rng.random() < 0.05)  # fmt: skip
            if outcome.ok:
                if self.agent.metrics is not None:
                    self.agent.metrics.stream_delivered.labels(self.stream_id).inc(
                        len(batch.records))  # fmt: skip
                return await self._advance(batch)
            if await self._failed(stream, outcome, attempt):
                return False
            if self.agent.stopping:
                return False

    async def _send(self, stream: store.Stream, batch: Batch) -> Outcome:
        try:
            secrets = self.agent.box.open(self.stream_id, stream.secrets)
        except SecretsUnreadable as exc:
            return Outcome(False, error=str(exc), refused=True)
        out = self.agent.outbound()
        dest = stream.destination
        if stream.kind == "webhook":
            now = self.clock()
            signing = [s["secret"] for s in secrets["signing"]
                       if s.get("until") is None or s["until"] > now]  # fmt: skip
            return await outbound.send_webhook(out, dest["url"], signing, batch, now)
        if stream.kind == "splunk_hec":
            return await outbound.send_hec(out, dest["url"], secrets["token"], batch,
                                           dest.get("source_type") or "auditlog",
                                           dest.get("index") or "")  # fmt: skip
        return await outbound.put_s3(out, dest, secrets["secret_access_key"], batch)

    async def _failed(self, stream: store.Stream, outcome: Outcome, attempt: int) -> bool:
        """Count the failure, pause when due; else wait the backoff. True when paused."""
        if self.agent.metrics is not None:
            self.agent.metrics.stream_failures.labels(self.stream_id).inc()
        since = stream.failing_since or datetime.now(UTC)
        failing_for = (datetime.now(UTC) - since).total_seconds()
        pause = should_pause(failing_for, self.settings.streams_pause_after_s, outcome.refused)
        reason = None
        if pause:
            reason = (outcome.error if outcome.refused else
                      f"failing for {failing_for:.0f}s ({attempt} attempts here); last: "
                      f"{outcome.error}")  # fmt: skip
        async with self._pool().acquire() as conn:
            failures = await store.failed(conn, self.stream_id, outcome.error, reason,
                                          self.settings.streams_cooldown_s)  # fmt: skip
        if reason is not None:
            self._log_pause(stream, reason)
            return True
        wait = backoff(failures, self.settings.streams_retry_max_s, self.rng)
        if outcome.retry_after is not None:
            wait = max(wait, min(outcome.retry_after, self.settings.streams_retry_max_s))
        log.info("stream %s: delivery failed (%s); retrying in %.1fs", self.stream_id,
                 outcome.error, wait)  # fmt: skip
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not self.agent.stopping:
            await asyncio.sleep(min(0.25, deadline - time.monotonic()))
            self._export_lag()
        return False

    async def _pause(self, reason: str) -> None:
        stream = await self._load()
        if stream is None:
            return
        async with self._pool().acquire() as conn:
            await store.failed(conn, self.stream_id, reason, reason,
                               self.settings.streams_cooldown_s)  # fmt: skip
        self._log_pause(stream, reason)

    def _log_pause(self, stream: store.Stream, reason: str) -> None:
        cool = self.settings.streams_cooldown_s
        when = f"tried again in {cool:g}s" if cool else "until an operator resumes it"
        log.warning("stream %s of %s paused: %s (%s)", self.stream_id, stream.tenant_id, reason,
                    when)  # fmt: skip
        if self.agent.metrics is not None:
            self.agent.metrics.stream_pauses.labels(self.stream_id).inc()
