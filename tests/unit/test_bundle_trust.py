"""Bundles trust only pinned keys (DESIGN invariant 11, issue #24): a bundle rewritten,
re-chained and re-signed by another key is never ``ok`` without an explicit trust choice.

A genuine bundle is built with the service's own pieces (``canonical_bytes``,
``chain_hash``, ``tlog.Frontier``, ``Signer.sign``, ``bundle.frontier_at``); the forger
rewrites one event, re-chains every later hash, rebuilds the tree from the bundle's
frontier, signs a checkpoint at every original size with a fresh Ed25519 key and puts
that key in ``public_keys``: everything but the genuine key's signature.
"""

from __future__ import annotations

import base64
import gzip
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditlog.cli import cli
from infra.errors import ArchiveError
from infra.signing import Signer, read_keys_file
from ledger.archive import archive_month
from schemas import bundle, tlog
from schemas.canonical import GENESIS, canonical_bytes, chain_hash

ORIGIN = "auditlog.local/acme"
T0 = datetime(2026, 11, 26, 4, 57, 36, tzinfo=UTC)
GENUINE = Signer("auditlog.local", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


def _row(i: int) -> dict[str, object]:
    at = T0 + timedelta(seconds=i)
    return {
        "action": "user.login", "actor_display_name": f"User {i}", "actor_id": f"u-{i}",
        "actor_type": "ACTOR_TYPE_USER", "category": "CATEGORY_AUTH", "changes": None,
        "description": f"login {i}", "id": uuid.UUID(int=i + 1), "ip": "192.0.2.10",
        "metadata": f'{{"n":{i}}}', "occurred_at": at, "received_at": at,
        "resource_type": "", "resource_id": "", "resource_display_name": "",
        "related_resources": "[]", "request_id": f"r-{i}", "severity": "SEVERITY_INFO",
        "tenant_id": "acme", "trace_id": "", "user_agent": "curl/8",
    }  # fmt: skip


def _note(signer: Signer, size: int, root: bytes) -> str:
    stamp = f"time {tlog.utc_stamp(T0 + timedelta(minutes=size))}"
    return signer.sign(tlog.Checkpoint(ORIGIN, size, root, (stamp,)).text())


def genuine_bundle(n: int, from_seq: int = 1, every: int = 4) -> bundle.Bundle:
    """Seqs ``from_seq``..``n`` of a log of ``n`` events, checkpoints every ``every`` and
    at ``n`` (as ``export-bundle`` ends at the latest checkpoint)."""
    prev, hashes, leaves, tree, notes = GENESIS, [GENESIS], [], tlog.Frontier(), []
    events = []
    for seq in range(1, n + 1):
        canonical = canonical_bytes(_row(seq))
        prev = chain_hash(prev, canonical)
        hashes.append(prev)
        leaves.append(tlog.leaf_hash(prev))
        tree.append(leaves[-1])
        if seq >= from_seq:
            events.append(bundle.BundleEvent(seq, prev.hex(), canonical.decode()))
            if seq % every == 0 or seq == n:
                notes.append(_note(GENUINE, seq, tree.root()))

    def get(level: int, index: int) -> bytes:
        return tlog.root_of(leaves[index << level : (index + 1) << level])

    manifest = bundle.Manifest(tenant_id="acme", origin=ORIGIN, from_seq=from_seq, to_seq=n,
                               events=len(events), created_at="2026-11-30T00:00:00Z")  # fmt: skip
    frontier = [base64.b64encode(h).decode() for h in bundle.frontier_at(get, from_seq - 1)]
    return bundle.Bundle(
        format=bundle.FORMAT, manifest=manifest, public_keys=[GENUINE.verifier_key],
        prev_hash=hashes[from_seq - 1].hex(), frontier=frontier,
        checkpoints=notes, events=events,
    )  # fmt: skip


def forge(b: bundle.Bundle, forger: Signer, index: int, text: str) -> bundle.Bundle:
    """``b`` with event ``index`` (of the bundle) rewritten to say ``text``, re-chained,
    its checkpoints rebuilt at the same sizes and signed by ``forger`` alone."""
    doc = msgspec.json.decode(b.events[index].canonical)
    doc["description"] = text
    texts = [ev.canonical for ev in b.events]
    texts[index] = msgspec.json.encode(doc, order="sorted").decode()
    prev = bytes.fromhex(b.prev_hash)
    tree = tlog.Frontier(b.manifest.from_seq - 1, [base64.b64decode(h) for h in b.frontier])
    sizes = {tlog.Checkpoint.parse(tlog.open_note(n, []).text).size for n in b.checkpoints}
    notes, events = [], []
    for ev, canonical in zip(b.events, texts, strict=True):
        prev = chain_hash(prev, canonical.encode())
        events.append(bundle.BundleEvent(ev.seq, prev.hex(), canonical))
        tree.append(tlog.leaf_hash(prev))
        if tree.size in sizes:
            notes.append(_note(forger, tree.size, tree.root()))
    return msgspec.structs.replace(b, events=events, checkpoints=notes,
                                   public_keys=[forger.verifier_key])  # fmt: skip


def _forger(seed: bytes = b"\x07" * 32, name: str = "auditlog.local") -> Signer:
    return Signer(name, Ed25519PrivateKey.from_private_bytes(seed))


def _key_id(s: Signer) -> str:
    return f"{s.name}+{s.key_id}"


# -- schemas.bundle.verify -----------------------------------------------------------------
def test_a_genuine_bundle_is_ok_only_against_a_pinned_key() -> None:
    data = bundle.encode(genuine_bundle(10, from_seq=3))
    report = bundle.verify(data, [GENUINE.verifier_key])
    assert (report.status, report.events, report.signed_up_to) == ("intact", 8, 10), report
    assert report.trusted == bundle.TRUST_PINNED
    unpinned = bundle.verify(data, [])
    assert unpinned.status == "unverifiable" and unpinned.exit_code == 3
    assert unpinned.key_ids == [_key_id(GENUINE)] and _key_id(GENUINE) in unpinned.cannot_check
    own = bundle.verify(data, [], trust_bundle_keys=True)
    assert own.status == "intact" and own.trusted == bundle.TRUST_BUNDLE
    with pytest.raises(ValueError):
        bundle.verify(data, [GENUINE.verifier_key], trust_bundle_keys=True)
    with pytest.raises(ValueError):  # a malformed pinned key is the caller's error
        bundle.verify(data, ["not-a-key"])


def test_the_forgery_is_complete_so_only_the_key_catches_it() -> None:
    """Control: the same forgery signed with the genuine key passes, so what the tests
    below catch is the key, not a slip of the forger."""
    b = genuine_bundle(12, from_seq=2)
    again = forge(b, GENUINE, 4, "nothing happened")
    assert again.events[4].canonical != b.events[4].canonical
    assert bundle.verify(bundle.encode(again), [GENUINE.verifier_key]).status == "intact"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 24),
    start=st.integers(0, 23),
    every=st.integers(1, 9),
    pick=st.integers(0, 1000),
    text=st.text(max_size=20),
    seed=st.binary(min_size=32, max_size=32),
    name=st.sampled_from(["auditlog.local", "forger", "acme.example"]),
    also_pinned=st.booleans(),
)
def test_a_bundle_re_signed_by_any_other_key_is_never_ok(
    n: int, start: int, every: int, pick: int, text: str, seed: bytes, name: str,
    also_pinned: bool,
) -> None:  # fmt: skip
    b = genuine_bundle(n, from_seq=start % n + 1, every=every)
    forger = _forger(seed, name)
    forged = bundle.encode(forge(b, forger, pick % len(b.events), text))
    if forger.verifier_key == GENUINE.verifier_key:
        return
    pinned = [GENUINE.verifier_key]
    if also_pinned:  # another key pinned beside the genuine one changes nothing
        pinned.append(_forger(bytes(32), "stranger").verifier_key)
    report = bundle.verify(forged, pinned)
    assert report.status == "tampered" and report.exit_code == 1, report
    assert "not by a trusted key" in report.first_break and _key_id(forger) in report.first_break
    unpinned = bundle.verify(forged, [])
    assert unpinned.status == "unverifiable" and unpinned.exit_code == 3
    assert _key_id(forger) in unpinned.key_ids
    # Only the explicit choice passes it, and then the report says whose keys they were.
    own = bundle.verify(forged, [], trust_bundle_keys=True)
    assert own.trusted == bundle.TRUST_BUNDLE


def test_a_keys_file_pins_one_key_per_line(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(
        f"# the operator's keys\n\n{GENUINE.verifier_key}\n  {_forger().verifier_key}\n"
    )
    assert read_keys_file(path) == [GENUINE.verifier_key, _forger().verifier_key]
    path.write_text(f"{GENUINE.verifier_key}\nnonsense\n")
    with pytest.raises(ValueError, match="line 2"):
        read_keys_file(path)
    path.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no verifier key"):
        read_keys_file(path)


async def test_archives_are_never_checked_without_the_services_keys() -> None:
    """No trusted key: refused before anything is read or written (never the archive's
    own keys)."""
    with pytest.raises(ArchiveError, match="no verifier key"):
        await archive_month(None, None, "events_2026_01", ["acme"], None, [])  # type: ignore[arg-type]


# -- auditlog verify-bundle ----------------------------------------------------------------
@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    genuine = genuine_bundle(9, from_seq=2, every=3)
    out = {"genuine": tmp_path / "genuine.json", "forged": tmp_path / "forged.json.gz",
           "keys": tmp_path / "pinned-keys", "state": tmp_path / "state"}  # fmt: skip
    out["genuine"].write_bytes(bundle.encode(genuine))
    out["forged"].write_bytes(gzip.compress(bundle.encode(forge(genuine, _forger(), 3, "x"))))
    out["keys"].write_text(f"# from the operator\n{GENUINE.verifier_key}\n")
    return out


def _run(files: dict[str, Path], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--state-dir", str(files["state"]), "verify-bundle",
                                      *args])  # fmt: skip
    return result.exit_code, result.output


def test_verify_bundle_without_a_pinned_key_cannot_check(files: dict[str, Path]) -> None:
    for which in ("forged", "genuine"):
        code, out = _run(files, str(files[which]))
        assert code == 3 and out.startswith("CANNOT CHECK: no trusted key"), out
        assert "ok" not in out.split()
        assert "--public-key" in out and "--keys-file" in out and "--trust-bundle-keys" in out
    assert _key_id(_forger()) in _run(files, str(files["forged"]))[1]


def test_verify_bundle_with_the_genuine_key_pinned_calls_the_forgery_tampered(
    files: dict[str, Path],
) -> None:
    for pin in (["--public-key", GENUINE.verifier_key], ["--keys-file", str(files["keys"])]):
        code, out = _run(files, str(files["forged"]), *pin)
        assert code == 1 and out.startswith("TAMPERED: ") and _key_id(_forger()) in out, out
        code, out = _run(files, str(files["genuine"]), *pin)
        assert code == 0 and out.startswith("ok: 8 events of acme"), out


def test_trusting_the_bundles_own_keys_is_explicit_and_said(files: dict[str, Path]) -> None:
    code, out = _run(files, str(files["forged"]), "--trust-bundle-keys")
    first, second = out.splitlines()
    assert code == 0 and first.startswith("WARNING: trusting the keys the bundle names itself")
    assert _key_id(_forger()) in first
    assert second.startswith("ok (by the bundle's own keys, not independent): 8 events")
    code, out = _run(files, str(files["forged"]), "--trust-bundle-keys", "--json")
    report = json.loads(out)
    assert report["trusted"] == "bundle's own keys (not independent)"
    assert report["key_ids"] == [_key_id(_forger())] and report["status"] == "intact"
    code, out = _run(files, str(files["forged"]), "--json")
    assert code == 3 and json.loads(out)["trusted"] == "none"


def test_verify_bundle_refuses_mixed_or_malformed_trust(files: dict[str, Path]) -> None:
    code, out = _run(files, str(files["forged"]), "--trust-bundle-keys", "--public-key",
                     GENUINE.verifier_key)  # fmt: skip
    assert code == 2 and "--trust-bundle-keys" in out
    files["keys"].write_text("nonsense\n")
    code, out = _run(files, str(files["forged"]), "--keys-file", str(files["keys"]))
    assert code == 2 and "line 1" in out


@settings(max_examples=30, deadline=None)
@given(n=st.integers(6, 30), every=st.integers(2, 5), pick=st.integers(0, 100))
def test_an_unsigned_tail_is_never_ok_by_default(n: int, every: int, pick: int) -> None:
    """Events after the last signed checkpoint could be anyone's: the bundle is not
    ``intact`` unless the caller accepts the tail, and then the count says how many."""
    b = genuine_bundle(n, every=every)
    last = max(s for s in range(1, n) if s % every == 0)
    b = msgspec.structs.replace(b, checkpoints=b.checkpoints[:-1])  # drop the one at n
    tail = n - last
    assert tail > 0
    # Rewrite a tail event and re-chain after it: no signature covers it.
    index = len(b.events) - 1 - pick % tail
    forged = forge_tail(b, index)
    for data in (bundle.encode(b), bundle.encode(forged)):
        strict = bundle.verify(data, [GENUINE.verifier_key])
        assert strict.status == "unverifiable" and strict.exit_code == 3, strict
        assert f"{tail} event(s) after seq {last}" in strict.cannot_check
        lenient = bundle.verify(data, [GENUINE.verifier_key], allow_unsigned_tail=True)
        assert (lenient.status, lenient.unsigned, lenient.signed_up_to) == ("intact", tail, last)


def forge_tail(b: bundle.Bundle, index: int) -> bundle.Bundle:
    """``b`` with event ``index`` rewritten and every later hash re-chained."""
    events = list(b.events)
    prev = bytes.fromhex(events[index - 1].hash) if index else bytes.fromhex(b.prev_hash)
    for i in range(index, len(events)):
        canonical = events[i].canonical
        if i == index:
            doc = msgspec.json.decode(canonical)
            doc["description"] = "forged"
            canonical = msgspec.json.encode(doc, order="sorted").decode()
        prev = chain_hash(prev, canonical.encode())
        events[i] = bundle.BundleEvent(events[i].seq, prev.hex(), canonical)
    return msgspec.structs.replace(b, events=events)
