"""The hashed bytes of an event, frozen: ``canonical_bytes`` and ``chain_hash``.

Specified in ``schemas/README.md`` so that an outside verifier can recompute them from
stored rows or exported events. Changing these bytes needs a version field and
verification of both versions.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from schemas.events import Actor, AuditEvent, ResourceRef

GENESIS: Final = bytes(32)
_enc: Final = msgspec.json.Encoder(order="sorted")


def format_ts(ts: datetime) -> str:
    """RFC 3339 UTC with exactly six fractional digits, e.g. ``2026-11-26T04:57:36.000000Z``."""
    if ts.utcoffset():
        ts = ts.astimezone(UTC)
    # isoformat gives "...+00:00" for UTC (and nothing for naive, which we never store).
    text = ts.isoformat(timespec="microseconds")
    return (text[:-6] if ts.tzinfo is not None else text) + "Z"


class _Actor(msgspec.Struct, frozen=True, gc=False):
    display_name: str
    id: str
    type: str


class _Ref(msgspec.Struct, frozen=True, gc=False):
    display_name: str
    id: str
    type: str


class _Canonical(msgspec.Struct, frozen=True, gc=False):
    """The hashed document; fields are declared in sorted order, encoded compactly."""

    action: str
    actor: _Actor
    category: str
    changes: msgspec.Raw
    description: str
    id: uuid.UUID
    ip: str
    metadata: msgspec.Raw
    occurred_at: datetime
    primary_resource: _Ref | None
    received_at: datetime
    related_resources: msgspec.Raw
    request_id: str
    severity: str
    tenant_id: str
    trace_id: str
    user_agent: str


_NULL: Final = msgspec.Raw(b"null")
_refs_dec: Final = msgspec.json.Decoder(list[ResourceRef])


def _canonical_related(text: str | bytes) -> bytes:
    # related_resources is stored as jsonb (key order not kept): re-encode canonically.
    return _enc.encode(_refs_dec.decode(text))


def canonical_bytes(row: dict[str, Any]) -> bytes:
    """The bytes that are hashed for one stored row (specified in schemas/README.md).

    ``row`` maps column names to stored values: ``metadata`` and ``changes`` as their
    JSON text (embedded verbatim), ``related_resources`` as JSON text. The result is a
    compact JSON object with keys sorted; timestamps are RFC 3339 UTC (``Z``) with six
    fractional digits, omitted when the microsecond is zero; an absent
    primary resource or changes is ``null``. ``seq`` and ``hash`` are not part of it:
    position is bound by chaining each hash to the previous one.
    """
    primary = None
    if row["resource_type"] or row["resource_id"]:
        primary = _Ref(row["resource_display_name"], row["resource_id"], row["resource_type"])
    changes = row["changes"]
    related = row["related_resources"]
    doc = _Canonical(
        action=row["action"],
        actor=_Actor(row["actor_display_name"], row["actor_id"], row["actor_type"]),
        category=row["category"],
        changes=msgspec.Raw(changes.encode()) if changes is not None else _NULL,
        description=row["description"],
        id=row["id"] if isinstance(row["id"], uuid.UUID) else uuid.UUID(row["id"]),
        ip=row["ip"],
        metadata=msgspec.Raw(row["metadata"].encode()),
        occurred_at=row["occurred_at"],
        primary_resource=primary,
        received_at=row["received_at"],
        related_resources=msgspec.Raw(_canonical_related(related)),
        request_id=row["request_id"],
        severity=row["severity"],
        tenant_id=row["tenant_id"],
        trace_id=row["trace_id"],
        user_agent=row["user_agent"],
    )
    return _enc.encode(doc)


def chain_hash(prev_hash: bytes, canonical: bytes) -> bytes:
    """SHA-256(prev_hash || canonical)."""
    return hashlib.sha256(prev_hash + canonical).digest()


class _EventCanonical(msgspec.Struct, frozen=True, gc=False):
    """:class:`_Canonical` as the pipeline fills it: the event's own actor and resource
    Structs (their fields encode sorted too) and timestamps already in their text form."""

    action: str
    actor: Actor
    category: str
    changes: msgspec.Raw
    description: str
    id: uuid.UUID
    ip: str
    metadata: msgspec.Raw
    occurred_at: str
    primary_resource: ResourceRef | None
    received_at: str
    related_resources: msgspec.Raw
    request_id: str
    severity: str
    tenant_id: str
    trace_id: str
    user_agent: str


_NAIVE_EPOCH: Final = datetime(1970, 1, 1)
_US: Final = timedelta(microseconds=1)
# The instants a datetime holds (years 1-9999), in microseconds since 1970-01-01 UTC.
MIN_US: Final = (datetime.min - _NAIVE_EPOCH) // _US
MAX_US: Final = (datetime.max - _NAIVE_EPOCH) // _US
_second_text: dict[int, str] = {}


def canonical_ts(us: int) -> str:
    """The hashed form of a UTC instant given in microseconds since 1970-01-01:
    ``2026-11-26T04:57:36.123456Z``, or ``2026-11-26T04:57:36Z`` when the microsecond is
    zero (what msgspec writes for a UTC datetime; schemas/README.md).

    Raises:
        OverflowError: outside the years 1-9999 (as a datetime would).
    """
    if not MIN_US <= us <= MAX_US:
        raise OverflowError(f"date value out of range: {us} microseconds since 1970")
    sec, frac = divmod(us, 1_000_000)
    text = _second_text.get(sec)
    if text is None:  # events of a batch share few seconds: format each once
        if len(_second_text) >= 4096:
            _second_text.clear()
        text = _second_text[sec] = (_NAIVE_EPOCH + timedelta(seconds=sec)).isoformat()
    return f"{text}.{frac:06d}Z" if frac else text + "Z"


def event_canonical(event: AuditEvent, *, event_id: uuid.UUID, action: str, occurred_us: int,
                    received_us: int, metadata: bytes, changes: bytes | None,
                    related: bytes) -> bytes:  # fmt: skip
    """:func:`canonical_bytes` of an event as the pipeline enriches it (its ``id``,
    lower-cased ``action``, ``occurred_at`` and ``received_at`` given apart, so the decoded
    Struct is never copied), from its already encoded JSON parts (sorted-key compact JSON
    of ``metadata``, ``changes`` or None, ``related_resources``).

    Equal to ``canonical_bytes`` of the row the event is stored as (tested).
    """
    return _enc.encode(_EventCanonical(
        action=action,
        actor=event.actor,
        category=event.category,
        changes=msgspec.Raw(changes) if changes is not None else _NULL,
        description=event.description,
        id=event_id,
        ip=event.ip,
        metadata=msgspec.Raw(metadata),
        occurred_at=canonical_ts(occurred_us),
        primary_resource=event.primary_resource,
        received_at=canonical_ts(received_us),
        related_resources=msgspec.Raw(related),
        request_id=event.request_id,
        severity=event.severity,
        tenant_id=event.tenant_id,
        trace_id=event.trace_id,
        user_agent=event.user_agent,
    ))  # fmt: skip
