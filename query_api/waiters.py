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


class Awaited:
    """The commit outcomes of one request's keys: per key None while waiting, then
    :data:`STORED` or PostgreSQL's reason for refusing it; ``done`` completes when no key
    waits any more (one future per request, not per event)."""

    __slots__ = ("done", "keys", "outcomes", "waiting")

    def __init__(self, keys: list[EventKey]) -> None:
        self.keys = keys
        self.outcomes: list[str | None] = [None] * len(keys)
        self.waiting = len(keys)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not keys:
            self.done.set_result(None)

    def settle(self, index: int, outcome: str) -> None:
        """Key ``index``'s outcome (the first one counts). The request itself settles the
        keys it no longer waits for (refused before publishing, stored already)."""
        if self.outcomes[index] is None:
            self.outcomes[index] = outcome
            self.waiting -= 1
            if not self.waiting and not self.done.done():
                self.done.set_result(None)


#: The outcome of a key that was stored (a refused key's is the reason, never empty).
STORED = ""


class Waiters:
    """Requests waiting for keys (tenant_id, event id), told when a key is committed.

    An :class:`Awaited` holds a request's keys; a key's outcome is :data:`STORED`, or
    PostgreSQL's reason when the event was refused.
    """

    def __init__(self) -> None:
        self._waiting: dict[EventKey, list[tuple[Awaited, int]]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def expect(self, keys: list[EventKey]) -> Awaited:
        """Wait for ``keys`` (its ``done`` completes once each is reported committed);
        :meth:`forget` it when the request ends, whatever happened."""
        awaited = Awaited(keys)
        waiting = self._waiting
        for i, key in enumerate(keys):
            entry = (awaited, i)
            entries = waiting.get(key)
            if entries is None:
                waiting[key] = [entry]
            else:
                entries.append(entry)
        return awaited

    def forget(self, awaited: Awaited) -> None:
        """Stop waiting for ``awaited``'s keys (the request ended: answered, timed out or
        cancelled), also those it settled itself (:meth:`Awaited.settle`)."""
        waiting = self._waiting
        for key in awaited.keys:
            entries = waiting.get(key)
            if entries:
                entries[:] = [e for e in entries if e[0] is not awaited]
                if not entries:
                    del waiting[key]

    def committed(
        self, keys: Iterable[EventKey], rejected: Iterable[tuple[EventKey, str]] = ()
    ) -> None:
        """Settle every waiter of ``keys`` (stored) and of ``rejected`` (the reason)."""
        waiting = self._waiting
        if not waiting:
            return
        for key in keys:
            entries = waiting.pop(key, None)
            if entries is not None:
                for awaited, i in entries:
                    awaited.settle(i, STORED)
        for key, why in rejected:
            for awaited, i in waiting.pop(key, ()):
                awaited.settle(i, why or "refused")

    async def on_message(self, msg: Any) -> None:
        """nats-py subscription callback for the commit subject."""
        notice = decode_keys(msg.data)
        self.committed(notice.ok, [((t, i), why) for t, i, why in notice.rejected])
