"""Proofs for a third party: an event's inclusion under a signed checkpoint, and the
consistency of two checkpoints (the log only grew). Logarithmic: node hashes come from
the stored tiles (``ledger.checkpoints.Tiles``).

An event's leaf is its chain hash, ``SHA-256(prev_hash || canonical bytes)``: a proof
carries the canonical bytes and the previous hash, so the checker recomputes the leaf from
the event as stored, then the root from the audit path, then checks the signature.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import itertools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import msgspec

from ledger.chain import hash_before
from ledger.checkpoints import Tiles
from schemas import bundle, tlog
from schemas.canonical import canonical_bytes
from schemas.rows import ROW_SELECT


class NoProof(enum.Enum):
    """Why there is no proof (compare by identity: ``found is NoProof.NOT_SIGNED``)."""

    NOT_FOUND = "not_found"  # no such event, or no checkpoint of the asked size
    NOT_SIGNED = "not_signed"  # the event is stored, but no signed checkpoint covers it yet


class SignedCheckpoint(msgspec.Struct):
    """A checkpoint as signed: its size and its C2SP signed note."""

    size: int
    note: str


class InclusionProof(msgspec.Struct):
    """What a third party needs to check that an event, as stored, is in a signed log."""

    tenant_id: str
    event_id: str
    seq: int
    canonical: str  # the event's canonical bytes (UTF-8 JSON text), as hashed
    prev_hash: str  # hex; 64 zeros for seq 1
    leaf_index: int  # seq - 1
    checkpoint: SignedCheckpoint
    proof: list[str]  # base64 node hashes, RFC 6962 audit path


class ConsistencyProof(msgspec.Struct):
    """That the log at ``old`` is a prefix of the log at ``new`` (both signed)."""

    tenant_id: str
    old: SignedCheckpoint
    new: SignedCheckpoint
    proof: list[str]


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


async def _checkpoint(conn: asyncpg.Connection, tenant_id: str, at_least: int,
                      exactly: bool = False) -> SignedCheckpoint | None:  # fmt: skip
    op = "=" if exactly else ">="
    row = await conn.fetchrow(
        f"SELECT size, note FROM audit.checkpoints WHERE tenant_id = $1 AND size {op} $2"
        " ORDER BY size DESC LIMIT 1", tenant_id, at_least,
    )  # fmt: skip
    return SignedCheckpoint(row["size"], row["note"]) if row else None


async def inclusion(conn: asyncpg.Connection, tenant_id: str,
                    event_id: uuid.UUID) -> InclusionProof | NoProof:  # fmt: skip
    """The proof for ``event_id``, or why there is none (:class:`NoProof`).

    ``conn`` runs in a transaction scoped to ``tenant_id`` (row-level security).
    """
    row = await conn.fetchrow(f"SELECT {ROW_SELECT} FROM audit.events WHERE tenant_id = $1"
                              " AND id = $2", tenant_id, event_id)  # fmt: skip
    if row is None:
        return NoProof.NOT_FOUND
    seq = row["seq"]
    cp = await _checkpoint(conn, tenant_id, seq)
    if cp is None:
        return NoProof.NOT_SIGNED
    # The previous event may be past the retention the reader sees, or dropped.
    await conn.execute("SELECT set_config('audit.visible_from', '', true)")
    prev = await hash_before(conn, tenant_id, seq)
    proof = await Tiles(conn, tenant_id).run(
        lambda get: tlog.inclusion_proof(get, seq - 1, cp.size)
    )
    return InclusionProof(
        tenant_id=tenant_id, event_id=str(event_id), seq=seq,
        canonical=canonical_bytes(dict(row)).decode(), prev_hash=prev.hex(),
        leaf_index=seq - 1, checkpoint=cp, proof=_b64(proof),
    )  # fmt: skip


async def consistency(conn: asyncpg.Connection, tenant_id: str, old: int,
                      new: int) -> ConsistencyProof | NoProof:  # fmt: skip
    """The proof between the checkpoints at sizes ``old`` and ``new`` (both must exist),
    or why there is none (:attr:`NoProof.NOT_FOUND`)."""
    first = await _checkpoint(conn, tenant_id, old, exactly=True)
    second = await _checkpoint(conn, tenant_id, new, exactly=True)
    if first is None or second is None:
        return NoProof.NOT_FOUND
    proof = await Tiles(conn, tenant_id).run(lambda get: tlog.consistency_proof(get, old, new))
    return ConsistencyProof(tenant_id, first, second, _b64(proof))


def inclusion_problem(p: InclusionProof, verifiers: list[tlog.Verifier],
                      origin: str) -> str | None:  # fmt: skip
    """What a third party does with a proof: None when it holds, else why not."""
    try:
        note = tlog.open_note(p.checkpoint.note, verifiers)
        cp = tlog.Checkpoint.parse(note.text)
    except ValueError as exc:
        return str(exc)
    if not note.signed_by or cp.origin != origin:
        return "checkpoint not signed by a trusted key for this log"
    leaf = tlog.leaf_hash(
        hashlib.sha256(bytes.fromhex(p.prev_hash) + p.canonical.encode()).digest()
    )
    path = [base64.b64decode(h) for h in p.proof]
    if not tlog.verify_inclusion(leaf, p.leaf_index, cp.size, path, cp.root):
        return "the audit path does not lead to the signed root"
    return None


async def build_bundle(conn: asyncpg.Connection, tenant_id: str, log_origin: str,
                       from_seq: int, to_seq: int | None,
                       progress: Callable[[int], None] | None = None) -> bundle.Bundle:  # fmt: skip
    """An auditor bundle of seq ``from_seq`` .. ``to_seq`` (default: the latest checkpoint).

    ``conn`` runs in a transaction scoped to ``tenant_id``.

    Raises:
        ValueError: no checkpoint yet, or a range outside the signed log.
    """
    latest = await conn.fetchval(
        "SELECT max(size) FROM audit.checkpoints WHERE tenant_id = $1", tenant_id
    )
    if not latest:
        raise ValueError(f"{tenant_id} has no signed checkpoint yet")
    to_seq = to_seq or latest
    if not 1 <= from_seq <= to_seq <= latest:
        raise ValueError(f"the range must lie within 1..{latest} (the latest checkpoint)")
    gaps = await conn.fetch(
        "SELECT first_seq, last_seq, prev_hash, last_hash, dropped_at, note"
        " FROM audit.retention_gaps WHERE tenant_id = $1 AND last_seq >= $2 AND first_seq <= $3"
        " ORDER BY first_seq", tenant_id, from_seq, to_seq,
    )  # fmt: skip
    for g in gaps:
        if g["first_seq"] < from_seq or g["last_seq"] > to_seq:
            raise ValueError(
                f"seqs {g['first_seq']}-{g['last_seq']} were dropped by retention: the range"
                " must not start or end inside them"
            )
    notes = await conn.fetch(
        "SELECT size, note FROM audit.checkpoints WHERE tenant_id = $1 AND size BETWEEN $2"
        " AND $3 ORDER BY size", tenant_id, from_seq, to_seq,
    )  # fmt: skip
    bundle_gaps = await _bundle_gaps(Tiles(conn, tenant_id), gaps, [n["size"] for n in notes])
    prev = await hash_before(conn, tenant_id, from_seq)
    frontier: list[bytes] = []
    if from_seq > 1:
        frontier = await Tiles(conn, tenant_id).run(
            lambda get: bundle.frontier_at(get, from_seq - 1)
        )
    events: list[bundle.BundleEvent] = []
    async for row in conn.cursor(f"SELECT {ROW_SELECT} FROM audit.events WHERE tenant_id = $1"
                                 " AND seq BETWEEN $2 AND $3 ORDER BY seq", tenant_id,
                                 from_seq, to_seq, prefetch=5000):  # fmt: skip
        events.append(bundle.BundleEvent(row["seq"], bytes(row["hash"]).hex(),
                                         canonical_bytes(dict(row)).decode()))  # fmt: skip
        if progress is not None and len(events) % 100_000 == 0:
            progress(len(events))
    keys = await conn.fetch("SELECT verifier_key FROM audit.signing_keys ORDER BY created_at")
    manifest = bundle.Manifest(
        tenant_id=tenant_id, origin=log_origin, from_seq=from_seq, to_seq=to_seq,
        events=len(events), created_at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    )  # fmt: skip
    return bundle.Bundle(
        format=bundle.FORMAT, manifest=manifest, public_keys=[k["verifier_key"] for k in keys],
        prev_hash=prev.hex(), frontier=_b64(frontier),
        checkpoints=[n["note"] for n in notes], events=events, gaps=bundle_gaps,
    )  # fmt: skip


async def _bundle_gaps(tiles: Tiles, gaps: list[asyncpg.Record],
                       sizes: list[int]) -> list[bundle.BundleGap]:  # fmt: skip
    """Each dropped range as its signed record and the fewest tree nodes that stand for
    its leaves but the last, cut at every checkpoint size inside it (so that the bundle's
    verifier can compare the root there)."""
    out = []
    for g in gaps:
        start, end = g["first_seq"] - 1, g["last_seq"] - 1  # leaf indexes [start, end)
        cuts = [start, *(s for s in sizes if start < s < end), end]
        spans = [ls for a, b in itertools.pairwise(cuts)
                 for ls in tlog.aligned_subtrees(a, b)]  # fmt: skip

        def read(get: tlog.NodeGetter, spans: list[tuple[int, int]] = spans) -> list[bytes]:
            return [get(lv, i) for lv, i in spans]

        nodes = await tiles.run(read)
        out.append(bundle.BundleGap(
            first_seq=g["first_seq"], last_seq=g["last_seq"],
            prev_hash=bytes(g["prev_hash"]).hex(), last_hash=bytes(g["last_hash"]).hex(),
            dropped_at=tlog.utc_stamp(g["dropped_at"]), note=g["note"],
            nodes=[(lv, base64.b64encode(n).decode()) for (lv, _), n in zip(spans, nodes,
                                                                           strict=True)],
        ))  # fmt: skip
    return out
