"""The REST write API: every write goes through JetStream and the pipeline.

``POST /v1/audit/events`` validates the event with the pipeline's own decoder (same
messages), publishes it to its tenant's subject (``<subject>.<tenant token>``) with its id
as ``Audit-Idempotency-Key`` and ``<tenant>:<id>`` as ``Nats-Msg-Id`` (JetStream's
duplicate window is stream-wide, so the tenant is part of the key), and answers once the
pipeline reports it committed (any worker, any process: commit notifications travel on a
core NATS subject). With
``wait=false`` it answers as soon as JetStream has acknowledged the event (durable, not
yet queryable). A client id, or an ``Idempotency-Key`` header, makes retries safe: the
same answer and never a second row, also after NATS's duplicate window.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web

from pipeline.commits import Key
from pipeline.stages import check_occurred
from query_api.auth import Principal
from query_api.errors import ApiError, bad_request
from query_api.handlers import principal
from query_api.publisher import Ack
from query_api.state import LIMITS, NATS, POOL, PUBLISHER, SETTINGS, WAITERS
from schemas.events import MAX_DEPTH, AuditEvent, EventValidationError, decode_event
from schemas.ids import IDEMPOTENCY_HEADER, id_from_key, msg_id_for, new_uuid7, tenant_subject

MAX_BATCH_EVENTS = 1000
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_KEY_LEN = 256


class _One(msgspec.Struct, forbid_unknown_fields=True):
    event: msgspec.Raw


class _Many(msgspec.Struct, forbid_unknown_fields=True):
    events: list[msgspec.Raw]


_one = msgspec.json.Decoder(_One)
_many = msgspec.json.Decoder(_Many)
_enc = msgspec.json.Encoder()


def _wait_param(request: web.Request) -> bool:
    for name in request.query:
        if name != "wait":
            raise bad_request(f"unknown parameter {name[:64]!r}", name[:64])
    value = request.query.get("wait", "true").lower()
    if value not in ("true", "false", "1", "0"):
        raise bad_request("wait must be true or false", "wait")
    return value in ("true", "1")


def _body(data: bytes, decoder: Any, what: str) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise bad_request(f"body must be {what}: {exc}") from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"malformed JSON: {exc}") from exc
    except RecursionError as exc:  # msgspec stops cleanly at Python's recursion limit
        raise ApiError(400, "too_deep", "the body is nested too deeply; an event may be "
                       f"nested at most {MAX_DEPTH} levels") from exc  # fmt: skip


def _validate(app: web.Application, raw: bytes, prefix: str) -> AuditEvent:
    """Decode and check one event as the pipeline will (occurred_at measured from now)."""
    try:
        event = decode_event(raw)
        error = check_occurred(event, datetime.now(UTC), app[LIMITS])
        if error is not None:
            raise error
        return event
    except EventValidationError as exc:
        field = f"{prefix}.{exc.field}" if exc.field else prefix
        raise ApiError(400, exc.reason, exc.message, field) from exc


class _TenantOnly(msgspec.Struct):
    tenant_id: str = ""


_tenant_only = msgspec.json.Decoder(_TenantOnly)


async def _same_event(app: web.Application, seq: int, key: Key) -> bool:
    """Is JetStream message ``seq`` (what a duplicate ack pointed at) this very event?

    A raw producer may have published a ``Nats-Msg-Id`` of the project's form for another
    tenant or event; then ours was dropped and must be sent again.
    """
    try:
        msg = await app[NATS].jetstream().get_msg(app[SETTINGS].stream, seq)
        tenant = _tenant_only.decode(msg.data or b"").tenant_id
    except Exception:
        return False  # gone (purged, expired) or unreadable: send ours again to be sure
    headers = msg.headers or {}
    return tenant == key[0] and headers.get(IDEMPOTENCY_HEADER) == str(key[1])


def _event_id(event: AuditEvent, key: str | None) -> Any:
    if event.id is not None:
        return event.id
    if key:
        return id_from_key(event.tenant_id, key)
    return new_uuid7(datetime.now(UTC), os.urandom(10))


async def _stored(app: web.Application, keys: list[Key]) -> set[Key]:
    """Which of ``keys`` are already stored (claimed in ``audit.event_ids``)."""
    if not keys:
        return set()
    async with app[POOL].acquire() as conn:
        rows = await conn.fetch(
            "SELECT i.tenant_id, i.id FROM audit.event_ids i"
            " JOIN unnest($1::text[], $2::uuid[]) AS k(tenant_id, id)"
            " ON i.tenant_id = k.tenant_id AND i.id = k.id",
            [k[0] for k in keys], [k[1] for k in keys],
        )  # fmt: skip
    return {(r["tenant_id"], r["id"]) for r in rows}


Outcome = bool | ApiError  # True: committed; False: durable in JetStream only


async def _deliver(app: web.Application, items: list[tuple[bytes, Key]], wait: bool,
                   deadline: float) -> list[Outcome]:  # fmt: skip
    """Publish ``items`` (pipelined) and, with ``wait``, await their commits until
    ``deadline`` (loop time). One outcome per item, in order."""
    waiters = app[WAITERS]
    futs = [waiters.expect(key) for _, key in items] if wait else []
    try:
        loop = asyncio.get_running_loop()
        acks = await _publish_all(app, items, deadline, lambda key: msg_id_for(*key))
        out: list[Outcome] = []
        dup: list[int] = []  # JetStream had the id already: maybe stored long ago
        for i, ack in enumerate(acks):
            if isinstance(ack, Ack):
                out.append(False)
                if ack.duplicate:
                    dup.append(i)
            else:
                out.append(ack)
        # One query says which duplicates are stored already (a retry's usual case; their
        # JetStream message is gone once acked). Any other must be this tenant's own event
        # still in flight; else (a forged Nats-Msg-Id) ours was dropped: publish it again
        # under a Nats-Msg-Id no one else can know.
        done = await _stored(app, [items[i][1] for i in dup])
        forged = [i for i in dup if items[i][1] not in done
                  and not await _same_event(app, acks[i].seq, items[i][1])]  # type: ignore[union-attr]  # fmt: skip
        if forged:
            nonce = os.urandom(8).hex()
            again = await _publish_all(app, [items[i] for i in forged], deadline,
                                       lambda key: f"{msg_id_for(*key)}:{nonce}")  # fmt: skip
            for i, ack in zip(forged, again, strict=True):
                out[i] = False if isinstance(ack, Ack) else ack
                dup.remove(i)
        if not wait:
            return out
        for i in dup:
            if items[i][1] in done:
                out[i] = True
        waiting = [futs[i] for i, o in enumerate(out) if o is False]
        if waiting:
            await asyncio.wait(waiting, timeout=max(0.0, deadline - loop.time()))
        late = []
        for i, o in enumerate(out):
            if o is not False:
                continue
            if not futs[i].done():
                late.append(i)
            elif (refused := futs[i].result()) is not None:  # PostgreSQL refused it: DLQ
                out[i] = ApiError(400, "db_rejected",
                                  f"the event could not be stored: {refused}", "event")  # fmt: skip
            else:
                out[i] = True
        done = await _stored(app, [items[i][1] for i in late])
        for i in late:
            out[i] = items[i][1] in done
        return out
    finally:
        for (_, key), fut in zip(items, futs, strict=False):
            waiters.forget(key, fut)


async def _publish_all(app: web.Application, items: list[tuple[bytes, Key]], deadline: float,
                       msg_id: Any) -> list[Ack | ApiError]:  # fmt: skip
    """Publish ``items`` pipelined, each on its tenant's subject; one ack or error each.

    Each event is published on its own: if the connection fails part-way, the events
    already sent keep their answers (they may be stored) and the rest fail.
    """
    settings = app[SETTINGS]
    pub = app[PUBLISHER]
    sent: list[asyncio.Future[Ack] | None] = []
    failed: BaseException | None = None
    for raw, key in items:
        if failed is None:
            headers = {"Nats-Msg-Id": msg_id(key), IDEMPOTENCY_HEADER: str(key[1])}
            try:
                subject = tenant_subject(settings.subject, key[0])
                sent.append(await pub.publish(subject, raw, headers))
                continue
            except Exception as exc:
                failed = exc
        sent.append(None)
    loop = asyncio.get_running_loop()
    within = max(0.1, min(5.0, deadline - loop.time()))
    settled = iter(await pub.settle([f for f in sent if f is not None], within))
    out: list[Ack | ApiError] = []
    for published in sent:
        ack = next(settled) if published is not None else failed
        if isinstance(ack, Ack):
            out.append(ack)
        else:
            why = str(ack) if published is not None else type(ack).__name__
            out.append(ApiError(503, "unavailable", f"event log unavailable: {why}"))
    return out


async def write_one(app: web.Application, who: Principal, raw: bytes, key_header: str | None,
                    wait: bool) -> tuple[str, bool]:  # fmt: skip
    """Validate, authorise, publish and (with ``wait``) await one event. Any protocol.

    Returns:
        (event id, committed).
    """
    who.require("write")
    event = _validate(app, raw, "event")
    tenant = who.tenant_for(event.tenant_id)
    if key_header is not None and not 0 < len(key_header) <= MAX_KEY_LEN:
        raise bad_request(f"Idempotency-Key must be 1-{MAX_KEY_LEN} characters", "Idempotency-Key")
    key = (tenant, _event_id(event, key_header))
    deadline = asyncio.get_running_loop().time() + app[SETTINGS].write_timeout_s
    (outcome,) = await _deliver(app, [(raw, key)], wait, deadline)
    if isinstance(outcome, ApiError):
        raise outcome
    return str(key[1]), outcome and wait


async def write_many(app: web.Application, who: Principal, raws: list[bytes],
                     wait: bool) -> dict[str, Any]:  # fmt: skip
    """Per-event results for a batch: {event_ids, errors[, uncommitted_event_ids]}."""
    who.require("write")
    if len(raws) > MAX_BATCH_EVENTS:
        raise bad_request(f"a batch holds at most {MAX_BATCH_EVENTS} events", "events")
    errors: list[dict[str, Any]] = []
    accepted: list[tuple[int, bytes, Key]] = []
    for i, raw in enumerate(raws):
        try:
            event = _validate(app, raw, f"events.{i}")
            tenant = who.tenant_for(event.tenant_id)
        except ApiError as exc:
            errors.append({"index": i, "code": exc.code, "message": exc.message,
                           "field": exc.field})  # fmt: skip
            continue
        accepted.append((i, raw, (tenant, _event_id(event, None))))
    deadline = asyncio.get_running_loop().time() + app[SETTINGS].write_timeout_s
    results = await _deliver(app, [(raw, key) for _, raw, key in accepted], wait, deadline)
    event_ids: list[str] = []
    pending: list[str] = []
    for (i, _, key), res in zip(accepted, results, strict=True):
        if isinstance(res, ApiError):
            errors.append({"index": i, "code": res.code, "message": res.message,
                           "field": res.field})  # fmt: skip
            continue
        event_ids.append(str(key[1]))
        if not res:
            pending.append(str(key[1]))
    errors.sort(key=lambda e: e["index"])
    answer: dict[str, Any] = {"event_ids": event_ids, "errors": errors}
    if pending and wait:
        answer["uncommitted_event_ids"] = pending  # durable in JetStream, not yet committed
    return answer


async def write_event(request: web.Request) -> web.Response:
    """POST /v1/audit/events: ``{"event": {...}}`` → ``{"event_id": ...}`` after commit."""
    who = await principal(request)
    wait = _wait_param(request)
    body = _body(await request.read(), _one, '{"event": {...}}')
    event_id, committed = await write_one(request.app, who, bytes(body.event),
                                          request.headers.get("Idempotency-Key"), wait)  # fmt: skip
    if not committed:
        # Durable in JetStream, not (yet) known to be queryable.
        return web.json_response({"event_id": event_id, "committed": False}, status=202)
    return web.json_response({"event_id": event_id})


async def write_events(request: web.Request) -> web.Response:
    """POST /v1/audit/events:batch: per-event results; valid events stored, invalid named."""
    who = await principal(request)
    wait = _wait_param(request)
    data = await request.read()
    if len(data) > MAX_BATCH_BYTES:
        raise ApiError(413, "too_large", f"a batch is at most {MAX_BATCH_BYTES} bytes")
    body = _body(data, _many, '{"events": [...]}')
    answer = await write_many(request.app, who, [bytes(r) for r in body.events], wait)
    status = 202 if (not wait or answer.get("uncommitted_event_ids")) else 200
    return web.json_response(answer, status=status)


def add_write_routes(app: web.Application) -> None:
    """Register the write routes."""
    app.router.add_post("/v1/audit/events", write_event)
    app.router.add_post("/v1/audit/events:batch", write_events)
