"""Commit notifications: the pipeline announces committed event keys on a core NATS
subject, and writers waiting for their events (the synchronous write API) are woken.

Whatever process or machine flushed a batch, every API replica hears of it. The payload
is compact JSON ``{"ok": [["tenant", "uuid"], ...], "rejected": [["tenant", "uuid",
"why"], ...]}``: stored and duplicate keys alike are ``ok`` (a duplicate is already
stored, which is what a waiter needs to know); ``rejected`` are events PostgreSQL refused
(dead-lettered by the flush stage), so their writers get the reason instead of a timeout.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from typing import Any

import msgspec

Key = tuple[str, uuid.UUID]


class Notice(msgspec.Struct):
    """One commit notification."""

    ok: list[tuple[str, uuid.UUID]] = []
    rejected: list[tuple[str, uuid.UUID, str]] = []


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Notice)


def encode_keys(keys: Iterable[Key], rejected: Iterable[tuple[Key, str]] = ()) -> bytes:
    """The notification payload for committed ``keys`` and ``rejected`` (key, reason)."""
    return _enc.encode(Notice(ok=list(keys), rejected=[(k[0], k[1], why) for k, why in rejected]))


def decode_keys(data: bytes) -> Notice:
    """A notification payload (empty for a malformed one)."""
    try:
        return _dec.decode(data)
    except msgspec.MsgspecError:
        return Notice()


class Waiters:
    """Futures keyed by (tenant_id, event id), resolved when the key is committed.

    A future's result is None when the event is stored, or PostgreSQL's reason when the
    event was refused.
    """

    def __init__(self) -> None:
        self._waiting: dict[Key, list[asyncio.Future[str | None]]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def expect(self, key: Key) -> asyncio.Future[str | None]:
        """A future that completes when ``key`` is reported committed."""
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(fut)
        return fut

    def forget(self, key: Key, fut: asyncio.Future[str | None]) -> None:
        """Stop waiting (timeout or cancellation)."""
        futs = self._waiting.get(key)
        if futs and fut in futs:
            futs.remove(fut)
            if not futs:
                del self._waiting[key]

    def committed(self, keys: Iterable[Key], rejected: Iterable[tuple[Key, str]] = ()) -> None:
        """Resolve every waiter of ``keys`` (None) and of ``rejected`` (the reason)."""
        if not self._waiting:
            return
        outcomes: list[tuple[Key, str | None]] = [(k, None) for k in keys]
        outcomes.extend(rejected)
        for key, why in outcomes:
            for fut in self._waiting.pop(key, ()):
                if not fut.done():
                    fut.set_result(why)

    async def on_message(self, msg: Any) -> None:
        """nats-py subscription callback for the commit subject."""
        notice = decode_keys(msg.data)
        self.committed(notice.ok, [((t, i), why) for t, i, why in notice.rejected])
