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

from infra.settings import Settings
from pipeline.chain import Prepared, prepare
from schemas.events import AuditEvent, EventValidationError, decode_event
from schemas.ids import (
    EPOCH,
    IDEMPOTENCY_HEADER,
    EventKey,
    given_event_id,
    new_uuid7,
    subject_tenant,
    uuid7_from,
)


class Message(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One message from a source, as the stages see it.

    Attributes:
        data: the original bytes.
        headers: message headers (``Nats-Msg-Id`` among them), or None.
        stream_seq: the source's position (JetStream stream sequence, or the Kafka offset
            within ``origin``); 0 with no ``origin`` means none.
        timestamp_ns: when the source stored the message (0 if unknown or untrusted: a
            Kafka producer's own CreateTime is not a receipt time).
        origin: where ``stream_seq`` counts from, for sources with many sequences (Kafka:
            ``<topic>/<partition>``); empty for JetStream (one stream, one sequence).
        created_ns: the record's own timestamp when the source has one that stays the same
            across redeliveries (Kafka), used with the position to derive stable ids.
        ack: opaque token the source uses to acknowledge (the JetStream reply subject).
        subject: the subject it was published on (tenant-bound subjects name a tenant).
        delivered: how many times the source has delivered it (1 the first time).
        size: bytes it holds in memory (payload and headers), for the source's budget.
    """

    data: bytes
    headers: dict[str, str] | None = None
    stream_seq: int = 0
    timestamp_ns: int = 0
    ack: str = ""
    subject: str = ""
    delivered: int = 1
    size: int = 0
    origin: str = ""
    created_ns: int = 0


def position(msg: Message, stream: str) -> str:
    """The message's place in its source for logs and dead letters: ``AUDIT:42`` (stream
    and sequence) or ``audit.events/3:42`` (Kafka topic/partition and offset)."""
    return f"{msg.origin or stream}:{msg.stream_seq}"


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`process` accepts beyond the event schema (from Settings).

    Attributes:
        max_future_skew: how far ``occurred_at`` may lie after ``received_at``.
        max_age: how far ``occurred_at`` may lie before ``received_at``.
        subject: the base event subject; a message on ``<subject>.<tenant token>`` is
            bound to that tenant (see :func:`tenant_subject`).
    """

    max_future_skew: timedelta = timedelta(minutes=15)
    max_age: timedelta = timedelta(days=366)
    subject: str = "audit.events"


DEFAULT_LIMITS: Final = Limits()


def limits_for(settings: Settings) -> Limits:
    """The :class:`Limits` a worker applies, from its settings."""
    return Limits(
        max_future_skew=timedelta(seconds=settings.max_future_skew_s),
        max_age=timedelta(days=settings.max_event_age_days),
        subject=settings.subject,
    )


# The pipeline's bounds are this much wider than the write API's, so an event a write API
# accepted (measured from when it took it) is never refused a moment later.
OCCURRED_GRACE: Final = timedelta(minutes=1)


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


def check_occurred(event: AuditEvent, received: datetime, limits: Limits,
                   grace: timedelta = timedelta(0)) -> EventValidationError | None:  # fmt: skip
    """The error for an ``occurred_at`` outside [received - max_age, received + skew]."""
    occurred = event.occurred_at
    if occurred is None:
        return None
    ahead = occurred - received  # one subtraction; the bounds are fixed timedeltas
    if -limits.max_age - grace <= ahead <= limits.max_future_skew + grace:
        return None
    if ahead > timedelta(0):
        why = (f"is more than {limits.max_future_skew} after it was received "
               f"(AUDIT_MAX_FUTURE_SKEW_S)")  # fmt: skip
    else:
        why = (f"is more than {limits.max_age.days} days before it was received "
               f"(AUDIT_MAX_EVENT_AGE_DAYS; raise it to import older history)")  # fmt: skip
    return EventValidationError(
        f"occurred_at {occurred.isoformat()} {why}",
        field="occurred_at",
        reason="occurred_at_out_of_range",
    )


def validate(msg: Message) -> AuditEvent | Dead:
    """Decode and validate the message body; a :class:`Dead` says why it failed."""
    try:
        return decode_event(msg.data)
    except EventValidationError as exc:
        return Dead(msg=msg, reason=exc.reason, message=exc.message, field=exc.field)


def _as_utc(ts: datetime) -> datetime:
    # Stored and hashed in UTC, so that the hashed bytes are identical to what a verifier
    # reads back. No rounding is needed: a datetime holds microseconds at most, as
    # PostgreSQL does.
    return ts.astimezone(UTC)


def enrich(event: AuditEvent, msg: Message, now: datetime) -> AuditEvent:
    """Fill the server-side fields and normalise.

    - ``id``: the event's own id, else ``Audit-Idempotency-Key`` or ``Nats-Msg-Id``
      (:func:`id_from_key`), else a UUIDv7 derived from the source position (so
      redeliveries of one message get one id: JetStream sequence and timestamp; Kafka
      topic, partition, offset and record timestamp), else a random UUIDv7.
    - ``received_at``: when the source stored the message (else ``now``); producers
      cannot set it.
    - ``occurred_at``: as given (UTC), else ``received_at``.
    - ``action``: lower-cased.
    """
    if msg.timestamp_ns:
        received = EPOCH + timedelta(microseconds=msg.timestamp_ns // 1000)
    else:
        received = _as_utc(now)
    event_id = event.id
    if event_id is None:
        headers = msg.headers
        key = (headers.get(IDEMPOTENCY_HEADER) or headers.get("Nats-Msg-Id")) if headers else None
        event_id = given_event_id(event.tenant_id, None, key)
    if event_id is None:
        if msg.origin:
            digest = hashlib.blake2b(
                msg.origin.encode() + b"\0" + msg.stream_seq.to_bytes(8, "big")
                + msg.created_ns.to_bytes(8, "big", signed=True),
                digest_size=10,
            ).digest()  # fmt: skip
            event_id = uuid7_from(max(0, msg.created_ns) // 1_000_000, digest)
        elif msg.stream_seq:
            digest = hashlib.blake2b(
                msg.stream_seq.to_bytes(8, "big") + msg.timestamp_ns.to_bytes(8, "big"),
                digest_size=10,
            ).digest()
            event_id = uuid7_from(msg.timestamp_ns // 1_000_000, digest)
        else:
            # No stable source position (e.g. a direct call): a fresh random id.
            event_id = new_uuid7(now, os.urandom(10))
    occurred = _as_utc(event.occurred_at) if event.occurred_at else received
    return msgspec.structs.replace(
        event,
        id=event_id,
        received_at=received,
        occurred_at=occurred,
        action=event.action.lower(),
    )


def process(msg: Message, now: datetime, limits: Limits = DEFAULT_LIMITS) -> Valid | Dead:
    """validate, enrich, check, prepare (column values + canonical bytes): the per-message part.

    Never raises (but BaseExceptions such as cancellation): a known problem is a
    :class:`Dead` with its reason; anything unexpected is a :class:`Dead` with reason
    ``internal_error`` naming the exception, so one message can never stop a worker.
    """
    try:
        return _process(msg, now, limits)
    except Exception as exc:
        return Dead(msg=msg, reason="internal_error", message=f"{type(exc).__name__}: {exc}",
                    stage="process")  # fmt: skip


def _process(msg: Message, now: datetime, limits: Limits) -> Valid | Dead:
    result = validate(msg)
    if isinstance(result, Dead):
        return result
    bound = subject_tenant(limits.subject, msg.subject)
    if bound is not None and bound != result.tenant_id:
        return Dead(msg=msg, reason="tenant_mismatch", field="tenant_id",
                    message=f"tenant_id {result.tenant_id!r} published on the subject of "
                            f"tenant {bound!r}")  # fmt: skip
    event = enrich(result, msg, now)
    assert event.received_at is not None
    error = check_occurred(event, event.received_at, limits, OCCURRED_GRACE)
    if error is not None:
        return Dead(msg=msg, reason=error.reason, message=error.message, field=error.field)
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

    def remember(self, keys: list[EventKey]) -> None:
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
