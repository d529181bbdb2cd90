"""The write path, transport-neutral: every write goes through JetStream and the pipeline.

A write is validated with the pipeline's own decoder (same messages), published to its
tenant's subject (``<subject>.<tenant token>``) with its id as ``Audit-Idempotency-Key``
and ``<tenant>:<id>`` as ``Nats-Msg-Id`` (JetStream's duplicate window is stream-wide, so
the tenant is part of the key), and answered once the pipeline reports it committed (any
worker, any process: commit notices travel on a core NATS subject). Without ``wait`` it
is answered as soon as JetStream has acknowledged the event (durable, not yet queryable).
A client id, or an idempotency key, makes retries safe: the same answer and never a
second row, also after NATS's duplicate window.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from infra.settings import Settings
from pipeline.stages import Limits, check_occurred
from query_api import sql
from query_api.auth import Principal
from query_api.contract import MAX_BATCH_EVENTS, MAX_KEY_LEN, BatchError, BatchResult
from query_api.errors import ApiError, bad_request
from query_api.publisher import Ack, Publisher
from query_api.waiters import STORED, Awaited, Waiters
from schemas.events import AuditEvent, EventValidationError, decode_event
from schemas.ids import (
    IDEMPOTENCY_HEADER,
    EventKey,
    given_event_id,
    msg_id_for,
    new_uuid7,
    tenant_subject,
)

MAX_BATCH_BYTES = 4 * 1024 * 1024
log = logging.getLogger(__name__)

Outcome = bool | ApiError  # True: committed; False: durable in JetStream only


class _TenantOnly(msgspec.Struct):
    tenant_id: str = ""


_tenant_only = msgspec.json.Decoder(_TenantOnly)


class _FreshIds:
    """The ids of a request's events: the one an event names (its ``id``, else its key's),
    else a fresh UUIDv7, all from one clock reading and one read of random bytes for the
    whole request (10 bytes per id), not one each."""

    def __init__(self, n: int) -> None:
        self._now = datetime.now(UTC)
        self._random = os.urandom(10 * n)
        self._next = 0

    def id_for(self, event: AuditEvent, key: str | None = None) -> Any:
        given = given_event_id(event.tenant_id, event.id, key)
        if given is not None:
            return given
        at = self._next
        self._next += 10
        return new_uuid7(self._now, self._random[at : at + 10])


class Writes:
    """Publishes writes and awaits their commits.

    Args:
        settings: stream, subject and write timeout.
        limits: what the pipeline accepts (the same checks run here first).
        pool: reads the claim table (is a retried event stored already?).
        nc: NATS client (reads JetStream messages a duplicate ack points at).
        publisher: pipelined JetStream publishes.
        waiters: futures resolved by the pipeline's commit notices.
    """

    def __init__(self, *, settings: Settings, limits: Limits, pool: asyncpg.Pool, nc: Any,
                 publisher: Publisher, waiters: Waiters) -> None:  # fmt: skip
        self.settings = settings
        self.limits = limits
        self.pool = pool
        self.nc = nc
        self.publisher = publisher
        self.waiters = waiters

    def validate(self, raw: bytes, prefix: str) -> AuditEvent:
        """Decode and check one event as the pipeline will (occurred_at measured from now)."""
        try:
            event = decode_event(raw)
            error = check_occurred(event, datetime.now(UTC), self.limits)
            if error is not None:
                raise error
            return event
        except EventValidationError as exc:
            field = f"{prefix}.{exc.field}" if exc.field else prefix
            raise ApiError(400, exc.reason, exc.message, field) from exc

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.settings.write_timeout_s

    async def _same_event(self, seq: int, key: EventKey) -> bool:
        """Is JetStream message ``seq`` (what a duplicate ack pointed at) this very event?

        A raw producer may have published a ``Nats-Msg-Id`` of the project's form for another
        tenant or event; then ours was dropped and must be sent again.
        """
        try:
            msg = await self.nc.jetstream().get_msg(self.settings.stream, seq)
            tenant = _tenant_only.decode(msg.data or b"").tenant_id
        except Exception:
            return False  # gone (purged, expired) or unreadable: send ours again to be sure
        headers = msg.headers or {}
        return tenant == key[0] and headers.get(IDEMPOTENCY_HEADER) == str(key[1])

    async def _stored(self, keys: list[EventKey]) -> set[EventKey]:
        """Which of ``keys`` are already stored (claimed in ``audit.event_ids``)."""
        if not keys:
            return set()
        async with self.pool.acquire() as conn:
            return await sql.claimed(conn, keys)

    async def _deliver(self, items: list[tuple[bytes, EventKey]], wait: bool,
                       deadline: float) -> list[Outcome]:  # fmt: skip
        """Publish ``items`` (pipelined) and, with ``wait``, await their commits until
        ``deadline`` (loop time). One outcome per item, in order."""
        awaited = self.waiters.expect([key for _, key in items]) if wait else None
        try:
            out, pending_dups, stored = await self._publish(items, deadline)
            if awaited is None:
                return out
            for i in pending_dups:
                if items[i][1] in stored:
                    out[i] = True
            return await self._await_commits(items, awaited, out, deadline)
        finally:
            if awaited is not None:
                self.waiters.forget(awaited)

    async def _publish(
        self, items: list[tuple[bytes, EventKey]], deadline: float
    ) -> tuple[list[Outcome], list[int], set[EventKey]]:
        """Publish; returns (outcome per item, the duplicates JetStream reported, which of
        them are stored already).

        A duplicate that is neither stored nor this tenant's own event in flight means a
        forged ``Nats-Msg-Id`` shadowed ours: it is published again under one no one else
        can know.
        """
        acks = await self._publish_all(items, deadline, lambda key: msg_id_for(*key))
        out: list[Outcome] = [False if isinstance(a, Ack) else a for a in acks]
        dup = [i for i, a in enumerate(acks) if isinstance(a, Ack) and a.duplicate]
        # One query says which duplicates are stored already (a retry's usual case; their
        # JetStream message is gone once acked).
        stored = await self._stored([items[i][1] for i in dup])
        forged = [i for i in dup if items[i][1] not in stored
                  and not await self._same_event(acks[i].seq, items[i][1])]  # type: ignore[union-attr]  # fmt: skip
        if forged:
            nonce = os.urandom(8).hex()
            again = await self._publish_all([items[i] for i in forged], deadline,
                                            lambda key: f"{msg_id_for(*key)}:{nonce}")  # fmt: skip
            for i, ack in zip(forged, again, strict=True):
                out[i] = False if isinstance(ack, Ack) else ack
                dup.remove(i)
        return out, dup, stored

    async def _await_commits(self, items: list[tuple[bytes, EventKey]], awaited: Awaited,
                             out: list[Outcome], deadline: float) -> list[Outcome]:  # fmt: skip
        """Wait for the commit notices of the items still ``False`` in ``out``; those not
        heard of by ``deadline`` are looked up in the claim table."""
        loop = asyncio.get_running_loop()
        outcomes = awaited.outcomes
        for i, o in enumerate(out):
            if o is not False:  # answered already (stored before, or refused): no notice
                awaited.settle(i, STORED)  # will come for it, so it is not waited for
        if awaited.waiting:
            await asyncio.wait([awaited.done], timeout=max(0.0, deadline - loop.time()))
        late = []
        for i, o in enumerate(out):
            if o is not False:
                continue
            outcome = outcomes[i]
            if outcome is None:
                late.append(i)
            elif outcome != STORED:  # PostgreSQL refused it: DLQ
                out[i] = ApiError(400, "db_rejected",
                                  f"the event could not be stored: {outcome}", "event")  # fmt: skip
            else:
                out[i] = True
        stored = await self._stored([items[i][1] for i in late])
        for i in late:
            out[i] = items[i][1] in stored
        return out

    async def _publish_all(self, items: list[tuple[bytes, EventKey]], deadline: float,
                           msg_id: Any) -> list[Ack | ApiError]:  # fmt: skip
        """Publish ``items`` pipelined, each on its tenant's subject; one ack or error each.

        Every event is its own message, all framed in one protocol write: a connection
        that refuses the write fails them all; otherwise each gets JetStream's answer.
        """
        base = self.settings.subject
        pub = self.publisher
        answers: list[Ack | BaseException]
        try:
            sent = await pub.publish_many([
                (tenant_subject(base, key[0]), raw,
                 {"Nats-Msg-Id": msg_id(key), IDEMPOTENCY_HEADER: str(key[1])})
                for raw, key in items
            ])  # fmt: skip
        except Exception as exc:
            answers = [exc] * len(items)
        else:
            loop = asyncio.get_running_loop()
            answers = await pub.settle_many(sent, max(0.1, min(5.0, deadline - loop.time())))
        out: list[Ack | ApiError] = []
        for ack in answers:
            if isinstance(ack, Ack):
                out.append(ack)
            else:
                why = str(ack) or type(ack).__name__
                out.append(ApiError(503, "unavailable", f"event log unavailable: {why}"))
        return out

    async def publish_own(self, raws: list[bytes]) -> list[bool]:
        """Publish the service's own events (the access log) without waiting for commits;
        per event, whether JetStream has it. An invalid one is a bug: logged, not retried."""
        sent: list[int] = []
        items: list[tuple[bytes, EventKey]] = []
        ids = _FreshIds(len(raws))
        for i, raw in enumerate(raws):
            try:
                event = self.validate(raw, "event")
            except ApiError as exc:
                log.error("the service made an invalid event (dropped): %s", exc.message)
                continue
            sent.append(i)
            items.append((raw, (event.tenant_id, ids.id_for(event))))
        accepted = [True] * len(raws)
        for i, outcome in zip(sent, await self._deliver(items, False, self._deadline()),
                              strict=True):  # fmt: skip
            accepted[i] = not isinstance(outcome, ApiError)
        return accepted

    async def write_one(self, who: Principal, raw: bytes, key_header: str | None,
                        wait: bool) -> tuple[str, bool]:  # fmt: skip
        """Validate, authorise, publish and (with ``wait``) await one event. Any protocol.

        Returns:
            (event id, committed).
        """
        who.require("write")
        event = self.validate(raw, "event")
        tenant = who.tenant_for(event.tenant_id)
        if key_header is not None and not 0 < len(key_header) <= MAX_KEY_LEN:
            raise bad_request(
                f"Idempotency-Key must be 1-{MAX_KEY_LEN} characters", "Idempotency-Key"
            )
        key = (tenant, _FreshIds(1).id_for(event, key_header))
        deadline = self._deadline()
        (outcome,) = await self._deliver([(raw, key)], wait, deadline)
        if isinstance(outcome, ApiError):
            raise outcome
        return str(key[1]), outcome and wait

    async def write_many(self, who: Principal, raws: list[bytes], wait: bool) -> BatchResult:
        """Per-event results for a batch (invalid events named, valid ones published)."""
        who.require("write")
        if len(raws) > MAX_BATCH_EVENTS:
            raise bad_request(f"a batch holds at most {MAX_BATCH_EVENTS} events", "events")
        errors: list[BatchError] = []
        accepted: list[tuple[int, bytes, EventKey]] = []
        ids = _FreshIds(len(raws))
        for i, raw in enumerate(raws):
            try:
                event = self.validate(raw, f"events.{i}")
                tenant = who.tenant_for(event.tenant_id)
            except ApiError as exc:
                errors.append(BatchError(i, exc.code, exc.message, exc.field))
                continue
            accepted.append((i, raw, (tenant, ids.id_for(event))))
        results = await self._deliver([(raw, key) for _, raw, key in accepted], wait,
                                      self._deadline())  # fmt: skip
        answer = BatchResult(event_ids=[], errors=errors)
        for (i, _, key), res in zip(accepted, results, strict=True):
            if isinstance(res, ApiError):
                errors.append(BatchError(i, res.code, res.message, res.field))
                continue
            answer.event_ids.append(key[1])
            if not res and wait:  # durable in JetStream, not yet committed
                answer.uncommitted_event_ids.append(key[1])
        errors.sort(key=lambda e: e.index)
        return answer
