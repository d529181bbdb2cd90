"""Opaque, signed page tokens for keyset pagination.

A token carries the last row's microsecond timestamp and UUID, the sort order, and a
fingerprint of the tenant and filters; it is HMAC-SHA256 signed with the server's token
secret. Tokens from other filters, other tenants, other orders, or tampered with, fail.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass

import msgspec

_VERSION = 1
_MAC_LEN = 16


class TokenError(ValueError):
    """The token is malformed, forged, or belongs to another query."""


@dataclass(frozen=True)
class Cursor:
    """Position after the last row of a page."""

    occurred_us: int  # microseconds since the Unix epoch
    event_id: uuid.UUID


def fingerprint(parts: list[str]) -> bytes:
    """A short digest of the tenant + filters + order a token is valid for."""
    return hashlib.sha256("\x1f".join(parts).encode()).digest()[:12]


def encode(cursor: Cursor, fp: bytes, secret: bytes) -> str:
    """The opaque token for ``cursor`` under query fingerprint ``fp``."""
    payload = msgspec.msgpack.encode([_VERSION, cursor.occurred_us, cursor.event_id.bytes, fp])
    mac = hmac.new(secret, payload, hashlib.sha256).digest()[:_MAC_LEN]
    return base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode()


def decode(token: str, fp: bytes, secret: bytes) -> Cursor:
    """The cursor in ``token``, checked against ``fp``.

    Raises:
        TokenError: saying whether it is malformed, tampered with, or for another query.
    """
    if len(token) > 200:
        raise TokenError("page_token is too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError) as exc:
        raise TokenError("page_token is not a valid token") from exc
    if len(raw) <= _MAC_LEN:
        raise TokenError("page_token is truncated")
    payload, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
    want = hmac.new(secret, payload, hashlib.sha256).digest()[:_MAC_LEN]
    if not hmac.compare_digest(mac, want):
        raise TokenError("page_token was not issued by this service or was altered")
    try:
        version, occurred_us, id_bytes, token_fp = msgspec.msgpack.decode(payload)
        event_id = uuid.UUID(bytes=id_bytes)
    except (ValueError, TypeError, msgspec.DecodeError) as exc:
        raise TokenError("page_token is not a valid token") from exc
    if version != _VERSION:
        raise TokenError("page_token is from an incompatible version")
    if not hmac.compare_digest(token_fp, fp):
        raise TokenError("page_token belongs to a query with other filters, tenant or order")
    return Cursor(int(occurred_us), event_id)
