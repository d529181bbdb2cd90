"""ledger.merkle: a run of leaves appended at once builds exactly the tree, tiles and
frontier that :meth:`schemas.tlog.Frontier.append` builds leaf by leaf (the oracle)."""

from __future__ import annotations

import hashlib
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import merkle
from schemas import tlog


def _oracle(size: int, hashes: list[bytes], inputs: list[bytes]
            ) -> tuple[tlog.Frontier, dict[tuple[int, int], bytes]]:  # fmt: skip
    """What the checkpointer did before: one append per leaf, the tile nodes collected."""
    frontier = tlog.Frontier(size, hashes)
    tiles: dict[tuple[int, int], bytearray] = defaultdict(bytearray)
    for data in inputs:
        for level, index, node in frontier.append(tlog.leaf_hash(data)):
            if level % merkle.TILE_HEIGHT == 0:
                tl, ti, _ = merkle.tile_of(level, index)
                tiles[(tl, ti)] += node
    return frontier, {k: bytes(v) for k, v in tiles.items()}


def _tree(size: int) -> tlog.Frontier:
    """A tree of ``size`` leaves (inputs: each index's 32-byte SHA-256)."""
    tree = tlog.Frontier()
    for i in range(size):
        tree.append(tlog.leaf_hash(hashlib.sha256(i.to_bytes(8, "big")).digest()))
    return tree


# Sizes around tile and level boundaries matter most: draw near powers of two too.
_sizes = st.one_of(
    st.integers(0, 1100),
    st.builds(lambda k, d: max(0, (1 << k) + d), st.integers(0, 11), st.integers(-3, 3)),
)


@settings(max_examples=150, deadline=None)
@given(size=_sizes, count=st.one_of(st.integers(0, 40), st.integers(0, 700)),
       seed=st.integers(0, 2**32 - 1))  # fmt: skip
def test_bulk_extend_equals_leaf_by_leaf(size: int, count: int, seed: int) -> None:
    start = _tree(size)
    inputs = [hashlib.sha256(f"{seed}/{i}".encode()).digest() for i in range(count)]
    expected, expected_tiles = _oracle(start.size, list(start.hashes), inputs)

    got = tlog.Frontier(start.size, list(start.hashes))
    tiles = merkle.extend(got, inputs)

    assert (got.size, got.hashes) == (expected.size, expected.hashes)
    assert got.root() == expected.root()
    assert {k: bytes(v) for k, v in tiles.items()} == expected_tiles


@settings(max_examples=60, deadline=None)
@given(chunks=st.lists(st.integers(0, 300), min_size=1, max_size=6))
def test_extending_in_runs_equals_one_run(chunks: list[int]) -> None:
    """Checkpoint cycles extend the tree run after run: the tiles concatenate to those of
    one run and the root is that of the whole tree."""
    inputs = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(sum(chunks))]
    whole = tlog.Frontier()
    whole_tiles = merkle.extend(whole, inputs)
    runs = tlog.Frontier()
    joined: dict[tuple[int, int], bytearray] = defaultdict(bytearray)
    at = 0
    for n in chunks:
        for key, data in merkle.extend(runs, inputs[at : at + n]).items():
            joined[key] += data
        at += n
    assert (runs.size, runs.hashes) == (whole.size, whole.hashes)
    assert dict(joined) == whole_tiles
    assert runs.root() == tlog.root_of([tlog.leaf_hash(x) for x in inputs])


def test_inputs_of_any_length_hash_as_the_oracle_does() -> None:
    """The leaf input is hashed whole whatever its length (a corrupt stored hash still
    gives the oracle's tree, so verification, not this code, finds it)."""
    inputs = [b"", b"x", bytes(31), bytes(33), b"\x00" * 64]
    expected, expected_tiles = _oracle(5, list(_tree(5).hashes), inputs)
    got = _tree(5)
    tiles = merkle.extend(got, inputs)
    assert (got.size, got.hashes) == (expected.size, expected.hashes)
    assert {k: bytes(v) for k, v in tiles.items()} == expected_tiles


def test_nothing_to_append_changes_nothing() -> None:
    tree = _tree(7)
    before = (tree.size, list(tree.hashes))
    assert merkle.extend(tree, []) == {}
    assert (tree.size, tree.hashes) == before


def test_a_frontier_that_does_not_match_its_size_is_refused() -> None:
    tree = tlog.Frontier(3, [bytes(32), bytes(32)])
    tree.hashes.append(bytes(32))  # three hashes for size 3 (two 1-bits): corrupt
    with pytest.raises(ValueError):
        merkle.extend(tree, [bytes(32)])
