"""Auditor bundles: a tenant's events in canonical form with the signed checkpoints and
public keys that cover them, in one JSON file, and their offline verification.

Depends only on the standard library, ``msgspec`` (JSON) and ``schemas.tlog`` (itself
only ``cryptography``): no database, no NATS, no network. ``schemas/README.md`` specifies
the format so that it can be reimplemented. Verification recomputes, for seq ``from`` ..
``to``: each event's chain hash ``SHA-256(prev_hash || canonical)`` (starting from the
bundle's ``prev_hash``), the Merkle tree over those hashes (starting from the bundle's
``frontier``, the tree's compact range at ``from - 1``), and compares the root at every
checkpoint size with the signed root. A wrong ``prev_hash`` or ``frontier`` cannot pass:
the roots would not match what was signed.

Trust is pinned (DESIGN invariant 11): signatures are checked against keys the verifier
chose. The bundle's own ``public_keys`` are whatever its writer put there, so a bundle
rewritten and re-signed by anyone verifies against them; they are used only when the
caller asks for it explicitly, and the report says so.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Callable, Sequence
from typing import Literal

import msgspec

from schemas import tlog

FORMAT = "auditlog-bundle/1"

# Where the keys a report trusted came from (``BundleReport.trusted``).
TRUST_PINNED = "pinned keys"
TRUST_BUNDLE = "bundle's own keys (not independent)"
TRUST_NONE = "none"


class BundleEvent(msgspec.Struct, array_like=True, gc=False):
    """One event: ``[seq, hash (hex), canonical bytes (JSON text)]``."""

    seq: int
    hash: str
    canonical: str


class BundleGap(msgspec.Struct, kw_only=True):
    """Seqs ``first_seq``..``last_seq`` dropped by retention: the signed gap record and
    the tree nodes that stand for the dropped leaves (but the last, which the verifier
    computes from ``last_hash``), as ``[level, base64 hash]`` complete aligned subtrees."""

    first_seq: int
    last_seq: int
    prev_hash: str  # hex chain hash of first_seq - 1
    last_hash: str  # hex chain hash of last_seq
    dropped_at: str
    note: str  # the signed note of schemas.tlog.gap_text(...)
    nodes: list[tuple[int, str]]


class Manifest(msgspec.Struct, kw_only=True):
    tenant_id: str
    origin: str
    from_seq: int
    to_seq: int
    events: int
    created_at: str


class Bundle(msgspec.Struct, kw_only=True):
    format: str
    manifest: Manifest
    public_keys: list[str]
    prev_hash: str  # hex chain hash at from_seq - 1 (zeros for seq 1)
    frontier: list[str]  # base64 compact range of the tree at from_seq - 1
    checkpoints: list[str]  # signed notes with sizes within [from_seq, to_seq]
    events: list[BundleEvent]
    gaps: list[BundleGap] = []  # ranges dropped by retention, in seq order


class BundleReport(msgspec.Struct, kw_only=True):
    """What ``auditlog verify-bundle`` reports."""

    status: Literal["intact", "tampered", "unverifiable"]
    tenant_id: str = ""
    events: int = 0
    dropped: int = 0  # seqs crossed as dropped by retention (signed gap records)
    signed_up_to: int = 0  # the largest checkpoint size verified
    unsigned: int = 0  # events after signed_up_to: chained only, no signature covers them
    checkpoints: int = 0
    first_break: str = ""
    cannot_check: str = ""
    trusted: str = ""  # TRUST_PINNED, TRUST_BUNDLE or TRUST_NONE
    key_ids: list[str] = []  # keys the bundle names or signs with, as <name>+<hex hash>

    @property
    def exit_code(self) -> int:
        return {"intact": 0, "tampered": 1, "unverifiable": 3}[self.status]


def frontier_at(get: tlog.NodeGetter, size: int) -> list[bytes]:
    """The compact range of the tree of ``size`` leaves (its complete subtrees' roots)."""
    out, start = [], 0
    for bit in range(size.bit_length() - 1, -1, -1):
        if size >> bit & 1:
            out.append(get(bit, start >> bit))
            start += 1 << bit
    return out


def encode(bundle: Bundle) -> bytes:
    """The file's bytes."""
    return msgspec.json.encode(bundle)


_decoder = msgspec.json.Decoder(Bundle)


def key_ids(b: Bundle) -> list[str]:
    """The keys ``b`` names (``public_keys``) and those its checkpoints claim to be signed
    by, as ``<name>+<hex key hash>``, unverified: what to compare with the keys you know
    (a malformed note names none)."""
    ids = ["+".join(k.strip().split("+", 2)[:2]) for k in b.public_keys]
    for note in b.checkpoints:
        with contextlib.suppress(ValueError):
            ids += tlog.note_key_ids(note)
    return list(dict.fromkeys(ids))


def verify(data: bytes, trusted: Sequence[str],
           progress: Callable[[int], None] | None = None, *,
           trust_bundle_keys: bool = False,
           allow_unsigned_tail: bool = False) -> BundleReport:  # fmt: skip
    """Verify a bundle's bytes.

    Args:
        data: the file.
        trusted: the verifier keys the caller chose (pinned). A checkpoint or gap record
            signed by none of them is a break: the report is ``tampered``.
        progress: called with the number of events checked, every 100,000.
        trust_bundle_keys: without ``trusted``, check against the keys the bundle names
            itself. That shows only that the bundle is consistent with keys its writer
            chose (anyone can rewrite, re-chain and re-sign one); the report says so in
            ``trusted``. Without either, nothing is checked: the report is
            ``unverifiable`` and names the bundle's ``key_ids``.
        allow_unsigned_tail: events after the last signed checkpoint are only chained:
            whoever wrote the bundle could have written them. By default a bundle with
            such a tail is ``unverifiable`` (the events up to the checkpoint checked, and
            said so); with this, it is ``intact`` and ``unsigned`` counts the tail.

    Raises:
        ValueError: a malformed key in ``trusted``, or ``trusted`` together with
            ``trust_bundle_keys``.
    """
    pinned = [tlog.Verifier.parse(k) for k in trusted]
    if pinned and trust_bundle_keys:
        raise ValueError("pinned keys and the bundle's own keys exclude each other")
    try:
        b = _decoder.decode(data)
        if b.format != FORMAT:
            raise ValueError(f"unknown format {b.format!r}")
        ids = key_ids(b)
        verifiers = pinned or [tlog.Verifier.parse(k) for k in b.public_keys]
        prev = bytes.fromhex(b.prev_hash)
        tree = tlog.Frontier(b.manifest.from_seq - 1,
                             [base64.b64decode(h) for h in b.frontier])  # fmt: skip
    except (msgspec.DecodeError, ValueError) as exc:
        return BundleReport(status="unverifiable", cannot_check=f"malformed bundle: {exc}")
    m = b.manifest
    if not pinned and not trust_bundle_keys:
        named = ", ".join(ids) or "no key"
        return BundleReport(status="unverifiable", tenant_id=m.tenant_id, trusted=TRUST_NONE,
                            key_ids=ids, cannot_check=f"no trusted key (the bundle names "
                            f"{named}; a bundle cannot vouch for itself)")  # fmt: skip
    report = BundleReport(status="intact", tenant_id=m.tenant_id, key_ids=ids,
                          trusted=TRUST_PINNED if pinned else TRUST_BUNDLE)  # fmt: skip
    signed: dict[int, bytes] = {}
    for text in b.checkpoints:
        try:
            note = tlog.open_note(text, verifiers)
            cp = tlog.Checkpoint.parse(note.text)
        except ValueError as exc:
            return _tampered(report, f"a checkpoint does not verify: {exc}")
        if not note.signed_by:
            return _tampered(report, f"the checkpoint at {cp.size} is signed by "
                             f"{', '.join(tlog.note_key_ids(text))}, not by a trusted key "
                             f"({', '.join(v.key_id for v in verifiers) or 'none'})")  # fmt: skip
        if cp.origin != m.origin:
            return _tampered(report, f"checkpoint of {cp.origin!r}, not {m.origin!r}")
        signed[cp.size] = cp.root
    if not signed:
        report.status, report.cannot_check = "unverifiable", "no checkpoint in the bundle"
        return report
    gaps = {g.first_seq: g for g in b.gaps}
    state = _Walk(prev, tree, m.from_seq, signed, report)
    # The hot loop keeps the chain in locals (a gap hands it to the walker and back).
    sha256, leaf_hash, append, check = hashlib.sha256, tlog.leaf_hash, tree.append, state.check
    expect = m.from_seq
    for ev in b.events:
        if ev.seq != expect:
            state.prev, state.expect = prev, expect
            while ev.seq != state.expect and state.expect in gaps:
                if why := state.cross(gaps.pop(state.expect), m.origin, verifiers):
                    return _tampered(report, why)
            prev, expect = state.prev, state.expect
            if ev.seq != expect:
                return _tampered(report, f"seq {expect} missing (found {ev.seq})")
        h = sha256(prev + ev.canonical.encode()).digest()
        if h.hex() != ev.hash:
            return _tampered(report, f"seq {ev.seq}: hash does not match its canonical bytes")
        append(leaf_hash(h))
        prev = h
        expect += 1
        report.events += 1
        if expect - 1 in signed and (why := check()) is not None:
            return _tampered(report, why)
        if progress is not None and report.events % 100_000 == 0:
            progress(report.events)
    state.prev, state.expect = prev, expect
    while state.expect in gaps:
        if (why := state.cross(gaps.pop(state.expect), m.origin, verifiers)) is not None:
            return _tampered(report, why)
    if gaps:
        return _tampered(report, f"gap records at seqs {sorted(gaps)} do not fit the events")
    if state.expect - 1 != m.to_seq or report.events != m.events:
        return _tampered(report, f"the manifest says {m.events} events to seq {m.to_seq}")
    beyond = [s for s in signed if s > m.to_seq or s < m.from_seq]
    if beyond:
        return _tampered(report, f"checkpoint sizes {beyond} lie outside the bundle")
    report.unsigned = m.to_seq - max(report.signed_up_to, m.from_seq - 1)
    if report.unsigned and not allow_unsigned_tail:
        report.status = "unverifiable"
        report.cannot_check = (
            f"{report.unsigned} event(s) after seq {report.signed_up_to} are chained but not "
            f"covered by a signed checkpoint, so whoever wrote the bundle could have written "
            f"them (the events up to seq {report.signed_up_to} verify); export up to a "
            f"checkpoint, or accept the tail with --allow-unsigned-tail"
        )
    return report


class _Walk:
    """The chain and the tree as the bundle is read, seq by seq and gap by gap."""

    def __init__(self, prev: bytes, tree: tlog.Frontier, expect: int, signed: dict[int, bytes],
                 report: BundleReport) -> None:  # fmt: skip
        self.prev, self.tree, self.expect = prev, tree, expect
        self.signed, self.report = signed, report

    def check(self) -> str | None:
        """Compare the root with the signed one when the tree is at a checkpoint size."""
        size = self.tree.size
        if size in self.signed:
            if self.tree.root() != self.signed[size]:
                return f"the tree at {size} is not the one signed"
            self.report.signed_up_to = size
            self.report.checkpoints += 1
        return None

    def cross(self, gap: BundleGap, log_origin: str,
              verifiers: Sequence[tlog.Verifier]) -> str | None:  # fmt: skip
        """Skip a dropped range: its record must be signed, fit the chain, and its nodes
        (with the last leaf, from ``last_hash``) must give the signed roots after it."""
        try:
            prev, last = bytes.fromhex(gap.prev_hash), bytes.fromhex(gap.last_hash)
            note = tlog.open_note(gap.note, verifiers)
        except ValueError as exc:
            return f"the gap record at seq {gap.first_seq} does not verify: {exc}"
        want = tlog.gap_text(log_origin, gap.first_seq, gap.last_seq, prev, last,
                             gap.dropped_at)  # fmt: skip
        if not note.signed_by or note.text != want or gap.last_seq < gap.first_seq:
            return f"the gap record at seq {gap.first_seq} is not signed by a trusted key"
        if prev != self.prev:
            return f"the hash before the dropped seqs {gap.first_seq}-{gap.last_seq} differs"
        try:
            for level, node in gap.nodes:
                self.tree.append_subtree(level, base64.b64decode(node, validate=True))
                if (why := self.check()) is not None:
                    return why
        except ValueError as exc:
            return f"the gap at seq {gap.first_seq}: {exc}"
        if self.tree.size != gap.last_seq - 1:
            return f"the gap at seq {gap.first_seq}: its nodes do not cover the dropped seqs"
        self.tree.append(tlog.leaf_hash(last))
        self.prev, self.expect = last, gap.last_seq + 1
        self.report.dropped += gap.last_seq - gap.first_seq + 1
        return self.check()


def _tampered(report: BundleReport, why: str) -> BundleReport:
    report.status, report.first_break = "tampered", why
    return report
