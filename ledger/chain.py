"""Verification of the per-tenant hash chain as stored: walk a tenant's rows in ``seq``
order, recompute ``hash = SHA-256(prev_hash || canonical_bytes(row))`` and name the first
break; and the hash before a seq (stored, or kept by a retention gap record).

The write side (preparing rows, linking them, the COPY buffers) is ``pipeline.chain``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Iterable
from typing import Any

import asyncpg
import msgspec

from schemas.canonical import GENESIS, canonical_bytes, chain_hash
from schemas.rows import ROW_SELECT


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
