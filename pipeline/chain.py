"""Per-tenant hash chain: canonical event bytes, row building, and chain verification.

For each tenant, events carry a gapless ``seq`` (1, 2, 3, ...) and
``hash = SHA-256(prev_hash || canonical_bytes(event))`` where ``prev_hash`` is the hash of
``seq - 1`` (32 zero bytes for ``seq = 1``). ``canonical_bytes`` is specified in
``schemas/README.md`` so that an outside verifier can recompute it from stored rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import asyncpg
import msgspec

from pipeline.copy_binary import HEADER, TRAILER, claim_row, event_row, linked_row
from schemas.canonical import GENESIS, canonical_bytes, chain_hash, event_canonical
from schemas.events import AuditEvent
from schemas.ids import EPOCH

_enc: Final = msgspec.json.Encoder(order="sorted")

# Column order of audit.events used by COPY and by verification.
COLUMNS: Final = (
    "tenant_id",
    "occurred_at",
    "id",
    "seq",
    "received_at",
    "action",
    "category",
    "severity",
    "actor_type",
    "actor_id",
    "actor_display_name",
    "resource_type",
    "resource_id",
    "resource_display_name",
    "related_resources",
    "description",
    "metadata",
    "changes",
    "ip",
    "user_agent",
    "request_id",
    "trace_id",
    "hash",
)
HASH_INDEX: Final = COLUMNS.index("hash")
SEQ_INDEX: Final = COLUMNS.index("seq")
OCCURRED_INDEX: Final = COLUMNS.index("occurred_at")
RECEIVED_INDEX: Final = COLUMNS.index("received_at")


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
        source: the event as decoded (not enriched).
        key: ``(tenant_id, id.int)``, the worker's dedupe key (cheap to hash).
    """

    tenant_id: str
    id: uuid.UUID
    occurred_us: int
    received_us: int
    canonical: bytes
    row: bytes
    seq_at: int
    source: AuditEvent
    key: tuple[str, int]

    @property
    def event(self) -> AuditEvent:
        """The enriched event (id, times, lower-cased action), made on each call: for tools
        and tests; the pipeline itself never needs it."""
        fields = msgspec.structs.asdict(self.source)
        fields.update(id=self.id, action=self.source.action.lower(),
                      occurred_at=_datetime(self.occurred_us),
                      received_at=_datetime(self.received_us))  # fmt: skip
        return AuditEvent(**fields)

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
                    event, (event.tenant_id, event_id.int))  # fmt: skip


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


def claims_copy(items: Sequence[Prepared]) -> bytes:
    """Binary COPY data of the claim rows (``copy_binary.CLAIM_COLUMNS`` of
    ``audit.event_ids``) of ``items``."""
    return b"".join([HEADER, *[claim_row(p.row, p.seq_at) for p in items], TRAILER])


def chain_copy(items: Sequence[Prepared], heads: Mapping[str, tuple[int, bytes]]
               ) -> tuple[dict[int, bytes], dict[str, tuple[int, bytes]]]:  # fmt: skip
    """Chain ``items`` in order after their tenants' heads (``seq`` + 1, SHA-256 over the
    previous hash and the canonical bytes) and write their COPY data.

    Args:
        items: prepared events; every tenant among them has a head.
        heads: tenant -> (last seq, last hash) as locked in the transaction.

    Returns:
        (month (:func:`month_of`) -> binary COPY data of that month's rows, in order;
        tenant -> its new (last seq, last hash)).
    """
    moved: dict[str, tuple[int, bytes]] = {}
    rows: dict[int, list[bytes]] = {}
    for p in items:
        tenant = p.tenant_id
        seq, prev = moved.get(tenant) or heads[tenant]
        digest = hashlib.sha256(prev + p.canonical).digest()
        moved[tenant] = (seq + 1, digest)
        month = month_of(p.occurred_us)
        part = rows.get(month)
        if part is None:
            part = rows[month] = [HEADER]
        part.append(linked_row(p.row, p.seq_at, seq + 1, digest))
    return {m: b"".join(part) + TRAILER for m, part in rows.items()}, moved


class ChainBreak(msgspec.Struct, frozen=True, kw_only=True):
    """The first place a tenant's chain does not verify.

    Attributes:
        seq: the sequence number expected at this position.
        id: the event id found there (None when the row is missing).
        expected_hash: hex hash recomputed from the previous link and this row.
        found_hash: hex hash stored in the row ("" when missing).
        problem: ``hash_mismatch``, ``seq_gap``, ``head_mismatch``.
    """

    seq: int
    id: str | None
    expected_hash: str
    found_hash: str
    problem: str


class ChainReport(msgspec.Struct, frozen=True, kw_only=True):
    """Result of walking one tenant's chain."""

    tenant_id: str
    events: int
    ok: bool
    first_break: ChainBreak | None = None
    head_seq: int = 0


class ChainVerifier:
    """Incremental verification of one tenant's rows, fed in ``seq`` order.

    Memory stays flat however long the chain: only the previous hash is kept.
    """

    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.prev = GENESIS
        self.count = 0
        self.first_break: ChainBreak | None = None

    def feed(self, row: dict[str, Any]) -> bool:
        """Check the next row; False (and ``first_break`` set) at the first break."""
        if self.first_break is not None:
            return False
        expected_seq = self.count + 1
        found = bytes(row["hash"])
        if row["seq"] != expected_seq:
            self.first_break = ChainBreak(
                seq=expected_seq, id=str(row["id"]), expected_hash="",
                found_hash=found.hex(), problem="seq_gap",
            )  # fmt: skip
            return False
        want = chain_hash(self.prev, canonical_bytes(row))
        if want != found:
            self.first_break = ChainBreak(
                seq=expected_seq, id=str(row["id"]), expected_hash=want.hex(),
                found_hash=found.hex(), problem="hash_mismatch",
            )  # fmt: skip
            return False
        self.prev, self.count = want, expected_seq
        return True

    def finish(self, head: tuple[int, bytes] | None) -> ChainReport:
        """Compare the end of the walk with the stored chain head and report."""
        if (
            self.first_break is None
            and head is not None
            and (head[0] != self.count or (self.count and head[1] != self.prev))
        ):
            self.first_break = ChainBreak(
                seq=self.count + 1, id=None, expected_hash=head[1].hex(),
                found_hash=self.prev.hex(), problem="head_mismatch",
            )  # fmt: skip
        return ChainReport(
            tenant_id=self.tenant_id,
            events=self.count,
            ok=self.first_break is None,
            first_break=self.first_break,
            head_seq=head[0] if head else self.count,
        )


def verify_rows(
    tenant_id: str, rows: Iterable[dict[str, Any]], head: tuple[int, bytes] | None
) -> ChainReport:
    """Verify rows (in seq order) of one tenant against each other and the chain head."""
    verifier = ChainVerifier(tenant_id)
    for row in rows:
        if not verifier.feed(row):
            break
    return verifier.finish(head)


# A stored row as canonical_bytes reads it (JSON columns as their text).
ROW_SELECT: Final = ", ".join(
    f"{c}::text" if c in ("metadata", "changes", "related_resources") else c for c in COLUMNS
)


async def stream_rows(
    conn: asyncpg.Connection, tenant_id: str
) -> AsyncGenerator[dict[str, Any], None]:
    async with conn.transaction(readonly=True):
        await conn.execute("SELECT set_config('audit.tenant_id', $1, true)", tenant_id)
        async for rec in conn.cursor(
            f"SELECT {ROW_SELECT} FROM audit.events WHERE tenant_id = $1 ORDER BY seq",
            tenant_id,
            prefetch=2000,
        ):
            yield dict(rec)


async def verify_tenant(conn: asyncpg.Connection, tenant_id: str) -> ChainReport:
    """Walk one tenant's chain in PostgreSQL and report the first break, if any.

    Detects edited rows (hash mismatch), deleted or inserted rows (seq gap or mismatch),
    reordering (hash mismatch) and truncation at the end (head mismatch).
    """
    head_rec = await conn.fetchrow(
        "SELECT last_seq, last_hash FROM audit.chain_heads WHERE tenant_id = $1", tenant_id
    )
    head = (head_rec["last_seq"], bytes(head_rec["last_hash"])) if head_rec else None
    verifier = ChainVerifier(tenant_id)
    # aclosing: stopping at the first break must end the cursor's transaction now.
    async with contextlib.aclosing(stream_rows(conn, tenant_id)) as rows:
        async for row in rows:
            if not verifier.feed(row):
                break
    return verifier.finish(head)


async def hash_before(conn: asyncpg.Connection, tenant: str, seq: int) -> bytes:
    """The chain hash of ``seq - 1``: GENESIS, the stored row's, or (dropped by retention)
    the one its gap record keeps.

    Raises:
        RuntimeError: it is nowhere.
    """
    if seq == 1:
        return GENESIS
    found = await conn.fetchval("SELECT hash FROM audit.events WHERE tenant_id = $1 AND"
                                " seq = $2", tenant, seq - 1)  # fmt: skip
    if found is None:  # dropped before: the gap that ends there knows it
        found = await conn.fetchval(
            "SELECT last_hash FROM audit.retention_gaps WHERE tenant_id = $1 AND last_seq = $2",
            tenant, seq - 1,
        )  # fmt: skip
    if found is None:
        raise RuntimeError(f"{tenant}: the hash before seq {seq} is nowhere")
    return bytes(found)
