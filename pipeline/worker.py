"""A pipeline worker: agents over the source stream, storing into a :class:`Store`.

    source stream -> process (tenant of each message, or validate + prepare now)
        -> take(n, within) -> tenant order -> flush: prepare what waited (validate,
           enrich, canonical bytes, COPY row), dedupe, store (one transaction),
           dead-letter what is refused, then ack every message of the batch, then tell
           the write API's waiters.

``process`` is an agent over the source's stream: a message whose preparing may wait
(``pipeline.stages.pending_tenant``: JetStream's, with the tenant as the payload's first
member) becomes a ``Pending`` under that tenant, anything else is prepared at once; a
flush prepares the ``Pending`` items it takes, so what it walks is allocated together
whichever slice of the held messages it takes. ``take`` groups its output into
micro-batches, growing the next batch while a flush runs (up to ``batch_max_events``);
up to ``flush_concurrency`` flushes run at once. The worker knows its source, store and
dead-letter sink only by their protocols (``pipeline.sinks`` and :class:`Source`), so the
same agents serve any source, and its guarantees are tested with in-memory fakes
(``tests/unit/test_worker.py``) as well as against the real servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from infra.metrics import Metrics
from infra.settings import Settings
from pipeline import fastpath
from pipeline.agents import Agent, Stream
from pipeline.ordering import MAX_BACKOFF_S, TenantOrder
from pipeline.sinks import (
    BucketClaims,
    DeadLetters,
    FlushResult,
    RefusedRowError,
    Store,
    StoreError,
)
from pipeline.stages import (
    Dead,
    Deduplicator,
    Message,
    Pending,
    Valid,
    limits_for,
    position,
)
from schemas.ids import IDEMPOTENCY_HEADER, EventKey

log = logging.getLogger(__name__)

# A dead letter is tried this often (0.1, 0.4, 1.6 s apart) before its message is NAKed.
DLQ_ATTEMPTS = 3
# Dead letters in flight at once per batch: a batch of large bad messages must not put
# tens of MiB on the connection at once (their acks would time out).
DLQ_CONCURRENCY = 32
# Turns (``pipeline.bucket_claims``): a worker that has flushed a bucket flush after flush
# for TURN_S yields it to another worker waiting for it (one with nothing else to flush).
# Flushes of a bucket less than STREAK_GAP_S apart are one streak (longer than
# ordering.MAX_BACKOFF_S: the waiting worker tries again within that, while the yielded
# bucket stays free).
TURN_S = 1.0
STREAK_GAP_S = 0.25
# A worker with no flush running tries the buckets held elsewhere again at least this
# often (instead of backing off up to ordering.MAX_BACKOFF_S): it has nothing else to do,
# and a bucket yielded to it stays idle until it tries (one hot tenant, two workers).
IDLE_RETRY_S = 0.02

Now = Callable[[], datetime]
# What waits for a flush: a message prepared when it arrived (Valid or Dead) or one whose
# preparing waits for the flush that takes it (Pending).
Held = Pending | Valid | Dead
Sleep = Callable[[float], Awaitable[None]]


class Source(Protocol):
    """What the worker needs of a source (``pipeline.source_nats``, ``pipeline.source_kafka``).

    ``chunks`` yields lists of messages (one per network read) until ``stop``; ``ack``
    settles messages for good (only after they are stored or dead-lettered); ``nak`` asks
    for redelivery after ``delay_s`` (JetStream redelivers; Kafka, which cannot skip a
    record, pauses its partition and delivers it again itself); neither raises. ``held`` is
    what was delivered and not yet settled (the source keeps it alive, e.g. with
    in-progress heartbeats). ``kind`` labels metrics (``nats``, ``kafka``); ``where`` names
    it in messages (``stream AUDIT``).
    """

    kind: str
    where: str

    async def start(self) -> None: ...
    def chunks(self) -> AsyncIterator[list[Message]]: ...
    async def ack(self, msgs: list[Message]) -> None: ...
    async def nak(self, msgs: list[Message], delay_s: float) -> None: ...

    held: dict[str, Message]

    async def stop(self) -> None: ...


# (stored keys, duplicate keys, rejected (key, reason)) after each batch.
CommitListener = Callable[
    [list[EventKey], list[EventKey], list[tuple[EventKey, str]]], Awaitable[None]
]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Worker:
    """Runs the agents for one source until :meth:`stop`.

    Args:
        settings: batch sizes, stall threshold, stream name for logs.
        store: where events are stored (``pipeline.flush.PgStore``).
        dead_letters: where refused messages go (``pipeline.dlq_nats.NatsDeadLetters``).
        source: where messages come from.
        metrics: where counts go.
        on_commit: called with (stored keys, duplicate keys, rejected) after each batch.
        notify: which messages' keys ``on_commit`` hears of (default all). The service
            passes :func:`waited_for`: only the write API's events have a writer waiting,
            and announcing every drained event costs NATS traffic no one reads.
        now: wall clock for received_at fallbacks and dead-letter times.
        sleep: waits between retries (injected so that tests need not wait).
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        dead_letters: DeadLetters,
        source: Source,
        metrics: Metrics,
        on_commit: CommitListener | None = None,
        notify: Callable[[Message], bool] | None = None,
        now: Now = _utcnow,
        sleep: Sleep = asyncio.sleep,
        claims: BucketClaims | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.claims = claims
        self.dead_letters = dead_letters
        self.source = source
        self.metrics = metrics
        self.on_commit = on_commit
        self.notify = notify
        self.now = now
        self.sleep = sleep
        self.dedup = Deduplicator(settings.dedup_window)
        self.totals = {"stored": 0, "duplicates": 0, "dead_lettered": 0}
        self._limits = limits_for(settings)
        # position (stable across redeliveries, unlike a JetStream ack subject) -> why its
        # dead letter could not be published: the message is held in the source.
        self._unpublished: dict[str, str] = {}
        kind = getattr(source, "kind", "nats")
        self._received = metrics.received.labels("process", kind)
        self._stored = metrics.stored.labels(kind)
        self._duplicates = metrics.duplicates.labels(kind)
        self._lag = metrics.lag.labels(kind)
        self._dead_letter_failures = metrics.dead_letter_failures.labels(kind)
        self._unpublished_gauge = metrics.dead_letters_unpublished.labels(kind)
        self._kind = kind
        self.last_progress = time.monotonic()
        # bucket -> (when this worker's current streak of flushes of it began, when the
        # last of them ended): its turn (see TURN_S).
        self._streaks: dict[int, tuple[float, float]] = {}

    # -- agents ---------------------------------------------------------------------------
    async def _process(self, stream: Stream[Any]) -> AsyncIterator[list[Any]]:
        received = self._received
        limits = self._limits
        defer = fastpath.defer
        async for chunk in stream:
            now = self.now()
            received.inc(len(chunk))
            yield defer(chunk, now, limits)

    def _prepare_taken(self, taken: list[Held]) -> tuple[list[Held], list[Valid]]:
        """The taken items prepared (1:1, in order), and those of them to flush later: the
        events whose decoded tenant is not the one their :class:`Pending` guessed (they
        waited in another tenant's bucket, so this flush may not hold their tenant)."""
        idx = [i for i, x in enumerate(taken) if type(x) is Pending]
        if not idx:
            return taken, []
        pending = cast(list[Pending], [taken[i] for i in idx])
        done = fastpath.prepare_batch([p.msg for p in pending], self.now(), self._limits)
        if len(idx) == len(taken):
            out: list[Held] = list(done)
        else:
            out = list(taken)
            for i, x in zip(idx, done, strict=True):
                out[i] = x
        misfits = [x for p, x in zip(pending, done, strict=True)
                   if type(x) is Valid and x.prepared.tenant_id != p.tenant_id]  # fmt: skip
        return out, misfits

    async def run(self) -> None:
        """Start the source and run until it is stopped and everything in flight is settled.

        ``take`` groups what ``process`` yields; a :class:`~pipeline.ordering.TenantOrder`
        releases it to up to ``flush_concurrency`` flushes at once, each a slice of the
        tenants (whole tenant buckets, in a ring), each tenant in one flush at a time and
        in order. Before taking a batch the worker claims its buckets (``claims``:
        advisory, never waiting), so different workers flush different tenants; a flush
        never waits for another's chain-head locks either: it skips the tenants another
        transaction holds, and their items are offered again (``pipeline.flush``).
        """
        fastpath.log_choice()  # compiled or pure Python, and why
        await self.source.start()
        processed = Agent("process", self._process)(Stream(self.source.chunks(), "source"))
        within = self.settings.batch_max_latency_ms / 1000
        order: TenantOrder[Held] = TenantOrder(_tenant_of)
        wake = asyncio.Event()

        async def pump() -> None:
            try:
                async for batch in processed.take(self.settings.batch_max_events, within):
                    order.offer(batch)
                    wake.set()
            finally:
                wake.set()

        reader = asyncio.create_task(pump(), name="take")
        slots = asyncio.Semaphore(self.settings.flush_concurrency)
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                await slots.acquire()
                batch, claimed = await self._next_batch(order, wake, reader, running)
                if not batch:
                    slots.release()
                    break
                task = asyncio.create_task(
                    self._flush_slot(batch, claimed, slots, order, wake), name="flush"
                )
                running.add(task)
                task.add_done_callback(functools.partial(_finished, running, wake))
            await reader  # the stream's own error, if it ended with one
        finally:  # cancelled: what is unsettled is redelivered (storage stays exactly-once)
            for task in (*running, reader):
                task.cancel()
            if self.claims is not None:
                await asyncio.shield(self.claims.close())
            await asyncio.shield(self.store.close())

    async def _next_batch(self, order: TenantOrder[Held], wake: asyncio.Event,
                          reader: asyncio.Task[None], running: set[asyncio.Task[None]]
                          ) -> tuple[list[Held], list[int]]:  # fmt: skip
        """The next batch for a free flush slot and the buckets claimed for it; [] once
        the source ended and nothing is left or in flight."""
        while True:
            wake.clear()
            batch, claimed = await self._claim_and_take(order)
            if batch:
                return batch, claimed
            if reader.done() and not len(order) and not running:
                return [], []
            # Wait for new items, a flush to end, or a skipped item's backoff (alone: for
            # the running flush to end).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    wake.wait(), None if self._alone(order) else order.next_ready_in()
                )

    async def _claim_and_take(self, order: TenantOrder[Held]
                              ) -> tuple[list[Held], list[int]]:  # fmt: skip
        """Claim ready buckets (in the order the ring offers them, as many as a full batch
        needs, skipping those another worker flushes) and take their items. Without
        claims (none configured, or unavailable now), take what is ready."""
        max_items = self.settings.batch_max_events
        ready = order.ready() if self.claims is not None else []
        if not ready:
            return order.take(max_items), []
        assert self.claims is not None
        buckets = [b for b, _ in ready]
        if self._alone(order):
            return order.take(max_items, only=()), []  # dead letters only
        turns = self._turns_had(buckets)
        idle = not order.in_flight  # (no flush of this worker's own running)
        if self.claims.peers == 1:  # alone (as of the last claim): oldest first
            claimed = await self.claims.claim(buckets, len(buckets), turns, idle)
            if claimed is not None and self.claims.peers == 1:
                got = set(claimed)
                if busy := [b for b in buckets if b not in got]:  # (a claim left behind)
                    order.backoff(busy)
                return order.take(max_items, only=got, oldest=True), claimed
            if claimed is not None:  # another worker came: slices from now on
                await self.claims.release(claimed)
        want, count = 0, 0
        for _, n in ready:
            want, count = want + 1, count + n
            if count >= max_items:
                break
        claimed = await self.claims.claim(buckets, want, turns, idle)
        if claimed is None:
            return order.take(max_items), []
        got = set(claimed)
        # Tried and held elsewhere: every bucket before the last claimed one that was not
        # claimed (or all of them, when fewer than wanted were claimed).
        tried = buckets if len(claimed) < want else buckets[: buckets.index(claimed[-1]) + 1]
        busy = [b for b in tried if b not in got]
        if busy:
            order.backoff(busy, IDLE_RETRY_S if idle and not claimed else MAX_BACKOFF_S)
            self.metrics.flush_busy_buckets.inc(len(busy))
        batch = order.take(max_items, only=got)
        return batch, claimed

    def _turns_had(self, buckets: Sequence[int]) -> list[int]:
        """Those of ``buckets`` this worker has kept flushing for :data:`TURN_S` or more
        (flushes less than :data:`STREAK_GAP_S` apart): another worker waiting for one of
        them gets it (the claim skips it), so none waits longer than about a turn and a
        flush while this one keeps a bucket busy."""
        if not self._streaks:
            return []
        now = time.monotonic()
        out = []
        for b in buckets:
            streak = self._streaks.get(b)
            if streak is not None and now - streak[1] < STREAK_GAP_S and now - streak[0] >= TURN_S:
                out.append(b)
        return out

    def _flushed(self, buckets: Sequence[int], started: float) -> None:
        """A flush of the claimed ``buckets``, begun at ``started``, ended: their streaks."""
        now = time.monotonic()
        streaks = self._streaks
        for b in buckets:
            streak = streaks.get(b)
            streaks[b] = ((streak[0] if streak is not None and started - streak[1] < STREAK_GAP_S
                           else started), now)  # fmt: skip

    def _alone(self, order: TenantOrder[Held]) -> bool:
        """Whether this worker is the only one claiming and already flushes: then it
        flushes one batch at a time, its oldest events first (a second flush would take
        what the first left: scattered, smaller, measured dearer per event)."""
        return self.claims is not None and self.claims.peers == 1 and bool(order.in_flight)

    async def _flush_slot(self, taken: list[Held], claimed: list[int],
                          slots: asyncio.Semaphore, order: TenantOrder[Held],
                          wake: asyncio.Event) -> None:  # fmt: skip
        skipped: list[Held] = []
        batch = taken
        started = time.monotonic()
        try:
            # Prepared now (not when they arrived): what this flush walks is allocated
            # together. Measured with 4 workers, whose flushes take every third or fourth
            # held event: worker CPU per event 43.0 -> 35.1 µs (1 worker 28.9 -> 25.3).
            batch, misfits = self._prepare_taken(taken)
            order.rebind(taken, batch)
            ready = cast(list[Valid | Dead], batch)  # (no Pending left)
            if misfits:  # back to their own tenant's bucket, in order, for a later flush
                later = {id(m) for m in misfits}
                flush = [x for x in ready if id(x) not in later]
                skipped = _in_order(batch, set(map(id, await self.handle(flush))) | later)
            else:
                skipped = list(await self.handle(ready))
        except Exception as exc:
            # handle() settles every message itself and its parts do not raise; reaching
            # here is a bug. The messages not yet settled are NAKed for redelivery (the
            # claim table keeps storage exactly-once) and the worker carries on.
            self.metrics.internal_errors.labels("flush").inc()
            log.exception("batch of %d not settled (redelivered later): %r", len(batch), exc)
            with contextlib.suppress(Exception):
                await self.source.nak([x.msg for x in batch], 1.0)
        finally:
            order.done(batch, skipped)
            slots.release()
            wake.set()
            if claimed and self.claims is not None:  # (after done(): a claim counts, so
                # the next flush of these buckets may have claimed them again meanwhile)
                self._flushed(claimed, started)
                await asyncio.shield(self.claims.release(claimed))

    async def stop(self) -> None:
        """Stop fetching; the batch in hand is flushed and acked before :meth:`run` returns."""
        await self.source.stop()

    # -- flush ----------------------------------------------------------------------------
    async def handle(self, batch: list[Valid | Dead]) -> list[Valid]:
        """Store one micro-batch and settle its messages (the flush agent's body).

        Every message ends stored, a duplicate, or dead-lettered, and is then acked; two
        exceptions: a dead letter JetStream would not take (that message is NAKed with a
        backoff, never acked, never lost, while the rest of the batch goes on), and the
        events of tenants whose chain head another worker held, which are returned
        unsettled for a later flush (their messages stay held). Storage outages are waited
        out (nothing is acked meanwhile).

        Returns:
            The skipped events, in batch order.
        """
        valid = [x for x in batch if isinstance(x, Valid)]
        # (one pass in the usual batch: every item valid)
        dead = [x for x in batch if isinstance(x, Dead)] if len(valid) < len(batch) else []
        fresh, dupes, fresh_keys = self.dedup.split_keys(valid)
        result, rejected, skipped = await self._store(fresh)
        later = {id(v.msg) for v in skipped}
        dead.extend(d for d, _ in rejected)
        held = await self._dead_letter(dead) if dead else set()
        if held:
            kept = [d.msg for d in dead if id(d.msg) in held]
            await self.source.nak(kept, _nak_delay(kept))
        if held or later:
            keep = held | later
            await self.source.ack([x.msg for x in batch if id(x.msg) not in keep])
        else:
            await self.source.ack([x.msg for x in batch])
        self.last_progress = time.monotonic()
        dupe_keys: list[EventKey] = [(v.prepared.tenant_id, v.prepared.id) for v in dupes]
        dupe_keys.extend(result.duplicates)
        if len(result.stored) == len(fresh):  # all of them (stored is a subset of fresh)
            # All distinct and none remembered: split_keys left out repeats and what the
            # window held, and a key another flush remembered since was claimed by it,
            # so this flush could not have stored it too (it would be a duplicate here).
            self.dedup.remember_keys(fresh_keys, new=True)
        else:
            self.dedup.remember(result.stored)
        self._account(result, dupe_keys, len(dead) - len(held))
        if self.on_commit is not None:
            await self._announce(valid, result.stored, dupe_keys, rejected)
        return skipped

    async def _announce(self, valid: list[Valid], stored: list[EventKey], dupe_keys: list[EventKey],
                        rejected: list[tuple[Dead, EventKey]]) -> None:  # fmt: skip
        """Tell ``on_commit`` (those of the keys ``notify`` picks). Never raises."""
        notify = self.notify
        if notify is not None:
            # waited_for needs headers: a drained stream of producer events has none.
            asked = [v for v in valid if v.msg.headers] if notify is waited_for else valid
            picked = {(v.prepared.tenant_id, v.prepared.id) for v in asked if notify(v.msg)}
            stored = [k for k in stored if k in picked] if picked else []
            dupe_keys = [k for k in dupe_keys if k in picked] if picked else []
            rejected = [(d, k) for d, k in rejected if notify(d.msg)]
        assert self.on_commit is not None
        try:
            await self.on_commit(stored, dupe_keys, [(key, d.message) for d, key in rejected])
        except Exception as exc:  # waiters fall back to their timeout
            log.warning("commit notification failed: %r", exc)

    def _account(self, result: FlushResult, dupe_keys: list[EventKey], n_dead: int) -> None:
        m = self.metrics
        self._stored.inc(len(result.stored))
        self._duplicates.inc(len(dupe_keys))
        self.totals["stored"] += len(result.stored)
        self.totals["duplicates"] += len(dupe_keys)
        self.totals["dead_lettered"] += n_dead
        if result.stored:
            m.batch_size.observe(len(result.stored))
            # One observation per batch of its oldest event keeps this cheap.
            self._lag.observe(max(0.0, time.time() - result.oldest_received_us / 1e6))

    async def _store(
        self, items: list[Valid]
    ) -> tuple[FlushResult, list[tuple[Dead, EventKey]], list[Valid]]:
        """Store ``items``; returns what was stored, the events PostgreSQL refuses for good,
        and the events skipped because another worker held their tenant's chain head.

        A transient error (:class:`~pipeline.sinks.RetryableStoreError`: connection lost,
        lock or serialization conflicts, disk full) retries the same events with capped
        exponential backoff and jitter, forever (the source keeps them in progress). A
        :class:`~pipeline.sinks.RefusedRowError` splits the events in halves, each stored
        in its own transaction, down to the single events that are refused (dead letters
        with the database's reason): a refused event never holds back the ones that can
        be stored.
        """
        total = FlushResult()
        rejected: list[tuple[Dead, EventKey]] = []
        skipped: list[Valid] = []
        groups = [items] if items else []
        delay = 0.1
        while groups:
            group = groups.pop()
            started = time.perf_counter()
            try:
                part, refused = await self.store.write(group)
            except RefusedRowError as exc:
                self.metrics.flush_retries.labels(exc.metric_label).inc()
                if len(group) == 1:
                    rejected.append(_refused(group[0], exc.reason))
                else:  # halves, first half first (pop() takes from the end)
                    mid = len(group) // 2
                    groups.extend((group[mid:], group[:mid]))
                continue
            except StoreError as exc:  # retryable
                self.metrics.flush_retries.labels(exc.metric_label).inc()
                log.warning("flush failed (retrying in %.1fs): %s", delay, exc.reason)
                groups.append(group)
                # Capped exponential backoff with jitter (workers retrying together spread
                # out); the source keeps the held messages from being redelivered meanwhile.
                await self.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 5.0)
                continue
            if part.stored:
                self.metrics.flush_seconds.observe(time.perf_counter() - started)
            rejected.extend(_refused(v, why) for v, why in refused)
            if part.busy:
                skipped.extend(v for v in group if v.prepared.tenant_id in part.busy)
                self.metrics.flush_skipped_tenants.inc(len(part.busy))
            total.stored.extend(part.stored)
            total.duplicates.extend(part.duplicates)
            if part.stored:
                total.oldest_received_us = min(
                    total.oldest_received_us or part.oldest_received_us, part.oldest_received_us
                )
            delay = 0.1
        if len(skipped) > 1:  # bisection may have visited groups out of batch order
            rank = {id(v): i for i, v in enumerate(items)}
            skipped.sort(key=lambda v: rank[id(v)])
        return total, rejected, skipped

    async def _dead_letter(self, dead: list[Dead]) -> set[int]:
        """Publish dead letters concurrently, each with bounded retries.

        Returns:
            ``id()`` of the messages whose dead letter could not be published: the caller
            leaves them in the source (NAK) instead of acking them.
        """
        now = self.now()
        slots = asyncio.Semaphore(DLQ_CONCURRENCY)

        async def one(d: Dead) -> bool:
            async with slots:
                return await self._publish_dead(d, now)

        outcomes = await asyncio.gather(*(one(d) for d in dead))
        held = {id(d.msg) for d, ok in zip(dead, outcomes, strict=True) if not ok}
        for d, ok in zip(dead, outcomes, strict=True):
            if ok:
                self.metrics.dead_lettered.labels(d.reason, d.stage, self._kind).inc()
                self._unpublished.pop(position(d.msg, self.settings.stream), None)
            if d.reason == "internal_error":
                self.metrics.internal_errors.labels(d.stage).inc()
                log.error("internal error on %s (dead-lettered): %s",
                          position(d.msg, self.settings.stream), d.message)  # fmt: skip
        self._unpublished_gauge.set(len(self._unpublished))
        return held

    async def _publish_dead(self, d: Dead, now: datetime) -> bool:
        error: Exception | None = None
        for attempt in range(DLQ_ATTEMPTS):
            try:
                await self.dead_letters.publish(d, now)
                return True
            except Exception as exc:
                error = exc.with_traceback(None)  # (its frames would hold this one: a cycle)
            await self.sleep(0.1 * 4**attempt)
        self._dead_letter_failures.inc()
        where = position(d.msg, self.settings.stream)
        self._unpublished[where] = f"{type(error).__name__}: {error}"
        log.error("dead letter for %s not published after %d attempts (held in the source, "
                  "retried with backoff): %r", where, DLQ_ATTEMPTS, error)  # fmt: skip
        return False

    def last_progress_age_s(self) -> float:
        """Seconds since the worker last settled a batch, while it holds messages (0 when
        it holds none: nothing waits). Exported as
        ``auditlog_pipeline_last_progress_age_seconds``."""
        if not self.source.held:
            return 0.0
        return time.monotonic() - self.last_progress

    def status(self) -> str:
        """``ok``, or ``degraded: <reason>`` (for /readyz): the pipeline holds messages and
        commits nothing for ``stall_after_s``, or dead letters wait unpublished."""
        stalled = self.last_progress_age_s()
        if stalled > self.settings.stall_after_s:
            return (f"degraded: stalled: nothing committed for {stalled:.0f} s while "
                    f"{len(self.source.held)} message(s) wait in {self._where()} (PostgreSQL "
                    f"or the broker slow or away?)")  # fmt: skip
        if not self._unpublished:
            return "ok"
        where, why = next(iter(self._unpublished.items()))
        return (f"degraded: {len(self._unpublished)} dead letter(s) could not be published "
                f"and wait in {self._where()} (e.g. {where}: {why[:200]})")  # fmt: skip

    def _where(self) -> str:
        return getattr(self.source, "where", f"stream {self.settings.stream}")


def _finished(running: set[asyncio.Task[None]], wake: asyncio.Event,
              task: asyncio.Task[None]) -> None:  # fmt: skip
    """A flush task ended: forget it and wake the batch loop (it may be waiting for it)."""
    running.discard(task)
    wake.set()


def _tenant_of(item: Held) -> str | None:
    """The tenant whose order ``item`` takes part in (dead letters: none)."""
    if type(item) is Valid:
        return item.prepared.tenant_id
    return item.tenant_id if type(item) is Pending else None


def _in_order(items: Sequence[Held], ids: set[int]) -> list[Held]:
    """Those of ``items`` whose ``id()`` is in ``ids``, in ``items``' order."""
    return [x for x in items if id(x) in ids]


def _refused(item: Valid, why: str) -> tuple[Dead, EventKey]:
    dead = Dead(msg=item.msg, reason="db_rejected", message=why, stage="flush")
    return dead, (item.prepared.tenant_id, item.prepared.id)


def _nak_delay(msgs: list[Message]) -> float:
    """Redelivery delay for messages held back: doubles per delivery, 2 s to 5 min."""
    delivered = max((m.delivered for m in msgs), default=1)
    return float(min(2 ** min(delivered, 20), 300))


def waited_for(msg: Message) -> bool:
    """Whether a writer may wait for ``msg``'s commit: the write API publishes every event
    with ``Audit-Idempotency-Key`` (producers publishing straight to the stream may too)."""
    headers = msg.headers
    return headers is not None and IDEMPOTENCY_HEADER in headers
