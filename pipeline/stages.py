"""Pure pipeline stages: validate, enrich, deduplicate. No sockets, no clocks of their own.

Each stage takes and returns msgspec Structs. The I/O adapters (NATS source, PostgreSQL
flush, dead-letter publisher) live elsewhere and call these.
"""

from __future__ import annotations

import hashlib
import operator
import os
import re
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple

import msgspec

from infra.settings import Settings
from pipeline.chain import Prepared, prepare
from schemas.events import AuditEvent, EventValidationError, decode_event, decode_parts
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


class Valid(msgspec.Struct, frozen=True, gc=False):
    """A message whose event validated, with its storage form prepared.

    Attributes:
        msg: the message.
        prepared: the event's keys, hashed bytes and COPY row (``pipeline.chain.Prepared``).
    """

    msg: Message
    prepared: Prepared

    @property
    def event(self) -> AuditEvent:
        """The enriched event, made on each call (``Prepared.event``): for tools and tests."""
        return self.prepared.event


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


class Pending(msgspec.Struct, frozen=True, gc=False):
    """A message held for a later :func:`process`, with the tenant read off its first bytes
    (:func:`pending_tenant`) so that it can wait in its tenant's bucket.

    The worker prepares a flush's events when the flush takes them, not when they arrive:
    what a flush walks is then allocated together (and freed together), whichever slice of
    the held messages it takes. The cheap tenant is a guess for ordering only; the flush
    checks it against the decoded event (``pipeline.worker``).

    Attributes:
        msg: the message.
        tenant_id: the tenant its payload starts with.
    """

    msg: Message
    tenant_id: str


# An object whose first member is "tenant_id" with a string free of escapes (JSON
# whitespace allowed between the tokens): the tenant a Pending waits under.
_TENANT_FIRST: Final = re.compile(rb'\{[ \t\n\r]*"tenant_id"[ \t\n\r]*:[ \t\n\r]*"([^"\\]+)"')


def pending_tenant(msg: Message) -> str | None:
    """The tenant of a message whose preparing may wait, or None (prepare it now).

    It may wait when :func:`process` gives the same result later as now: the source gave
    a receipt time and a stream position (``now`` is then unused), and its payload opens
    with the member ``"tenant_id"`` and a string without escapes in valid UTF-8, the
    tenant. Anything else (Kafka records without a broker time, other member orders,
    escapes, malformed JSON) is prepared at once. ``pipeline._fastpath.defer_split``
    decides the same in C (tested side by side).
    """
    if not (msg.timestamp_ns and msg.stream_seq):
        return None
    data = msg.data
    found = _TENANT_FIRST.match(data) if type(data) is bytes else None
    if found is None:
        return None
    try:
        return found.group(1).decode()
    except UnicodeDecodeError:
        return None


def defer_batch(msgs: Sequence[Message], now: datetime,
                limits: Limits = DEFAULT_LIMITS) -> list[Pending | Valid | Dead]:  # fmt: skip
    """Per message, a :class:`Pending` when its preparing may wait (:func:`pending_tenant`),
    else :func:`process` of it now; in the messages' order."""
    out: list[Pending | Valid | Dead] = []
    for msg in msgs:
        tenant = pending_tenant(msg)
        out.append(Pending(msg, tenant) if tenant is not None else process(msg, now, limits))
    return out


def check_occurred(event: AuditEvent | _Occurred, received: datetime, limits: Limits,
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


_US: Final = timedelta(microseconds=1)


def micros(ts: datetime) -> int:
    """An aware datetime as UTC microseconds since 1970-01-01 (exact)."""
    return (ts - EPOCH) // _US


def event_id_for(tenant_id: str, msg: Message, now: datetime) -> uuid.UUID:
    """The id of an event that names none itself: ``Audit-Idempotency-Key`` or
    ``Nats-Msg-Id`` (:func:`schemas.ids.given_event_id`), else a UUIDv7 derived from the
    source position (so redeliveries of one message get one id: JetStream sequence and
    timestamp; Kafka topic, partition, offset and record timestamp), else a random UUIDv7."""
    headers = msg.headers
    key = (headers.get(IDEMPOTENCY_HEADER) or headers.get("Nats-Msg-Id")) if headers else None
    event_id = given_event_id(tenant_id, None, key)
    if event_id is not None:
        return event_id
    if msg.origin:
        digest = hashlib.blake2b(
            msg.origin.encode() + b"\0" + msg.stream_seq.to_bytes(8, "big")
            + msg.created_ns.to_bytes(8, "big", signed=True),
            digest_size=10,
        ).digest()  # fmt: skip
        return uuid7_from(max(0, msg.created_ns) // 1_000_000, digest)
    if msg.stream_seq:
        digest = hashlib.blake2b(
            msg.stream_seq.to_bytes(8, "big") + msg.timestamp_ns.to_bytes(8, "big"),
            digest_size=10,
        ).digest()
        return uuid7_from(msg.timestamp_ns // 1_000_000, digest)
    # No stable source position (e.g. a direct call): a fresh random id.
    return new_uuid7(now, os.urandom(10))


def enrich(event: AuditEvent, msg: Message, now: datetime) -> AuditEvent:
    """The event with its server-side fields filled, as a new Struct (the write API's
    view; the pipeline keeps them apart, see :func:`process`).

    - ``id``: the event's own id, else :func:`event_id_for`.
    - ``received_at``: when the source stored the message (else ``now``); producers
      cannot set it.
    - ``occurred_at``: as given (UTC), else ``received_at``.
    - ``action``: lower-cased.
    """
    if msg.timestamp_ns:
        received = EPOCH + timedelta(microseconds=msg.timestamp_ns // 1000)
    else:
        received = _as_utc(now)
    event_id = event.id if event.id is not None else event_id_for(event.tenant_id, msg, now)
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

    This is the pure path and the oracle of ``pipeline._fastpath`` (which must give equal
    results for every message, tested): the event is decoded once
    (:func:`schemas.events.decode_parts`), enriched without copying it (its id and times
    kept apart, the times as integer microseconds) and prepared for storage.
    """
    try:
        return _process(msg, now, limits)
    except Exception as exc:
        return Dead(msg=msg, reason="internal_error", message=f"{type(exc).__name__}: {exc}",
                    stage="process")  # fmt: skip


def _process(msg: Message, now: datetime, limits: Limits) -> Valid | Dead:
    try:
        event, metadata, changes = decode_parts(msg.data)
    except EventValidationError as exc:
        return Dead(msg=msg, reason=exc.reason, message=exc.message, field=exc.field)
    bound = subject_tenant(limits.subject, msg.subject)
    if bound is not None and bound != event.tenant_id:
        return Dead(msg=msg, reason="tenant_mismatch", field="tenant_id",
                    message=f"tenant_id {event.tenant_id!r} published on the subject of "
                            f"tenant {bound!r}")  # fmt: skip
    received_us = msg.timestamp_ns // 1000 if msg.timestamp_ns else micros(now)
    occurred_us = micros(event.occurred_at) if event.occurred_at else received_us
    low, high = occurred_bounds(limits)
    if not low <= occurred_us - received_us <= high:
        received = EPOCH + timedelta(microseconds=received_us)
        occurred = EPOCH + timedelta(microseconds=occurred_us)
        error = check_occurred(_Occurred(occurred), received, limits, OCCURRED_GRACE)
        assert error is not None
        return Dead(msg=msg, reason=error.reason, message=error.message, field=error.field)
    event_id = event.id if event.id is not None else event_id_for(event.tenant_id, msg, now)
    prepared = prepare(event, event_id=event_id, occurred_us=occurred_us,
                       received_us=received_us, metadata=metadata, changes=changes)  # fmt: skip
    return Valid(msg, prepared)


def occurred_bounds(limits: Limits) -> tuple[int, int]:
    """The pipeline's bounds of ``occurred_at - received_at`` in microseconds (grace
    included; :func:`check_occurred` says the same in timedeltas)."""
    return (-((limits.max_age + OCCURRED_GRACE) // _US),
            (limits.max_future_skew + OCCURRED_GRACE) // _US)  # fmt: skip


class _Occurred(NamedTuple):
    """What :func:`check_occurred` reads of an event."""

    occurred_at: datetime


_PREPARED_KEY = operator.attrgetter("prepared.key")


class Deduplicator:
    """A bounded in-memory window of recently committed (tenant_id, id) keys.

    It only saves work: the storage layer (``audit.event_ids``) is what guarantees an
    event is stored once. Keys enter the window after commit (:meth:`remember`); the
    oldest are forgotten first once it holds more than ``capacity``. Both calls work on
    a whole batch with set operations (C speed), never key by key in Python: a set of the
    keys, and the batches they came in, oldest first, to forget them in bulk.

    Args:
        capacity: how many keys to remember (oldest forgotten first).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # (tenant_id, id.int): hashing a UUID object runs Python code, its int does not
        # (``Prepared.key``).
        self._seen: set[tuple[str, int]] = set()
        # The keys of ``_seen`` in the order they were remembered, a list per call.
        self._order: deque[list[tuple[str, int]]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, tenant_id: str, event_id: uuid.UUID) -> bool:
        """True when the key was committed recently."""
        return (tenant_id, event_id.int) in self._seen

    def remember(self, keys: list[EventKey]) -> None:
        """Record committed keys, evicting the oldest beyond capacity."""
        self.remember_keys([(tenant, event_id.int) for tenant, event_id in keys])

    def remember_keys(self, keys: list[tuple[str, int]], new: bool = False) -> None:
        """:meth:`remember` of keys as ``Prepared.key`` has them.

        ``new``: the caller knows them all distinct and none remembered (the fresh keys
        of a :meth:`split_keys` that were all stored: a key remembered since by another
        flush was claimed by that flush, so it could not have been stored here too): they
        are not checked again (two set passes less). The list is kept: the caller must not
        change it afterwards.
        """
        if not keys:
            return
        seen, order = self._seen, self._order
        # Only keys not remembered yet, once each: a key keeps its first place (as in a
        # dict), and ``order`` holds exactly the keys of ``seen``.
        fresh = keys if new else [key for key in dict.fromkeys(keys) if key not in seen]
        if not fresh:
            return
        seen.update(fresh)
        order.append(fresh)
        while len(seen) > self.capacity:
            excess = len(seen) - self.capacity
            oldest = order[0]
            if excess >= len(oldest):
                seen.difference_update(order.popleft())
            else:
                seen.difference_update(oldest[:excess])
                order[0] = oldest[excess:]

    def split(self, items: list[Valid]) -> tuple[list[Valid], list[Valid]]:
        """Split into (first occurrences not seen before, duplicates), each in input order.

        Duplicates are repeats inside ``items`` and keys already in the window.
        """
        fresh, dupes, _ = self.split_keys(items)
        return fresh, dupes

    def split_keys(self, items: list[Valid]
                   ) -> tuple[list[Valid], list[Valid], list[tuple[str, int]]]:  # fmt: skip
        """:meth:`split`, plus the fresh items' keys in order (what :meth:`remember_keys`
        takes once they are stored): the batch's keys are read once, not again after the
        commit (each pass over a batch's objects costs, the more so when a flush takes a
        slice of the events a worker holds)."""
        keys = list(map(_PREPARED_KEY, items))
        unique = set(keys)
        known = unique & self._seen  # iterates the smaller set
        if len(unique) == len(keys) and not known:
            return list(items), [], keys  # the usual batch: nothing to drop
        # Duplicates are few (a producer's retries): find the indices to drop, then keep
        # the rest in one pass. Each key's first index; a later occurrence is dropped.
        first: dict[tuple[str, int], int] = {}
        at = first.setdefault
        drop = [i for i, key in enumerate(keys) if at(key, i) != i]
        if known:  # first occurrences of keys the window already holds: dropped too
            drop += [first[key] for key in known]
            drop.sort()
        fresh: list[Valid] = []
        fresh_keys: list[tuple[str, int]] = []
        start = 0
        for i in drop:  # the runs between dropped indices, copied as slices
            fresh += items[start:i]
            fresh_keys += keys[start:i]
            start = i + 1
        fresh += items[start:]
        fresh_keys += keys[start:]
        return fresh, [items[i] for i in drop], fresh_keys
