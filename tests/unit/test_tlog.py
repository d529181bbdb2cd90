"""schemas.tlog against other implementations' published vectors, and its proofs by
property: every proof it makes verifies, and no altered proof, leaf, size or root does.

Vectors typed in as data, with their sources:
- RFC 6962 leaf inputs and tree heads: transparency-dev/merkle, ``testonly/constants.go``
  (``LeafInputs()``, ``RootHashes()``), the Certificate Transparency reference data.
- Signed note: golang.org/x/mod ``sumdb/note/note_test.go`` (the PeterNeumann key pair
  and its published signature; Ed25519 is deterministic, so signing must reproduce it).
- Verifier keys whose base64 holds a "+": transparency-dev/formats
  ``note/note_cosigv1_test.go``.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import tlog

LEAF_INPUTS = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
               "606162636465666768696a6b6c6d6e6f"]  # fmt: skip
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
GO_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = ("If you think cryptography is the answer to your problem,\n"
           "then you don't know what your problem is.\n")  # fmt: skip
GO_NOTE = (
    GO_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgY"
    "N1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
PLUS_VERIFIER = "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6"


def leaves(n: int) -> list[bytes]:
    return [tlog.leaf_hash(hashlib.sha256(str(i).encode()).digest()) for i in range(n)]


def getter(hashes: list[bytes]):
    def get(level: int, index: int) -> bytes:
        width = 1 << level
        return tlog.root_of(hashes[index * width : (index + 1) * width])

    return get


def test_roots_match_the_reference_tree_heads() -> None:
    hashes = [tlog.leaf_hash(bytes.fromhex(h)) for h in LEAF_INPUTS]
    for n, want in enumerate(ROOTS):
        assert tlog.root_of(hashes[:n]).hex() == want
        frontier = tlog.Frontier()
        for h in hashes[:n]:
            frontier.append(h)
        assert frontier.root().hex() == want and frontier.size == n


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_every_inclusion_proof_verifies_and_nothing_else_does(n: int, data) -> None:
    hashes = leaves(n)
    root = tlog.root_of(hashes)
    get = getter(hashes)
    i = data.draw(st.integers(0, n - 1))
    proof = tlog.inclusion_proof(get, i, n)
    assert len(proof) <= n.bit_length()  # logarithmic
    assert tlog.verify_inclusion(hashes[i], i, n, proof, root)
    assert not tlog.verify_inclusion(hashes[i], i, n, proof, tlog.leaf_hash(b"x"))
    assert not tlog.verify_inclusion(tlog.leaf_hash(b"forged"), i, n, proof, root)
    if n > 1:
        assert not tlog.verify_inclusion(hashes[i], (i + 1) % n, n, proof, root)
        if proof:
            bad = [*proof]
            bad[data.draw(st.integers(0, len(bad) - 1))] = tlog.leaf_hash(b"y")
            assert not tlog.verify_inclusion(hashes[i], i, n, bad, root)
            assert not tlog.verify_inclusion(hashes[i], i, n, proof[:-1], root)


@settings(max_examples=60, deadline=None)
@given(new=st.integers(1, 300), data=st.data())
def test_every_consistency_proof_verifies_and_a_rewritten_history_does_not(new: int, data) -> None:
    hashes = leaves(new)
    old = data.draw(st.integers(1, new))
    proof = tlog.consistency_proof(getter(hashes), old, new)
    old_root, new_root = tlog.root_of(hashes[:old]), tlog.root_of(hashes)
    assert tlog.verify_consistency(old, new, old_root, new_root, proof)
    forked = [*hashes]
    forked[data.draw(st.integers(0, old - 1))] = tlog.leaf_hash(b"rewritten")
    assert not tlog.verify_consistency(old, new, tlog.root_of(forked[:old]), new_root, proof)
    if old < new:
        assert not tlog.verify_consistency(old, new, old_root, tlog.root_of(forked), proof)
        assert not tlog.verify_consistency(old, new, old_root, new_root, proof[:-1])


def test_signing_reproduces_the_go_reference_note() -> None:
    name, key = tlog.parse_signer_key(GO_SIGNER)
    assert tlog.sign_note(GO_TEXT, name, key) == GO_NOTE
    assert tlog.signer_key(name, key) == GO_SIGNER
    assert tlog.verifier_key(name, key.public_key().public_bytes_raw()) == GO_VERIFIER
    note = tlog.open_note(GO_NOTE, [tlog.Verifier.parse(GO_VERIFIER)])
    assert note.text == GO_TEXT and note.signed_by == ("PeterNeumann",)


def test_verifier_keys_with_a_plus_in_their_base64_parse() -> None:
    v = tlog.Verifier.parse(PLUS_VERIFIER)
    assert v.name == "TEST" and v.key_hash.hex() == "7997405c"


@pytest.mark.parametrize("bad", [
    GO_VERIFIER.replace("c74f20a3", "c74f20a4"),  # hash of another key
    "PeterNeumann+c74f20a3",
    "PeterNeumann+c74f20a3+!!!!",
    "PeterNeumann+c74f20a3+" + base64.b64encode(b"\x02" + bytes(32)).decode(),  # not Ed25519
])  # fmt: skip
def test_malformed_verifier_keys_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        tlog.Verifier.parse(bad)


def test_a_forged_or_altered_note_does_not_open() -> None:
    v = tlog.Verifier.parse(GO_VERIFIER)
    with pytest.raises(ValueError):
        tlog.open_note(GO_NOTE.replace("cryptography", "cryptology"), [v])
    with pytest.raises(ValueError):
        tlog.open_note(GO_TEXT, [v])  # no signatures at all
    # Signed by a key nobody trusts: it opens, signed by no one we know.
    other = tlog.Verifier.parse(PLUS_VERIFIER)
    assert tlog.open_note(GO_NOTE, [other]).signed_by == ()


@given(origin=st.from_regex(r"\A[a-z0-9.]{1,20}/[a-z0-9~.-]{1,30}\Z"),
       size=st.integers(0, 2**63), root=st.binary(min_size=32, max_size=32))  # fmt: skip
def test_checkpoints_round_trip(origin: str, size: int, root: bytes) -> None:
    cp = tlog.Checkpoint(origin, size, root)
    assert tlog.Checkpoint.parse(cp.text()) == cp
    assert cp.text() == f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


ZERO_ROOT = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize("text", ["", "o\n", "o\n01\nAAAA\n", "o\n1\n" + "A" * 44 + "\n",
                                  "o\n-1\n" + ZERO_ROOT + "\n"])  # fmt: skip
def test_malformed_checkpoints_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        tlog.Checkpoint.parse(text)


@given(n=st.integers(0, 300), data=st.data())
def test_skipping_leaves_by_aligned_subtrees_gives_the_same_tree(n: int, data) -> None:
    """What a bundle does across a dropped range: the fewest aligned subtrees between any
    two sizes, appended as nodes, leave the tree exactly as appending every leaf would."""
    start = data.draw(st.integers(0, n))
    end = data.draw(st.integers(start, n))
    hashes, get = leaves(n), getter(leaves(n))
    spans = tlog.aligned_subtrees(start, end)
    assert sum(1 << lv for lv, _ in spans) == end - start
    assert len(spans) <= 2 * max(1, (end - start).bit_length())
    tree = tlog.Frontier()
    for h in hashes[:start]:
        tree.append(h)
    for level, index in spans:
        tree.append_subtree(level, get(level, index))
    for h in hashes[end:]:
        tree.append(h)
    assert tree.size == n and tree.root() == tlog.root_of(hashes)


def test_a_subtree_that_is_not_aligned_is_refused() -> None:
    tree = tlog.Frontier()
    tree.append(leaves(1)[0])
    with pytest.raises(ValueError, match="cannot start at 1"):
        tree.append_subtree(1, bytes(32))
