"""Per-tenant hash chain, write side: canonical event bytes, row building, linking.

For each tenant, events carry a gapless ``seq`` (1, 2, 3, ...) and
``hash = SHA-256(prev_hash || canonical_bytes(event))`` where ``prev_hash`` is the hash of
``seq - 1`` (32 zero bytes for ``seq = 1``). ``canonical_bytes`` is specified in
``schemas/README.md`` so that an outside verifier can recompute it from stored rows.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec

from pipeline.copy_binary import HEADER, TRAILER, claim_row, event_row, linked_row
from schemas.canonical import event_canonical
from schemas.events import AuditEvent
from schemas.ids import EPOCH
from schemas.rows import HASH_INDEX, SEQ_INDEX

_enc: Final = msgspec.json.Encoder(order="sorted")
_event_decoder: Final = msgspec.json.Decoder(AuditEvent)


class Prepared(msgspec.Struct, gc=False):
    """An event in its storage form, built before the flush transaction: its keys, the bytes
    that are hashed, and its binary COPY row (``pipeline.copy_binary``) waiting for ``seq``
    and ``hash``. Chaining inside the transaction is one SHA-256 per event
    (:func:`chain_copy`).

    Built by ``pipeline.stages`` (pure) or ``pipeline._fastpath`` (compiled): the same
    values either way. Timestamps stay integers (UTC microseconds since 1970-01-01); the
    enriched event exists only when :attr:`event` is asked for.

    Attributes:
        tenant_id: the event's tenant.
        id: the event id (given or derived).
        occurred_us / received_us: its times.
        canonical: the hashed bytes (schemas/README.md).
        row: its ``audit.events`` COPY row without the ``seq`` and ``hash`` values.
        seq_at: where ``seq`` goes in ``row`` (``hash`` goes at its end).
        key: ``(tenant_id, id.int)``, the worker's dedupe key (cheap to hash).

    The decoded event itself is not kept: it is freed while the batch is prepared (its
    fields are in ``canonical`` and ``row``), not after the flush.
    """

    tenant_id: str
    id: uuid.UUID
    occurred_us: int
    received_us: int
    canonical: bytes
    row: bytes
    seq_at: int
    key: tuple[str, int]

    @property
    def event(self) -> AuditEvent:
        """The enriched event (id, times, lower-cased action), decoded from the canonical
        bytes on each call: for tools and tests; the pipeline itself never needs it."""
        return _event_decoder.decode(self.canonical)

    @property
    def values(self) -> list[Any]:
        """Column values in :data:`COLUMNS` order (``seq``/``hash`` None), as
        ``canonical_bytes`` reads a stored row (JSON columns as text); for tools and tests."""
        ev = self.event
        primary = ev.primary_resource
        actor = ev.actor
        changes = _enc.encode(ev.changes).decode() if ev.changes is not None else None
        return [
            ev.tenant_id, ev.occurred_at, ev.id, None, ev.received_at, ev.action,
            ev.category, ev.severity, actor.type, actor.id, actor.display_name,
            primary.type if primary else "", primary.id if primary else "",
            primary.display_name if primary else "",
            _enc.encode(ev.related_resources).decode(), ev.description,
            _enc.encode(ev.metadata).decode(), changes, ev.ip, ev.user_agent, ev.request_id,
            ev.trace_id, None,
        ]  # fmt: skip


def _datetime(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def prepare(event: AuditEvent, *, event_id: uuid.UUID, occurred_us: int, received_us: int,
            metadata: bytes, changes: bytes | None) -> Prepared:  # fmt: skip
    """The storage form of a validated event with its server-side values (``metadata`` and
    ``changes`` as :func:`schemas.events.decode_parts` encoded them).

    Raises:
        OverflowError: a time outside the years 1-9999.
    """
    action = event.action.lower()
    related = _enc.encode(event.related_resources)
    canonical = event_canonical(event, event_id=event_id, action=action,
                                occurred_us=occurred_us, received_us=received_us,
                                metadata=metadata, changes=changes, related=related)  # fmt: skip
    row, seq_at = event_row(event, event_id=event_id.bytes, action=action,
                            occurred_us=occurred_us, received_us=received_us,
                            metadata=metadata, changes=changes, related=related)  # fmt: skip
    return Prepared(event.tenant_id, event_id, occurred_us, received_us, canonical, row, seq_at,
                    (event.tenant_id, event_id.int))  # fmt: skip


def link(prepared: Prepared, seq: int, prev_hash: bytes) -> tuple[Any, ...]:
    """Assign ``seq`` and the chained hash; return the row's values in :data:`COLUMNS`
    order (as a stored row reads back). For tools and tests: the flush uses
    :func:`chain_copy`."""
    values = prepared.values
    values[SEQ_INDEX] = seq
    values[HASH_INDEX] = hashlib.sha256(prev_hash + prepared.canonical).digest()
    return tuple(values)


def month_of(us: int) -> int:
    """``year * 12 + month - 1`` of a UTC instant (microseconds since 1970): its partition."""
    day = us // 86_400_000_000
    month = _months.get(day)
    if month is None:
        if len(_months) >= 4096:
            _months.clear()
        ts = _datetime(us)
        month = _months[day] = ts.year * 12 + ts.month - 1
    return month


_months: dict[int, int] = {}


def _grouped(rows: dict[str, list[bytes]]) -> list[bytes]:
    """The rows of every tenant together: tenants in code-point order of their ids, each
    tenant's rows in the order they were added."""
    return [row for tenant in sorted(rows) for row in rows[tenant]]


def claims_copy(items: Sequence[Prepared]) -> bytes:
    """Binary COPY data of the claim rows (``copy_binary.CLAIM_COLUMNS`` of
    ``audit.event_ids``) of ``items``, grouped by tenant (:func:`chain_copy` says why)."""
    rows: dict[str, list[bytes]] = {}
    for p in items:
        part = rows.get(p.tenant_id)
        if part is None:
            part = rows[p.tenant_id] = []
        part.append(claim_row(p.row, p.seq_at))
    return b"".join([HEADER, *_grouped(rows), TRAILER])


def chain_copy(items: Sequence[Prepared], heads: Mapping[str, tuple[int, bytes]]
               ) -> tuple[dict[int, bytes], dict[str, tuple[int, bytes]]]:  # fmt: skip
    """Chain ``items`` in order after their tenants' heads (``seq`` + 1, SHA-256 over the
    previous hash and the canonical bytes) and write their COPY data.

    The rows are written grouped by tenant (tenants in code-point order of their ids,
    each tenant's rows in the order of ``items``, which is also their ``seq`` order).
    Every index of ``audit.events`` and ``audit.event_ids`` leads with ``tenant_id``, so
    consecutive inserts land in the same B-tree leaf pages; rows in arrival order over
    many tenants cost PostgreSQL about a fifth more CPU per row (benchmarks README).
    ``items`` are read in their own order: the objects of a batch sit in memory in
    arrival order, and reading them in tenant order cost the worker more than the
    grouping saves.

    Args:
        items: prepared events; every tenant among them has a head.
        heads: tenant -> (last seq, last hash) as locked in the transaction.

    Returns:
        (month (:func:`month_of`) -> binary COPY data of that month's rows;
        tenant -> its new (last seq, last hash)).
    """
    moved: dict[str, tuple[int, bytes]] = {}
    rows: dict[int, dict[str, list[bytes]]] = {}
    for p in items:
        tenant = p.tenant_id
        seq, prev = moved.get(tenant) or heads[tenant]
        digest = hashlib.sha256(prev + p.canonical).digest()
        moved[tenant] = (seq + 1, digest)
        month = month_of(p.occurred_us)
        tenants = rows.get(month)
        if tenants is None:
            tenants = rows[month] = {}
        part = tenants.get(tenant)
        if part is None:
            part = tenants[tenant] = []
        part.append(linked_row(p.row, p.seq_at, seq + 1, digest))
    return {m: b"".join([HEADER, *_grouped(t), TRAILER]) for m, t in rows.items()}, moved
