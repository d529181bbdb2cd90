"""Verification of a tenant's log: the hash chain, every signed checkpoint, and the copy of
the latest checkpoint kept outside the database (the witness stream).

One walk over the tenant's rows in ``seq`` order recomputes each event's chain hash and
the Merkle tree over them, so every checkpoint's root is compared at its size. What it
finds, first break first:

- ``hash_mismatch``: a row's content or place changed (edited, inserted, reordered rows);
- ``seq_gap``: a row is missing (deleted from the middle);
- ``head_mismatch``: the chain head disagrees with the last row (tail cut, head kept);
- ``forged_checkpoint``: a stored checkpoint not signed by a trusted key, or whose signed
  text disagrees with its row;
- ``checkpoint_mismatch``: the tree at a checkpoint's size is not the one signed (the log
  was rewritten, later hashes and head recomputed);
- ``truncated``: a signed checkpoint (stored or witnessed) covers events the database no
  longer holds (tail cut and head moved back, a tenant deleted, or a restore from an older
  backup);
- ``witness_mismatch``: the witnessed checkpoint's tree differs from the database's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Literal

import asyncpg
import msgspec
from nats.js.errors import NotFoundError

from infra.nats_codes import JsErrorCode
from infra.settings import Settings
from ledger.chain import ChainVerifier, stream_rows
from ledger.checkpoints import Tiles, origin, witness_subject
from ledger.retention import gap_text
from schemas import tlog

Status = Literal["intact", "tampered", "unverifiable"]
EXIT_CODES = {"intact": 0, "tampered": 1, "unverifiable": 3}


class Break(msgspec.Struct, frozen=True, kw_only=True):
    """The first thing that does not verify."""

    seq: int
    kind: str
    detail: str
    id: str | None = None


class LogReport(msgspec.Struct, kw_only=True):
    """What ``auditlog verify`` and ``GET /v1/audit/verify`` report."""

    tenant_id: str
    status: Status
    events: int
    head_seq: int
    checkpoints: int
    latest_checkpoint: int
    witnessed_size: int | None
    dropped: int = 0  # seqs removed by retention (signed gap records)
    first_break: Break | None = None
    cannot_check: list[str] = []

    @property
    def exit_code(self) -> int:
        """0 intact, 1 tampered, 3 cannot check."""
        return EXIT_CODES[self.status]


class Witness(msgspec.Struct, frozen=True):
    """The witness stream's answer for a tenant: its latest signed note (None: the stream
    has none for it), or why it could not be read."""

    note: str | None = None
    unavailable: str = ""


Checked = tuple[tlog.Checkpoint | None, str]


def _check_note(note_text: str, expected_origin: str, size: int, root: bytes | None,
                verifiers: Sequence[tlog.Verifier]) -> Checked:  # fmt: skip
    """(checkpoint, "") when ``note_text`` is a trusted, well-formed checkpoint of this log
    (matching ``size``/``root`` when given), else (None, why)."""
    try:
        note = tlog.open_note(note_text, verifiers)
    except ValueError as exc:
        return None, str(exc)
    if not note.signed_by:
        return None, "not signed by a trusted key"
    try:
        cp = tlog.Checkpoint.parse(note.text)
    except ValueError as exc:
        return None, str(exc)
    if cp.origin != expected_origin:
        return None, f"origin {cp.origin!r} is not this log's ({expected_origin!r})"
    if size and cp.size != size:
        return None, f"signed size {cp.size} differs from the stored {size}"
    if root is not None and cp.root != root:
        return None, "signed root differs from the stored root"
    return cp, ""


async def verify_log(conn: asyncpg.Connection, settings: Settings, tenant_id: str,
                     verifiers: Sequence[tlog.Verifier],
                     witness: Witness) -> LogReport:  # fmt: skip
    """Verify one tenant's log (see the module docstring)."""
    log_origin = origin(settings, tenant_id)
    head_rec = await conn.fetchrow(
        "SELECT last_seq, last_hash FROM audit.chain_heads WHERE tenant_id = $1", tenant_id
    )
    head = (head_rec["last_seq"], bytes(head_rec["last_hash"])) if head_rec else None
    stored = await conn.fetch(
        "SELECT size, root, note FROM audit.checkpoints WHERE tenant_id = $1 ORDER BY size",
        tenant_id,
    )
    cannot: list[str] = []
    first: Break | None = None
    expected: dict[int, tuple[bytes, str]] = {}  # size -> (root, which checkpoint)
    if stored and not verifiers:
        cannot.append(
            "no trusted public key to check the checkpoints' signatures with (the "
            "service's own, from its state dir, or --public-key / --keys-file)"
        )
    for cp in stored if verifiers else ():
        checked, why = _check_note(cp["note"], log_origin, cp["size"], bytes(cp["root"]),
                                   verifiers)  # fmt: skip
        if checked is None:
            first = first or Break(seq=cp["size"], kind="forged_checkpoint",
                                   detail=f"checkpoint at {cp['size']}: {why}")  # fmt: skip
        else:
            expected.setdefault(checked.size, (checked.root, f"checkpoint at {checked.size}"))
    gaps = await _trusted_gaps(conn, settings, tenant_id, verifiers, cannot)
    if isinstance(gaps, Break):
        first = first or gaps
        gaps = []
    witnessed: tlog.Checkpoint | None = None
    if witness.unavailable:
        cannot.append(f"witness stream unavailable: {witness.unavailable}")
    elif witness.note is not None:
        witnessed, why = _check_note(witness.note, log_origin, 0, None, verifiers)
        if witnessed is None:
            cannot.append(f"the witnessed checkpoint cannot be trusted: {why}")
        elif witnessed.size:
            expected.setdefault(witnessed.size, (witnessed.root, "the witnessed checkpoint"))
    chain = ChainVerifier(tenant_id)
    tree = tlog.Frontier()
    last_good = 0
    dropped = 0
    pending = list(gaps)
    tiles = Tiles(conn, tenant_id)  # one cache of tiles for every gap crossed

    def grow(leaf: bytes) -> Break | None:
        nonlocal last_good
        tree.append(leaf)
        want = expected.get(tree.size)
        if want is None:
            return None
        if tree.root() != want[0]:
            kind = "witness_mismatch" if want[1].startswith("the witness") else \
                "checkpoint_mismatch"  # fmt: skip
            return Break(seq=tree.size, kind=kind, detail=(
                f"the tree at {tree.size} is not the one signed in {want[1]}: rewritten at "
                f"or before seq {tree.size}, after seq {last_good}"))  # fmt: skip
        last_good = tree.size
        return None

    async def cross_gaps() -> Break | None:
        nonlocal dropped
        while pending and pending[0].first_seq == chain.count + 1:
            gap = pending.pop(0)
            if chain.prev != gap.prev_hash:
                return Break(seq=gap.first_seq, kind="gap_mismatch", detail=(
                    "the hash before a dropped range differs from the chain's"))  # fmt: skip
            span = range(gap.first_seq - 1, gap.last_seq)

            def read(get: tlog.NodeGetter, span: range = span) -> list[bytes]:
                return [get(0, i) for i in span]

            leaves = await tiles.run(read)
            if leaves[-1] != tlog.leaf_hash(gap.last_hash):
                return Break(seq=gap.last_seq, kind="gap_mismatch", detail=(
                    "a dropped range's last hash is not the tree's leaf"))  # fmt: skip
            for leaf in leaves:
                if (found := grow(leaf)) is not None:
                    return found
            chain.prev, chain.count = gap.last_hash, gap.last_seq
            dropped += gap.last_seq - gap.first_seq + 1
        return None

    async with contextlib.aclosing(stream_rows(conn, tenant_id)) as rows:
        async for row in rows:
            crossed = await cross_gaps()
            if crossed is not None:
                first = first or crossed
                break
            if not chain.feed(row):
                break
            found = grow(tlog.leaf_hash(bytes(row["hash"])))
            if found is not None:
                first = first or found
                break
        else:
            crossed = await cross_gaps()
            first = first or crossed
    report_chain = chain.finish(head)
    if report_chain.first_break is not None:
        b = report_chain.first_break
        chain_break = Break(seq=b.seq, kind=b.problem, id=b.id, detail=(
            f"expected hash {b.expected_hash or '-'}, found {b.found_hash or '-'}"))  # fmt: skip
        if first is None or chain_break.seq < first.seq:  # a named cause wins a tie
            first = chain_break
    covered = max(expected, default=0)
    if first is None and covered > chain.count:
        why = f"signed checkpoints cover {covered} events; the database holds {chain.count}"
        first = Break(seq=chain.count + 1, kind="truncated", detail=why)
    status: Status = "tampered" if first else ("unverifiable" if cannot else "intact")
    return LogReport(
        tenant_id=tenant_id, status=status, events=chain.count - dropped, dropped=dropped,
        head_seq=head[0] if head else 0, checkpoints=len(stored),
        latest_checkpoint=stored[-1]["size"] if stored else 0,
        witnessed_size=witnessed.size if witnessed else None, first_break=first,
        cannot_check=cannot,
    )  # fmt: skip


class Gap(msgspec.Struct, frozen=True):
    first_seq: int
    last_seq: int
    prev_hash: bytes
    last_hash: bytes


async def _trusted_gaps(conn: asyncpg.Connection, settings: Settings, tenant_id: str,
                        verifiers: Sequence[tlog.Verifier],
                        cannot: list[str]) -> list[Gap] | Break:  # fmt: skip
    """The tenant's retention gaps whose signed records hold (else the first that does
    not, as a break)."""
    rows = await conn.fetch(
        "SELECT first_seq, last_seq, prev_hash, last_hash, dropped_at, note"
        " FROM audit.retention_gaps WHERE tenant_id = $1 ORDER BY first_seq", tenant_id,
    )  # fmt: skip
    if rows and not verifiers:
        cannot.append("no trusted public key to check the retention gaps with")
        return []
    gaps = []
    for r in rows:
        gap = Gap(r["first_seq"], r["last_seq"], bytes(r["prev_hash"]), bytes(r["last_hash"]))
        want = gap_text(settings, tenant_id, gap.first_seq, gap.last_seq, gap.prev_hash,
                        gap.last_hash, r["dropped_at"])  # fmt: skip
        try:
            note = tlog.open_note(r["note"], verifiers)
        except ValueError as exc:
            return Break(seq=gap.first_seq, kind="forged_gap", detail=str(exc))
        if not note.signed_by or note.text != want:
            return Break(seq=gap.first_seq, kind="forged_gap", detail=(
                "a retention gap record is not signed by a trusted key as stored"))  # fmt: skip
        gaps.append(gap)
    return gaps


async def read_witness(nc: object, settings: Settings, tenant_id: str) -> Witness:
    """The latest checkpoint of ``tenant_id`` in the witness stream."""
    try:
        msg = await nc.jetstream().get_last_msg(  # type: ignore[attr-defined]
            settings.checkpoint_stream, witness_subject(settings, tenant_id)
        )
    except NotFoundError as exc:
        if getattr(exc, "err_code", None) == JsErrorCode.NO_MESSAGE_FOUND:  # none published yet
            return Witness(None)
        return Witness(unavailable=f"{settings.checkpoint_stream}: {exc}")
    except Exception as exc:
        return Witness(unavailable=f"{type(exc).__name__}: {exc}")
    return Witness((msg.data or b"").decode(errors="replace"))
