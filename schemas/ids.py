"""Identifiers shared by every producer and consumer of events: event ids, NATS message
ids and tenant subject tokens. Pure functions; the write API and the pipeline derive ids
here so that both name the same event the same way.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Final

# Namespace for ids derived from idempotency keys that are not UUIDs (stable forever).
IDEMPOTENCY_NAMESPACE: Final = uuid.UUID("5a0b7a7e-3c1f-4d55-9a8e-6f1f2f0c0a11")
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Names the event when present (before Nats-Msg-Id): lets a replay keep the event's
# identity while using a fresh Nats-Msg-Id that NATS's duplicate window accepts.
IDEMPOTENCY_HEADER: Final = "Audit-Idempotency-Key"
# (tenant_id, event id): names one stored event (ids are unique within a tenant).
EventKey = tuple[str, uuid.UUID]


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
    return uuid7_from(int((now - EPOCH).total_seconds() * 1000), random_bytes)


def id_from_key(tenant_id: str, key: str) -> uuid.UUID:
    """The event id for an idempotency key (``Nats-Msg-Id`` or ``Idempotency-Key``).

    A key that is a UUID is the id itself; any other key maps to a UUIDv5 under the
    tenant, so the same key always names the same event.
    """
    if len(key) >= 32:  # shorter is never a UUID: uuid.UUID() wants 32 hex digits
        try:
            return uuid.UUID(key)
        except ValueError:
            pass
    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{tenant_id}\x1f{key}")


def msg_id_for(tenant_id: str, event_id: uuid.UUID | str) -> str:
    """The ``Nats-Msg-Id`` the project's publishers set for an event: per tenant.

    JetStream's duplicate window is stream-wide, so a bare event id would let one tenant's
    event shadow another's with the same id.
    """
    return f"{tenant_id}:{event_id}"


def tenant_token(tenant_id: str) -> str:
    """The subject token of a tenant: its id with ``.`` written as ``~`` (UUIDs unchanged)."""
    return tenant_id.replace(".", "~")


def tenant_subject(subject: str, tenant_id: str) -> str:
    """The tenant-bound subject ``<subject>.<tenant token>`` (one NATS token)."""
    return f"{subject}.{tenant_token(tenant_id)}"


def subject_tenant(base: str, subject: str) -> str | None:
    """The tenant a message's subject binds it to, or None for the shared ``base`` subject."""
    if not subject or subject == base or not subject.startswith(base + "."):
        return None
    return subject[len(base) + 1 :].replace("~", ".")


def given_event_id(tenant_id: str, event_id: uuid.UUID | None, key: str | None) -> uuid.UUID | None:
    """The id an event names itself by: its own ``id``, else its idempotency ``key``'s
    (:func:`id_from_key`), else None (the caller assigns one: the pipeline from the
    source position, the write API a fresh UUIDv7). Shared by both, so a write and its
    replay through NATS name the same event."""
    if event_id is not None:
        return event_id
    return id_from_key(tenant_id, key) if key else None
