"""Stream secrets at rest: AES-256-GCM under the service's stream key.

What it protects, honestly: the service has to hold each secret in clear to sign webhook
deliveries and to authenticate to Splunk or S3, so anyone who controls a running service
process can use them. Encrypting them in ``audit.streams`` keeps them out of database
dumps, backups, replicas and of anyone who can read the table but not the key: the key is
``AUDIT_STREAMS_SECRET_KEY`` (64 hex digits or base64 of 32 bytes), else
``<state dir>/streams-key`` (made on first use, mode 0600). Every process that creates or
delivers streams needs the same key (processes on several hosts: set the variable). The
stream id is bound into each ciphertext (associated data), so a blob copied onto another
stream does not open. The API never returns a secret after creation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets as pysecrets
from pathlib import Path
from typing import Any

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infra.errors import AuditLogError, ConfigError
from infra.settings import Settings

KEY_FILE = "streams-key"
_VERSION = b"\x01"


class SecretsUnreadable(AuditLogError):
    """A stream's secrets cannot be decrypted with this process's key."""


def _parse_key(text: str) -> bytes:
    text = text.strip()
    try:
        key = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ConfigError("AUDIT_STREAMS_SECRET_KEY", "64 hex digits or base64 of 32 bytes"
                          ) from exc  # fmt: skip
    if len(key) != 32:
        raise ConfigError("AUDIT_STREAMS_SECRET_KEY", "must be 32 bytes (64 hex digits)")
    return key


def load_key(settings: Settings) -> bytes:
    """The stream key (see the module docstring); made in the state dir when missing.

    Raises:
        ConfigError: the setting or the file does not hold a 32-byte key.
    """
    if settings.streams_secret_key:
        return _parse_key(settings.streams_secret_key)
    path = Path(settings.state_dir) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole under a name of its own, then linked into place (atomic, and
        # refused when another process linked theirs first): a process starting beside
        # another never reads a key file still being written.
        tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{pysecrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(pysecrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
        except FileExistsError:
            pass  # made meanwhile by another process: read theirs
        finally:
            tmp.unlink(missing_ok=True)
    try:
        return _parse_key(path.read_text())
    except ConfigError as exc:
        raise ConfigError("AUDIT_STREAMS_SECRET_KEY", f"{path}: {exc}") from exc


class SecretBox:
    """Seals and opens one stream's secrets (a JSON object) under the stream key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"auditlog stream key\x00" + key).digest()[:4]

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        """The box of this process's stream key."""
        return cls(load_key(settings))

    def seal(self, stream_id: str, secrets: dict[str, Any]) -> bytes:
        """``version || key id || nonce || AES-GCM(secrets JSON)``, bound to ``stream_id``."""
        nonce = os.urandom(12)
        ct = self._aead.encrypt(nonce, msgspec.json.encode(secrets), stream_id.encode())
        return _VERSION + self.key_id + nonce + ct

    def open(self, stream_id: str, blob: bytes) -> dict[str, Any]:
        """The secrets sealed for ``stream_id``.

        Raises:
            SecretsUnreadable: sealed under another key (named by its id), or not for this
                stream, or damaged.
        """
        blob = bytes(blob)
        if blob[:1] != _VERSION or len(blob) < 1 + 4 + 12 + 16:
            raise SecretsUnreadable(f"stream {stream_id}: its secrets are in an unknown format")
        if blob[1:5] != self.key_id:
            raise SecretsUnreadable(
                f"stream {stream_id}: its secrets were sealed under stream key "
                f"{blob[1:5].hex()}, this process has {self.key_id.hex()}: give every process "
                "the same AUDIT_STREAMS_SECRET_KEY (or state dir), or rotate the secret"
            )
        try:
            plain = self._aead.decrypt(blob[5:17], blob[17:], stream_id.encode())
        except InvalidTag as exc:
            raise SecretsUnreadable(f"stream {stream_id}: its secrets do not open (damaged, "
                                    "or copied from another stream)") from exc  # fmt: skip
        doc = msgspec.json.decode(plain)
        assert isinstance(doc, dict)
        return doc


def new_signing_secret() -> str:
    """A fresh webhook signing secret (``whsec_`` and 32 random bytes, base64url)."""
    return "whsec_" + pysecrets.token_urlsafe(32)
