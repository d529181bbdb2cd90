"""Writers waiting for their events (the synchronous write API), woken by the pipeline's
commit notices (``pipeline.commits``) on a core NATS subject: whatever process or machine
flushed a batch, every API replica hears of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from pipeline.commits import decode_keys
from schemas.ids import EventKey


class Waiters:
    """Futures keyed by (tenant_id, event id), resolved when the key is committed.

    A future's result is None when the event is stored, or PostgreSQL's reason when the
    event was refused.
    """

    def __init__(self) -> None:
        self._waiting: dict[EventKey, list[asyncio.Future[str | None]]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def expect(self, key: EventKey) -> asyncio.Future[str | None]:
        """A future that completes when ``key`` is reported committed."""
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(fut)
        return fut

    def forget(self, key: EventKey, fut: asyncio.Future[str | None]) -> None:
        """Stop waiting (timeout or cancellation)."""
        futs = self._waiting.get(key)
        if futs and fut in futs:
            futs.remove(fut)
            if not futs:
                del self._waiting[key]

    def committed(
        self, keys: Iterable[EventKey], rejected: Iterable[tuple[EventKey, str]] = ()
    ) -> None:
        """Resolve every waiter of ``keys`` (None) and of ``rejected`` (the reason)."""
        if not self._waiting:
            return
        outcomes: list[tuple[EventKey, str | None]] = [(k, None) for k in keys]
        outcomes.extend(rejected)
        for key, why in outcomes:
            for fut in self._waiting.pop(key, ()):
                if not fut.done():
                    fut.set_result(why)

    async def on_message(self, msg: Any) -> None:
        """nats-py subscription callback for the commit subject."""
        notice = decode_keys(msg.data)
        self.committed(notice.ok, [((t, i), why) for t, i, why in notice.rejected])
