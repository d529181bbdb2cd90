"""The checkpoint signing key: an Ed25519 key kept as a C2SP signer key string in a file.

``AUDIT_SIGNING_KEY_FILE`` names it; by default ``<state dir>/signing-key``, generated on
first use (mode 0600). The file holds ``PRIVATE+KEY+<name>+<hash>+<base64 seed>`` (the
format of golang.org/x/mod/sumdb/note, so Go tooling can use the same key); its
verifier key ``<name>+<hash>+<base64 public key>`` is what auditors trust.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from infra.errors import ConfigError
from infra.settings import Settings
from schemas import tlog


@dataclass(frozen=True)
class Signer:
    """A loaded signing key."""

    name: str
    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes_raw()

    @property
    def key_id(self) -> str:
        """The hex key hash that names this key in signatures."""
        return tlog.key_hash(self.name, self.public_key).hex()

    @property
    def verifier_key(self) -> str:
        return tlog.verifier_key(self.name, self.public_key)

    def sign(self, text: str) -> str:
        """``text`` as a signed note."""
        return tlog.sign_note(text, self.name, self.private_key)


def key_path(settings: Settings) -> Path:
    """Where the signing key lives."""
    return Path(settings.signing_key_file or Path(settings.state_dir) / "signing-key")


def load_signer(settings: Settings, *, create: bool = True) -> Signer:
    """The signing key from its file, generated there first when missing and ``create``.

    Raises:
        ConfigError: unreadable or malformed (naming AUDIT_SIGNING_KEY_FILE), or missing
            without ``create``.
    """
    path = key_path(settings)
    if not path.exists():
        if not create or settings.signing_key_file:
            raise ConfigError("AUDIT_SIGNING_KEY_FILE", f"no signing key at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        text = tlog.signer_key(settings.log_origin, Ed25519PrivateKey.generate())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it meanwhile: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(text + "\n")
    try:
        name, key = tlog.parse_signer_key(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError("AUDIT_SIGNING_KEY_FILE", f"{path}: {exc}") from exc
    signer = Signer(name, key)
    _remember(settings, signer.verifier_key)
    return signer


def _known_path(settings: Settings) -> Path:
    return Path(settings.state_dir) / "verifier-keys"


def _remember(settings: Settings, verifier_key: str) -> None:
    """Keep every key this service signed with (rotation keeps old checkpoints checkable)."""
    path = _known_path(settings)
    with contextlib.suppress(OSError):
        known = path.read_text().split() if path.exists() else []
        if verifier_key not in known:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(verifier_key + "\n")


def trusted_keys(settings: Settings, extra: Sequence[str] = ()) -> list[str]:
    """The verifier keys to check checkpoints with: every key this service signed with
    (kept in the state dir beside the signing key) and ``extra`` (``--public-key``)."""
    keys = list(extra)
    with contextlib.suppress(OSError):
        keys += _known_path(settings).read_text().split()
    with contextlib.suppress(ConfigError):
        keys.append(load_signer(settings, create=False).verifier_key)
    return list(dict.fromkeys(keys))


def read_keys_file(path: Path) -> list[str]:
    """The verifier keys pinned in a file: one per line; blank lines and lines starting
    with ``#`` are ignored (the state dir's ``verifier-keys`` is such a file).

    Raises:
        OSError: unreadable.
        ValueError: a malformed key (its line named), or no key at all.
    """
    keys = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        try:
            tlog.Verifier.parse(key)
        except ValueError as exc:
            raise ValueError(f"{path} line {n}: {exc}") from exc
        keys.append(key)
    if not keys:
        raise ValueError(f"{path} holds no verifier key")
    return keys


def trusted_verifiers(settings: Settings, extra: Sequence[str] = ()) -> list[tlog.Verifier]:
    """:func:`trusted_keys`, parsed.

    Raises:
        ValueError: a malformed key in ``extra``.
    """
    return [tlog.Verifier.parse(k) for k in trusted_keys(settings, extra)]
