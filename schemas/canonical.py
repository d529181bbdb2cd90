"""The hashed bytes of an event, frozen: ``canonical_bytes`` and ``chain_hash``.

Specified in ``schemas/README.md`` so that an outside verifier can recompute them from
stored rows or exported events. Changing these bytes needs a version field and
verification of both versions.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from schemas.events import AuditEvent, ResourceRef

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


def event_canonical(event: AuditEvent, metadata: bytes, changes: bytes | None,
                    related: bytes) -> bytes:  # fmt: skip
    """:func:`canonical_bytes` of an enriched event, from its already encoded JSON parts
    (sorted-key compact JSON of ``metadata``, ``changes`` or None, ``related_resources``).

    Equal to ``canonical_bytes`` of the row the event is stored as (tested); computed
    from the event so the pipeline encodes each part once.
    """
    primary = event.primary_resource
    actor = event.actor
    occurred, received = event.occurred_at, event.received_at
    assert occurred is not None and received is not None and event.id is not None
    doc = _Canonical(
        action=event.action,
        actor=_Actor(actor.display_name, actor.id, actor.type),
        category=event.category,
        changes=msgspec.Raw(changes) if changes is not None else _NULL,
        description=event.description,
        id=event.id,
        ip=event.ip,
        metadata=msgspec.Raw(metadata),
        occurred_at=occurred,
        primary_resource=_Ref(primary.display_name, primary.id, primary.type) if primary else None,
        received_at=received,
        related_resources=msgspec.Raw(related),
        request_id=event.request_id,
        severity=event.severity,
        tenant_id=event.tenant_id,
        trace_id=event.trace_id,
        user_agent=event.user_agent,
    )
    return _enc.encode(doc)
