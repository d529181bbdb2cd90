"""pipeline.worker with in-memory fakes of its source, store and dead-letter sink.

The worker's guarantees, without servers: nothing is acked before its batch is stored
(or dead-lettered); duplicates are stored once; a refused event is found by bisection and
dead-lettered while the rest of its batch is stored; an unpublishable dead letter is
NAKed, never acked. The integration tests check the same against PostgreSQL and NATS.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.metrics import Metrics
from infra.settings import load_settings
from pipeline.ordering import bucket_of
from pipeline.sinks import FlushResult, RefusedRowError, RetryableStoreError
from pipeline.stages import Dead, Message, Valid
from pipeline.worker import DLQ_ATTEMPTS, Worker, waited_for
from schemas.ids import IDEMPOTENCY_HEADER
from tests.support.waits import eventually

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def event(tenant: str, n: int, **extra: object) -> bytes:
    doc = {"tenant_id": tenant, "action": "user.login", "id": f"00000000-0000-7000-8000-{n:012d}",
           "actor": {"type": "ACTOR_TYPE_USER", "id": "u1"},
           "occurred_at": "2026-11-30T11:00:00Z", **extra}  # fmt: skip
    return json.dumps(doc).encode()


def _named_twice(data: bytes) -> bytes:
    """``data`` with a second ``tenant_id`` member, ``tenant-x``, at its end."""
    return data[:-1] + b', "tenant_id": "tenant-x"}'


def message(seq: int, data: bytes) -> Message:
    stamp = int(NOW.timestamp()) * 10**9 + seq  # when the source stored it
    return Message(data=data, stream_seq=seq, timestamp_ns=stamp, ack=f"ack.{seq}")


class FakeSource:
    """Delivers ``chunks`` then ends; records every ack and nak, in order."""

    def __init__(self, chunks: list[list[Message]]) -> None:
        self._chunks = chunks
        self.held: dict[str, Message] = {}
        self.acked: list[int] = []
        self.naked: list[int] = []
        self.log: list[tuple[str, int]] = []

    async def start(self) -> None:
        pass

    async def chunks(self) -> AsyncIterator[list[Message]]:
        for chunk in self._chunks:
            for m in chunk:
                self.held[m.ack] = m
            yield chunk
            await asyncio.sleep(0)

    async def ack(self, msgs: list[Message]) -> None:
        for m in msgs:
            self.held.pop(m.ack, None)
            self.acked.append(m.stream_seq)
            self.log.append(("ack", m.stream_seq))

    async def nak(self, msgs: list[Message], delay_s: float) -> None:
        for m in msgs:
            self.held.pop(m.ack, None)
            self.naked.append(m.stream_seq)

    async def stop(self) -> None:
        pass


class FakeStore:
    """Keys stored once; per-tenant seq; refuses events whose description is "refuse";
    fails transiently ``outages`` times first."""

    def __init__(self, log: list[tuple[str, int]], outages: int = 0) -> None:
        self.rows: dict[tuple[str, object], int] = {}
        self.heads: dict[str, int] = {}
        self.calls = 0
        self.outages = outages
        self.log = log
        self.closed = 0

    async def close(self) -> None:
        self.closed += 1

    async def write(self, items: Sequence[Valid]) -> tuple[FlushResult, list[tuple[Valid, str]]]:
        self.calls += 1
        if self.outages:
            self.outages -= 1
            raise RetryableStoreError("08006: connection lost")
        if any(v.event.description == "refuse" for v in items):
            raise RefusedRowError("23514: check violation")
        result = FlushResult()
        for v in items:
            key = (v.prepared.tenant_id, v.prepared.id)
            if key in self.rows:
                result.duplicates.append(key)
                continue
            seq = self.heads.get(v.prepared.tenant_id, 0) + 1
            self.heads[v.prepared.tenant_id] = seq
            self.rows[key] = seq
            result.stored.append(key)
            received = v.prepared.received_us
            result.oldest_received_us = min(result.oldest_received_us or received, received)
            self.log.append(("stored", v.msg.stream_seq))
        return result, []


class FakeDeadLetters:
    def __init__(self, failures: int = 0) -> None:
        self.letters: list[Dead] = []
        self.failures = failures

    async def publish(self, dead: Dead, now: datetime) -> None:
        if self.failures:
            self.failures -= 1
            raise TimeoutError("nats: timeout")
        self.letters.append(dead)


async def _no_wait(_: float) -> None:
    await asyncio.sleep(0)


def worker(source: FakeSource, store: FakeStore, dead: FakeDeadLetters, **env: str) -> Worker:
    cfg = load_settings({"AUDIT_BATCH_MAX_EVENTS": "8", "AUDIT_BATCH_MAX_LATENCY_MS": "1",
                         "AUDIT_DEDUP_WINDOW": "1000", **env})  # fmt: skip
    return Worker(cfg, store, dead, source, Metrics(), now=lambda: NOW, sleep=_no_wait)


async def run(chunks: list[list[Message]], store_outages: int = 0, dlq_failures: int = 0):
    source = FakeSource(chunks)
    store = FakeStore(source.log, store_outages)
    dead = FakeDeadLetters(dlq_failures)
    w = worker(source, store, dead)
    await asyncio.wait_for(w.run(), 10)
    return source, store, dead, w


async def test_every_message_is_acked_only_after_its_event_is_stored() -> None:
    msgs = [message(i, event("t1", i)) for i in range(1, 21)]
    source, store, _, w = await run([msgs[:7], msgs[7:15], msgs[15:]], store_outages=3)
    assert sorted(source.acked) == list(range(1, 21)) and not source.naked
    for seq in range(1, 21):  # each ack comes after that message's event was stored
        assert source.log.index(("stored", seq)) < source.log.index(("ack", seq))
    assert sorted(store.rows.values()) == list(range(1, 21))  # one gapless chain
    assert store.calls > 3 and w.totals["stored"] == 20


async def test_redelivered_and_repeated_events_are_stored_once() -> None:
    first = [message(i, event("t1", i)) for i in range(1, 6)]
    again = [message(10 + i, event("t1", i)) for i in range(1, 6)]  # same ids, new seqs
    source, store, dead, w = await run([first, again, first[:2]])
    assert len(store.rows) == 5 and w.totals["stored"] == 5
    assert w.totals["duplicates"] == 7 and not dead.letters
    assert sorted(source.acked) == sorted(m.stream_seq for m in [*first, *again, *first[:2]])


@settings(max_examples=40, deadline=None)
@given(refused=st.sets(st.integers(1, 32)), n=st.integers(1, 32))
def test_refused_events_are_found_and_dead_lettered_while_the_rest_is_stored(
    refused: set[int], n: int
) -> None:
    refused = {i for i in refused if i <= n}
    msgs = [message(i, event("t1", i, description="refuse" if i in refused else ""))
            for i in range(1, n + 1)]  # fmt: skip

    source, store, dead, w = asyncio.run(run([msgs]))
    assert {d.msg.stream_seq for d in dead.letters} == refused
    assert all(d.reason == "db_rejected" and "23514" in d.message for d in dead.letters)
    assert {seq for (_, _), seq in store.rows.items()} == set(range(1, n - len(refused) + 1))
    assert sorted(source.acked) == list(range(1, n + 1)) and not source.naked
    assert w.totals == {"stored": n - len(refused), "duplicates": 0,
                        "dead_lettered": len(refused)}  # fmt: skip


async def test_invalid_messages_are_dead_lettered_with_their_reason() -> None:
    msgs = [message(1, b"{not json"), message(2, event("t1", 2)), message(3, b"[]")]
    source, store, dead, _ = await run([msgs])
    assert {d.msg.stream_seq: d.reason for d in dead.letters} == {1: "malformed_json",
                                                                  3: "invalid_field"}  # fmt: skip
    assert len(store.rows) == 1 and sorted(source.acked) == [1, 2, 3]


async def test_a_dead_letter_that_cannot_be_published_is_nacked_never_acked() -> None:
    msgs = [message(1, b"{not json"), message(2, event("t1", 2))]
    source, store, dead, w = await run([msgs], dlq_failures=DLQ_ATTEMPTS)
    assert source.naked == [1] and source.acked == [2] and not dead.letters
    assert len(store.rows) == 1
    assert w.status().startswith("degraded: 1 dead letter(s) could not be published")


async def test_commit_listener_hears_stored_duplicate_and_rejected_keys() -> None:
    heard: list[tuple[int, int, int]] = []

    async def listener(stored: list, dupes: list, rejected: list) -> None:
        heard.append((len(stored), len(dupes), len(rejected)))

    msgs = [message(1, event("t1", 1)), message(2, event("t1", 1)),
            message(3, event("t1", 3, description="refuse"))]  # fmt: skip
    source = FakeSource([msgs])
    w = worker(source, FakeStore(source.log), FakeDeadLetters())
    w.on_commit = listener
    await asyncio.wait_for(w.run(), 10)
    assert [sum(col) for col in zip(*heard, strict=True)] == [1, 1, 1]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.booleans(), st.booleans()), min_size=1,
                max_size=30))  # fmt: skip
async def test_commit_notices_name_exactly_the_keys_a_writer_can_wait_for(
    specs: list[tuple[int, bool, bool]],
) -> None:
    """With ``notify=waited_for`` the listener hears every key of a message carrying
    ``Audit-Idempotency-Key`` (the write API's), stored, duplicate or refused, and no key
    published only without it, whatever the mix, repeats and refusals."""
    heard: set[tuple[str, object]] = set()

    async def listener(stored: list, dupes: list, rejected: list) -> None:
        heard.update(stored, dupes, (k for k, _ in rejected))

    msgs = []
    for seq, (n, keyed, refuse) in enumerate(specs, 1):
        extra = {"description": "refuse"} if refuse else {}
        data = event("t1", n + (100 if refuse else 0), **extra)
        headers = {IDEMPOTENCY_HEADER: "k"} if keyed else None
        msgs.append(
            Message(
                data=data,
                headers=headers,
                stream_seq=seq,
                timestamp_ns=int(NOW.timestamp()) * 10**9 + seq,
                ack=f"ack.{seq}",
            )
        )
    source = FakeSource([msgs[i : i + 5] for i in range(0, len(msgs), 5)])
    w = worker(source, FakeStore(source.log), FakeDeadLetters())
    w.on_commit, w.notify = listener, waited_for
    await asyncio.wait_for(w.run(), 10)

    def key(n: int, refuse: bool) -> tuple[str, object]:
        return ("t1", uuid.UUID(f"00000000-0000-7000-8000-{n + (100 if refuse else 0):012d}"))

    waited = {key(n, r) for n, keyed, r in specs if keyed}
    assert heard == waited
    assert sorted(source.acked) == list(range(1, len(specs) + 1))  # all settled regardless


@pytest.mark.parametrize("outages", [0, 5])
async def test_a_stalled_store_is_reported_and_nothing_is_acked_meanwhile(outages: int) -> None:
    msgs = [message(i, event("t1", i)) for i in range(1, 4)]
    source = FakeSource([msgs])
    store = FakeStore(source.log, outages=10**9)
    w = worker(source, store, FakeDeadLetters(), AUDIT_STALL_AFTER_S="0")
    task = asyncio.create_task(w.run())
    # The store is retried (no real waits: sleep is injected).
    await eventually(lambda: store.calls, lambda n: n >= 3 + outages, timeout=10, interval=0,
                     what=f"{3 + outages} store attempts")  # fmt: skip
    assert source.acked == [] and len(source.held) == 3
    assert w.status().startswith("degraded: stalled")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.acked == []  # cancelled mid-outage: nothing acked, all redelivered later


class ContendedStore(FakeStore):
    """A FakeStore whose tenants another worker holds now and then: each write reports the
    tenants ``busy_plan`` names as busy (nothing of theirs written) and checks that no two
    of this worker's flushes ever hold one tenant at once."""

    def __init__(self, log: list[tuple[str, int]], busy_plan: list[set[str]]) -> None:
        super().__init__(log)
        self.busy_plan = busy_plan
        self.in_flight: set[str] = set()
        self.order: dict[str, list[int]] = {}

    async def write(self, items: Sequence[Valid]) -> tuple[FlushResult, list[tuple[Valid, str]]]:
        tenants = {v.event.tenant_id for v in items}
        assert not tenants & self.in_flight, "two flushes of one worker hold a tenant"
        self.in_flight |= tenants
        try:
            await asyncio.sleep(0)  # let the other flush slots interleave
            busy = self.busy_plan.pop(0) & tenants if self.busy_plan else set()
            kept = [v for v in items if v.event.tenant_id not in busy]
            result, refused = await super().write(kept)
            result.busy = busy
            for v in kept:
                self.order.setdefault(v.event.tenant_id, []).append(v.msg.stream_seq)
            return result, refused
        finally:
            self.in_flight -= tenants


@settings(max_examples=60, deadline=None)
@given(
    tenants=st.lists(st.sampled_from("abcd"), min_size=1, max_size=60),
    plan=st.lists(st.sets(st.sampled_from("abcd")), max_size=40),
    chunk=st.integers(1, 9),
)
def test_events_of_busy_tenants_are_stored_later_in_order_and_acked_once(
    tenants: list[str], plan: list[set[str]], chunk: int
) -> None:
    """Whatever tenants another worker holds, and for how long: every event is stored
    once, in its tenant's arrival order, and acked once, after it was stored."""
    msgs = [message(i + 1, event(t, i + 1)) for i, t in enumerate(tenants)]
    source = FakeSource([msgs[i : i + chunk] for i in range(0, len(msgs), chunk)])
    store = ContendedStore(source.log, list(plan))
    cfg = load_settings({"AUDIT_BATCH_MAX_EVENTS": "5", "AUDIT_BATCH_MAX_LATENCY_MS": "0",
                         "AUDIT_FLUSH_CONCURRENCY": "3"})  # fmt: skip
    w = Worker(cfg, store, FakeDeadLetters(), source, Metrics(), now=lambda: NOW,
               sleep=_no_wait)  # fmt: skip
    asyncio.run(asyncio.wait_for(w.run(), 30))
    assert sorted(source.acked) == [m.stream_seq for m in msgs] and not source.naked
    for seq in source.acked:
        assert source.log.index(("stored", seq)) < source.log.index(("ack", seq))
    for t, seqs in store.order.items():
        assert seqs == sorted(seqs), t
    assert len(store.rows) == len(msgs) and w.totals["stored"] == len(msgs)


MANY_TENANTS = [f"tenant-{k}" for k in range(12)]


class FakeClaims:
    """Bucket claims another worker contends for: each claim call consults ``plan`` for
    the buckets held elsewhere this time (or ``None``: claims unavailable now), counts
    what this worker holds, and lets the store check every flush against it."""

    def __init__(self, plan: list[set[int] | None], waited: int = 0) -> None:
        self.plan = plan
        self.held: dict[int, int] = {}
        self.calls = 0
        self.unavailable = 0  # claim calls that answered None
        self.peers = 0  # 1 (alone: the worker takes oldest first) while nothing is held elsewhere
        self.waited = waited  # claim calls during which another worker waits for every bucket
        self.yielded: list[int] = []  # buckets skipped because their turn was had

    async def claim(self, buckets: Sequence[int], want: int, yield_to: Sequence[int] = (),
                    wait: bool = False) -> list[int] | None:  # fmt: skip
        self.calls += 1
        await asyncio.sleep(0)
        elsewhere = self.plan.pop(0) if self.plan else set()
        if elsewhere is None:
            self.unavailable += 1
            return None
        self.peers = 2 if elsewhere or self.waited else 1
        if self.waited:
            self.waited -= 1
            self.yielded.extend(yield_to)
            elsewhere = elsewhere | set(yield_to)
        got = [b for b in buckets if b not in elsewhere][:want]
        for b in got:
            self.held[b] = self.held.get(b, 0) + 1
        return got

    async def release(self, buckets: Sequence[int]) -> None:
        await asyncio.sleep(0)
        for b in buckets:
            assert self.held.get(b, 0) > 0, f"bucket {b} released more often than claimed"
            self.held[b] -= 1

    async def close(self) -> None:
        pass


class ClaimCheckingStore(FakeStore):
    """Fails the test if a flush (while claims answer) holds a bucket not claimed."""

    def __init__(self, log: list[tuple[str, int]], claims: FakeClaims) -> None:
        super().__init__(log)
        self.claims = claims
        self.order: dict[str, list[int]] = {}

    async def write(self, items: Sequence[Valid]) -> tuple[FlushResult, list[tuple[Valid, str]]]:
        if not self.claims.unavailable:
            for v in items:
                b = bucket_of(v.prepared.tenant_id)
                assert self.claims.held.get(b, 0) > 0, f"flushed bucket {b} unclaimed"
        await asyncio.sleep(0)
        result, refused = await super().write(items)
        for v in items:
            self.order.setdefault(v.event.tenant_id, []).append(v.msg.stream_seq)
        return result, refused


def _run_claiming(msgs: list[Message], chunk: int, claims: FakeClaims, batch: int,
                  slots: int) -> tuple[FakeSource, ClaimCheckingStore]:  # fmt: skip
    """Run a worker with ``claims`` over ``msgs`` (delivered ``chunk`` at a time) until
    the source ends, a turn at a bucket ending with its first flush (``TURN_S`` 0)."""
    source = FakeSource([msgs[i : i + chunk] for i in range(0, len(msgs), chunk)])
    store = ClaimCheckingStore(source.log, claims)
    cfg = load_settings({"AUDIT_BATCH_MAX_EVENTS": str(batch), "AUDIT_BATCH_MAX_LATENCY_MS": "0",
                         "AUDIT_FLUSH_CONCURRENCY": str(slots)})  # fmt: skip
    w = Worker(cfg, store, FakeDeadLetters(), source, Metrics(), now=lambda: NOW,
               sleep=_no_wait, claims=claims)  # fmt: skip
    with patch("pipeline.worker.TURN_S", 0.0):
        asyncio.run(asyncio.wait_for(w.run(), 30))
    return source, store


@settings(max_examples=60, deadline=None)
@given(
    tenants=st.lists(st.sampled_from(MANY_TENANTS), min_size=1, max_size=80),
    plan=st.lists(st.one_of(st.sets(st.integers(0, 63), max_size=64), st.none()), max_size=30),
    chunk=st.integers(1, 9),
    misnamed=st.sets(st.integers(1, 80), max_size=8),
    waited=st.integers(0, 6),
)
def test_a_worker_flushes_only_buckets_it_claimed_and_releases_each_claim_once(
    tenants: list[str],
    plan: list[set[int] | None],
    chunk: int,
    misnamed: set[int],
    waited: int,
) -> None:
    """Whatever buckets other workers hold, and when claims are unavailable: a flush holds
    only claimed buckets (while claims answer), every claim is released once, and every
    event is stored once, in its tenant's arrival order, acked once after it was stored.

    ``misnamed`` events name their tenant twice (the decoder keeps the last, ``tenant-x``):
    they waited under the first one's bucket, and are still flushed only under a claim of
    their own tenant's. For the first ``waited`` claims another worker waits for every
    bucket, and the worker's turn at a bucket ends with its first flush (``TURN_S`` 0): it
    yields those it flushed, and still stores everything."""
    msgs = [message(i + 1, _named_twice(event(t, i + 1)) if i + 1 in misnamed else event(t, i + 1))
            for i, t in enumerate(tenants)]  # fmt: skip
    claims = FakeClaims(list(plan), waited)
    source, store = _run_claiming(msgs, chunk, claims, batch=5, slots=3)
    assert sorted(source.acked) == [m.stream_seq for m in msgs] and not source.naked
    for seq in source.acked:
        assert source.log.index(("stored", seq)) < source.log.index(("ack", seq))
    for t, seqs in store.order.items():
        assert t == "tenant-x" or seqs == sorted(seqs), t
    assert len(store.rows) == len(msgs)
    assert len(store.order.get("tenant-x", [])) == len(misnamed & set(range(1, len(msgs) + 1)))
    assert not any(claims.held.values()), claims.held  # every claim released
    assert claims.calls > 0


def test_a_worker_yields_a_bucket_it_kept_busy_to_a_worker_waiting_for_it() -> None:
    """One tenant, events arriving while its bucket flushes (a backlog): once the worker's
    turn at the bucket is over (``TURN_S``, 0 here), its claims pass the bucket as one to
    yield, the claim skips it while another worker waits, and the worker carries on with
    it once nobody waits (every event stored once, in order)."""
    msgs = [message(i + 1, event("tenant-1", i + 1)) for i in range(40)]
    claims = FakeClaims([], waited=3)
    source, store = _run_claiming(msgs, 4, claims, batch=4, slots=2)
    assert claims.yielded and set(claims.yielded) == {bucket_of("tenant-1")}
    assert sorted(source.acked) == list(range(1, 41))
    assert store.order["tenant-1"] == list(range(1, 41))
    assert not any(claims.held.values())
