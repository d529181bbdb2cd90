"""Commit notifications: the pipeline announces committed event keys on a core NATS
subject (the write API's waiters, in ``query_api.waiters``, listen).

Whatever process or machine flushed a batch, every API replica hears of it. The payload
is compact JSON ``{"ok": [["tenant", "uuid"], ...], "rejected": [["tenant", "uuid",
"why"], ...]}``: stored and duplicate keys alike are ``ok`` (a duplicate is already
stored, which is what a waiter needs to know); ``rejected`` are events PostgreSQL refused
(dead-lettered by the flush stage), so their writers get the reason instead of a timeout.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import msgspec

from schemas.ids import EventKey


class Notice(msgspec.Struct):
    """One commit notification."""

    ok: list[EventKey] = []
    rejected: list[tuple[str, uuid.UUID, str]] = []


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Notice)


def encode_keys(keys: Iterable[EventKey], rejected: Iterable[tuple[EventKey, str]] = ()) -> bytes:
    """The notification payload for committed ``keys`` and ``rejected`` (key, reason)."""
    return _enc.encode(Notice(ok=list(keys), rejected=[(k[0], k[1], why) for k, why in rejected]))


def decode_keys(data: bytes) -> Notice:
    """A notification payload (empty for a malformed one)."""
    try:
        return _dec.decode(data)
    except msgspec.MsgspecError:
        return Notice()
