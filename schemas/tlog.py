"""Transparency-log formats, self-contained: RFC 6962 Merkle trees and proofs, C2SP signed
notes (Ed25519) and C2SP ``tlog-checkpoint`` bodies.

Depends on the standard library and ``cryptography`` only, so that an auditor can read
and reuse it (``schemas/README.md`` specifies every byte). Nothing here touches a
database or a network.

- Merkle tree (RFC 6962 section 2.1): ``leaf = SHA-256(0x00 || input)``,
  ``node = SHA-256(0x01 || left || right)``, the empty tree's root ``SHA-256("")``. For
  this service a tenant's leaf inputs are its events' 32-byte chain hashes, in ``seq``
  order (leaf index = seq - 1).
- Signed note (https://c2sp.org/signed-note): ``text`` (UTF-8, ends with a newline), an
  empty line, then one line per signature: ``— <key name> <base64(key hash || sig)>``;
  for Ed25519 the key hash is the first 4 bytes of ``SHA-256(name || 0x0A || 0x01 ||
  public key)`` and the signature is over ``text``.
- Checkpoint (https://c2sp.org/tlog-checkpoint): the note text ``<origin>\\n<tree
  size>\\n<base64 root>\\n`` followed by optional extension lines.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

EMPTY_ROOT = hashlib.sha256(b"").digest()
ED25519 = 0x01  # the signed-note signature type of Ed25519 keys
_DASH = "\u2014"  # the em dash that starts a signature line


# -- RFC 6962 Merkle tree ----------------------------------------------------------------------
def leaf_hash(data: bytes) -> bytes:
    """The hash of a leaf whose input is ``data``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH of leaf hashes ``leaves`` (already hashed with :func:`leaf_hash`)."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(root_of(leaves[:k]), root_of(leaves[k:]))


class Frontier:
    """An append-only tree kept as its complete subtrees' roots (a compact range).

    Appending costs one hash per completed subtree (two on average); the root costs one
    hash per subtree. ``hashes[i]`` is the root of the i-th subtree, left to right, of
    sizes given by the binary digits of ``size`` from the highest.
    """

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != bin(size).count("1"):
            raise ValueError("a frontier has one hash per 1-bit of its size")
        self.size = size
        self.hashes = list(hashes)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash; returns the complete subtrees it completes, as (level, index,
        hash), the leaf itself first (level 0)."""
        self.size += 1
        done = [(0, self.size - 1, leaf)]
        node, size, level = leaf, self.size - 1, 0
        while size & 1:
            node = node_hash(self.hashes.pop(), node)
            size >>= 1
            level += 1
            done.append((level, (self.size >> level) - 1, node))
        self.hashes.append(node)
        return done

    def append_subtree(self, level: int, node: bytes) -> None:
        """Add the complete subtree of ``2**level`` leaves whose root is ``node``.

        Raises:
            ValueError: the tree's size is not a multiple of ``2**level`` (the subtree
                would not be aligned, so it is not a node of the tree).
        """
        if level < 0 or self.size % (1 << level):
            raise ValueError(f"a subtree of 2**{level} leaves cannot start at {self.size}")
        blocks = self.size >> level
        while blocks & 1:
            node = node_hash(self.hashes.pop(), node)
            blocks >>= 1
        self.hashes.append(node)
        self.size += 1 << level

    def root(self) -> bytes:
        """The tree's root."""
        if not self.hashes:
            return EMPTY_ROOT
        node = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            node = node_hash(left, node)
        return node


def aligned_subtrees(start: int, end: int) -> list[tuple[int, int]]:
    """Leaves [start, end) as the fewest complete aligned subtrees, left to right, as
    (level, index) — what ``Frontier.append_subtree`` takes to skip over them."""
    out = []
    while start < end:
        level = 0
        while start % (2 << level) == 0 and start + (2 << level) <= end:
            level += 1
        out.append((level, start >> level))
        start += 1 << level
    return out


# A node getter: the hash of the complete subtree of 2**level leaves starting at leaf
# ``index * 2**level`` (how the hashes are stored is the caller's business).
NodeGetter = Callable[[int, int], bytes]


def subtree_root(get: NodeGetter, start: int, end: int) -> bytes:
    """The root of leaves [start, end) (RFC 6962 MTH), from complete-subtree hashes."""
    n = end - start
    if n == 1:
        return get(0, start)
    if n & (n - 1) == 0 and start % n == 0:  # a complete, aligned subtree
        return get(n.bit_length() - 1, start // n)
    k = _split(n)
    return node_hash(subtree_root(get, start, start + k), subtree_root(get, start + k, end))


def inclusion_proof(get: NodeGetter, index: int, size: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``size`` leaves (RFC 6962 2.1.1)."""
    if not 0 <= index < size:
        raise ValueError("index outside the tree")
    proof: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            proof.append(subtree_root(get, start + k, end))
            end = start + k
        else:
            proof.append(subtree_root(get, start, start + k))
            start += k
    return proof[::-1]


def consistency_proof(get: NodeGetter, old: int, new: int) -> list[bytes]:
    """The proof that the tree of ``old`` leaves is a prefix of that of ``new`` (RFC 6962
    2.1.2)."""
    if not 0 < old <= new:
        raise ValueError("need 0 < old <= new")
    if old == new:
        return []

    def sub(m: int, start: int, end: int, complete: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if complete else [subtree_root(get, start, end)]
        k = _split(n)
        if m <= k:
            return [*sub(m, start, start + k, complete), subtree_root(get, start + k, end)]
        return [*sub(m - k, start + k, end, False), subtree_root(get, start, start + k)]

    return sub(old, 0, new, True)


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                     root: bytes) -> bool:  # fmt: skip
    """Does ``proof`` show leaf hash ``leaf`` at ``index`` in the tree with ``root``?
    (RFC 9162 section 2.1.3.2.)"""
    if not 0 <= index < size:
        return False
    fn, sn, node = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            node = node_hash(p, node)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            node = node_hash(node, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and node == root


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:  # fmt: skip
    """Does ``proof`` show the tree (old, old_root) is a prefix of (new, new_root)?
    (RFC 9162 section 2.1.4.2.)"""
    if old == new:
        return not proof and old_root == new_root
    if not 0 < old < new or not proof:
        return False
    path = list(proof)
    if old & (old - 1) == 0:  # old is a power of two: its root starts the path
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


# -- C2SP signed notes (Ed25519) -------------------------------------------------------------
def key_hash(name: str, public_key: bytes) -> bytes:
    """The 4-byte key hash that names an Ed25519 key in signatures."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()[:4]


def verifier_key(name: str, public_key: bytes) -> str:
    """The verifier key string ``<name>+<hex key hash>+<base64(0x01 || key)>``."""
    encoded = base64.b64encode(bytes([ED25519]) + public_key).decode()
    return f"{name}+{key_hash(name, public_key).hex()}+{encoded}"


@dataclass(frozen=True)
class Verifier:
    """A parsed verifier key."""

    name: str
    key_hash: bytes
    public_key: bytes

    @classmethod
    def parse(cls, text: str) -> Verifier:
        """Parse ``<name>+<hex hash>+<base64 key>``.

        Raises:
            ValueError: malformed, not Ed25519, or a hash that does not match.
        """
        parts = text.strip().split("+", 2)  # names hold no "+"; base64 may
        if len(parts) != 3 or not parts[0] or len(parts[1]) != 8:
            raise ValueError("a verifier key is <name>+<8 hex digits>+<base64 key>")
        name, hash_hex, rest = parts
        raw = base64.b64decode(rest, validate=True)
        if len(raw) != 33 or raw[0] != ED25519:
            raise ValueError("only Ed25519 verifier keys are supported")
        verifier = cls(name, bytes.fromhex(hash_hex), raw[1:])
        if key_hash(name, verifier.public_key) != verifier.key_hash:
            raise ValueError("the verifier key's hash does not match its name and key")
        return verifier

    @property
    def key_id(self) -> str:
        """``<name>+<hex key hash>``: how the key is named to a person."""
        return f"{self.name}+{self.key_hash.hex()}"

    def verify(self, text: bytes, signature: bytes) -> bool:
        """Is ``signature`` this key's Ed25519 signature of ``text``?"""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, text)
        except (InvalidSignature, ValueError):
            return False
        return True


def signer_key(name: str, private_key: Ed25519PrivateKey) -> str:
    """The signer key string ``PRIVATE+KEY+<name>+<hex key hash>+<base64(0x01 || seed)>``
    (as golang.org/x/mod/sumdb/note writes them)."""
    seed = private_key.private_bytes_raw()
    public = private_key.public_key().public_bytes_raw()
    encoded = base64.b64encode(bytes([ED25519]) + seed).decode()
    return f"PRIVATE+KEY+{name}+{key_hash(name, public).hex()}+{encoded}"


def parse_signer_key(text: str) -> tuple[str, Ed25519PrivateKey]:
    """(name, private key) of a signer key string.

    Raises:
        ValueError: malformed, not Ed25519, or a hash that does not match.
    """
    parts = text.strip().split("+", 4)
    if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"] or not parts[2]:
        raise ValueError("a signer key is PRIVATE+KEY+<name>+<hash>+<base64 seed>")
    _, _, name, hash_hex, rest = parts
    raw = base64.b64decode(rest, validate=True)
    if len(raw) != 33 or raw[0] != ED25519:
        raise ValueError("only Ed25519 signer keys are supported")
    key = Ed25519PrivateKey.from_private_bytes(raw[1:])
    if key_hash(name, key.public_key().public_bytes_raw()).hex() != hash_hex:
        raise ValueError("the signer key's hash does not match its name and key")
    return name, key


def sign_note(text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """``text`` as a signed note with one Ed25519 signature by key ``name``."""
    if not text.endswith("\n") or "\n\n" in text:
        raise ValueError("a note's text ends with a newline and has no empty line")
    public = private_key.public_key().public_bytes_raw()
    sig = private_key.sign(text.encode())
    line = base64.b64encode(key_hash(name, public) + sig).decode()
    return f"{text}\n{_DASH} {name} {line}\n"


@dataclass(frozen=True)
class Note:
    """An opened signed note: its text, and the signatures found valid by known keys."""

    text: str
    signed_by: tuple[str, ...]  # names of the verifiers whose signature checks out


def _parse_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    """A signed note's text and its signature lines as (key name, key hash || signature).

    Raises:
        ValueError: not a signed note, or a malformed signature line.
    """
    text, sep, sigs = note.rpartition("\n\n")
    if not sep or not sigs.endswith("\n"):
        raise ValueError("not a signed note")
    lines = []
    for line in sigs[:-1].split("\n"):
        dash, _, rest = line.partition(" ")
        name, _, b64 = rest.rpartition(" ")
        if dash != _DASH or not name:
            raise ValueError("malformed signature line")
        raw = base64.b64decode(b64, validate=True)
        if len(raw) < 5:
            raise ValueError("malformed signature line")
        lines.append((name, raw))
    return text + "\n", lines


def note_key_ids(note: str) -> list[str]:
    """The keys a signed note claims to be signed by, as ``<name>+<hex key hash>`` (what
    names a key to a person; nothing is verified here).

    Raises:
        ValueError: not a signed note, or a malformed signature line.
    """
    return [f"{name}+{raw[:4].hex()}" for name, raw in _parse_note(note)[1]]


def open_note(note: str, verifiers: Sequence[Verifier]) -> Note:
    """Split a signed note and check its signatures against ``verifiers``.

    Raises:
        ValueError: not a signed note (no blank line before signatures, a malformed
            signature line), or a known key's signature that does not verify.
    """
    text, lines = _parse_note(note)
    signed: list[str] = []
    for name, raw in lines:
        for v in verifiers:
            if v.name == name and v.key_hash == raw[:4]:
                if not v.verify(text.encode(), raw[4:]):
                    raise ValueError(f"signature by {name} does not verify")
                signed.append(name)
    return Note(text, tuple(signed))


def utc_stamp(at: datetime) -> str:
    """A time as signed texts write it (checkpoints' ``time`` line, gap records):
    ``YYYY-MM-DDTHH:MM:SSZ`` in UTC."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- Retention gaps --------------------------------------------------------------------------
def gap_text(log_origin: str, first: int, last: int, prev: bytes, last_hash: bytes,
             dropped_at: str) -> str:  # fmt: skip
    """The signed text of a retention gap: seqs ``first``..``last`` of the log were dropped
    by policy at ``dropped_at`` (``YYYY-MM-DDTHH:MM:SSZ``); ``prev`` is the chain hash of
    ``first - 1``, ``last_hash`` that of ``last``."""
    b64 = base64.b64encode
    return (
        f"gap {log_origin} {first} {last} {b64(prev).decode()} {b64(last_hash).decode()} "
        f"{dropped_at}\n"
    )


# -- C2SP tlog-checkpoint -----------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    """A log's state: its origin, tree size and root hash (plus extension lines)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        """The checkpoint's note text."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(),
                 *self.extensions]  # fmt: skip
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint's note text.

        Raises:
            ValueError: malformed.
        """
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "" or not lines[0]:
            raise ValueError("a checkpoint has an origin, a size and a root, one per line")
        size = lines[1]
        if not size.isdigit() or (size != "0" and size.startswith("0")):
            raise ValueError("a checkpoint's size is a decimal number")
        root = base64.b64decode(lines[2], validate=True)
        if len(root) != 32:
            raise ValueError("a checkpoint's root is 32 bytes")
        return cls(lines[0], int(size), root, tuple(lines[3:-1]))
