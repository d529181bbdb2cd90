"""Pure pipeline stages: validate, enrich, deduplicate. No sockets, no clocks of their own.

Each stage takes and returns msgspec Structs. The I/O adapters (NATS source, PostgreSQL
flush, dead-letter publisher) live elsewhere and call these.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Final

import msgspec

from pipeline.chain import Prepared, prepare
from schemas.events import AuditEvent, EventValidationError, decode_event

# Namespace for ids derived from idempotency keys that are not UUIDs (stable forever).
IDEMPOTENCY_NAMESPACE: Final = uuid.UUID("5a0b7a7e-3c1f-4d55-9a8e-6f1f2f0c0a11")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Names the event when present (before Nats-Msg-Id): lets a replay keep the event's
# identity while using a fresh Nats-Msg-Id that NATS's duplicate window accepts.
IDEMPOTENCY_HEADER: Final = "Audit-Idempotency-Key"


class Message(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One message from a source, as the stages see it.

    Attributes:
        data: the original bytes.
        headers: message headers (``Nats-Msg-Id`` among them), or None.
        stream_seq: the source's position (JetStream stream sequence), 0 if none.
        timestamp_ns: when the source stored the message (0 if unknown).
        ack: opaque token the source uses to acknowledge (the JetStream reply subject).
    """

    data: bytes
    headers: dict[str, str] | None = None
    stream_seq: int = 0
    timestamp_ns: int = 0
    ack: str = ""


class Valid(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A message whose event validated and was enriched, with its storage form prepared."""

    msg: Message
    event: AuditEvent
    prepared: Prepared


class Dead(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A message that goes to the dead-letter stream.

    Attributes:
        reason: machine-readable code (``malformed_json``, ``unknown_enum``, ``db_rejected``...).
        message: human-readable explanation.
        field: dotted path of the offending field, when known.
        stage: the stage that rejected it (``validate``, ``flush``).
    """

    msg: Message
    reason: str
    message: str
    field: str = ""
    stage: str = "validate"


def uuid7_from(ms: int, entropy: bytes) -> uuid.UUID:
    """A UUIDv7 whose time is ``ms`` and whose random bits come from ``entropy`` (>=10 bytes).

    Deterministic: the same inputs give the same id, which makes ids assigned to a
    redelivered message identical to the first delivery's.
    """
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (int.from_bytes(entropy[:2], "big") & 0x0FFF) << 64
    rand_b = int.from_bytes(entropy[2:10], "big") & ((1 << 62) - 1)
    value |= (0b10 << 62) | rand_b
    return uuid.UUID(int=value)


def new_uuid7(now: datetime, random_bytes: bytes) -> uuid.UUID:
    """A fresh UUIDv7 for ``now`` (random bits supplied by the caller, e.g. os.urandom)."""
    return uuid7_from(int((now - _EPOCH).total_seconds() * 1000), random_bytes)


def id_from_key(tenant_id: str, key: str) -> uuid.UUID:
    """The event id for an idempotency key (``Nats-Msg-Id`` or ``Idempotency-Key``).

    A key that is a UUID is the id itself; any other key maps to a UUIDv5 under the
    tenant, so the same key always names the same event.
    """
    try:
        return uuid.UUID(key)
    except ValueError:
        return uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{tenant_id}\x1f{key}")


def validate(msg: Message) -> AuditEvent | Dead:
    """Decode and validate the message body; a :class:`Dead` says why it failed."""
    try:
        return decode_event(msg.data)
    except EventValidationError as exc:
        return Dead(msg=msg, reason=exc.reason, message=exc.message, field=exc.field)


def _utc_micro(ts: datetime) -> datetime:
    # PostgreSQL keeps microseconds; normalising here keeps the hashed bytes identical
    # to what a verifier reads back.
    return ts.astimezone(UTC)


def enrich(event: AuditEvent, msg: Message, now: datetime) -> AuditEvent:
    """Fill the server-side fields and normalise.

    - ``id``: the event's own id, else ``Audit-Idempotency-Key`` or ``Nats-Msg-Id``
      (:func:`id_from_key`), else a UUIDv7 derived from the
      source position (so redeliveries of one message get one id), else a random UUIDv7.
    - ``received_at``: when the source stored the message (else ``now``); producers
      cannot set it.
    - ``occurred_at``: as given (UTC), else ``received_at``.
    - ``action``: lower-cased.
    """
    if msg.timestamp_ns:
        received = _EPOCH + timedelta(microseconds=msg.timestamp_ns // 1000)
    else:
        received = _utc_micro(now)
    event_id = event.id
    if event_id is None:
        headers = msg.headers
        key = (headers.get(IDEMPOTENCY_HEADER) or headers.get("Nats-Msg-Id")) if headers else None
        if key:
            event_id = id_from_key(event.tenant_id, key)
        elif msg.stream_seq:
            digest = hashlib.blake2b(
                msg.stream_seq.to_bytes(8, "big") + msg.timestamp_ns.to_bytes(8, "big"),
                digest_size=10,
            ).digest()
            event_id = uuid7_from(msg.timestamp_ns // 1_000_000, digest)
        else:
            # No stable source position (e.g. a direct call): a fresh random id.
            event_id = new_uuid7(now, os.urandom(10))
    occurred = _utc_micro(event.occurred_at) if event.occurred_at else received
    return msgspec.structs.replace(
        event,
        id=event_id,
        received_at=received,
        occurred_at=occurred,
        action=event.action.lower(),
    )


def process(msg: Message, now: datetime) -> Valid | Dead:
    """validate, enrich, prepare (column values + canonical bytes): the per-message part."""
    result = validate(msg)
    if isinstance(result, Dead):
        return result
    event = enrich(result, msg, now)
    return Valid(msg=msg, event=event, prepared=prepare(event))


class Deduplicator:
    """A bounded in-memory window of recently committed (tenant_id, id) keys.

    It only saves work: the storage layer (``audit.event_ids``) is what guarantees an
    event is stored once. Keys enter the window after commit (:meth:`remember`).

    Args:
        capacity: how many keys to remember (oldest forgotten first).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # (tenant_id, id.int): hashing a UUID object runs Python code, its int does not.
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, tenant_id: str, event_id: uuid.UUID) -> bool:
        """True when the key was committed recently."""
        return (tenant_id, event_id.int) in self._seen

    def remember(self, keys: list[tuple[str, uuid.UUID]]) -> None:
        """Record committed keys, evicting the oldest beyond capacity."""
        seen = self._seen
        for tenant, event_id in keys:
            seen[(tenant, event_id.int)] = None
        while len(seen) > self.capacity:
            seen.popitem(last=False)

    def split(self, items: list[Valid]) -> tuple[list[Valid], list[Valid]]:
        """Split into (first occurrences not seen before, duplicates).

        Duplicates are repeats inside ``items`` and keys already in the window.
        """
        fresh: list[Valid] = []
        dupes: list[Valid] = []
        batch: set[tuple[str, int]] = set()
        seen = self._seen
        for item in items:
            ev = item.event
            key = (ev.tenant_id, ev.id.int)  # type: ignore[union-attr]  # enrich set the id
            if key in batch or key in seen:
                dupes.append(item)
            else:
                batch.add(key)
                fresh.append(item)
        return fresh, dupes
