"""A small Faust-style agent runtime: named async stages over streams, with ``take``.

Faust's model, without Kafka: an *agent* is an ``async def`` that iterates a stream and
yields results; ``Stream.take(max_items, within)`` groups items into micro-batches that
are released when ``max_items`` are buffered or ``within`` seconds passed since the first
item of the batch, whichever comes first, and grow while their consumer is busy. Sources
deliver items in chunks (one chunk per network read) so the hot path pays per chunk, not
per item. Acknowledgement is the
caller's: a batch is acked only after its consumer has durably handled it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

Clock = Callable[[], float]


class Batcher(Generic[T]):
    """The pure part of ``take``: buffer items; say when a batch is due.

    Args:
        max_items: release as soon as this many are buffered.
        within: release when the oldest buffered item is this many seconds old (0: at
            once, i.e. whenever the consumer asks: batches then form only while it is busy).
        clock: monotonic seconds (injected, so tests need no sleeps).
    """

    def __init__(self, max_items: int, within: float, clock: Clock = time.monotonic) -> None:
        if max_items < 1 or within < 0:
            raise ValueError("max_items must be >= 1 and within >= 0")
        self.max_items = max_items
        self.within = within
        self.clock = clock
        self._items: list[T] = []
        self._first_at: float | None = None

    def __len__(self) -> int:
        return len(self._items)

    def add(self, items: list[T]) -> list[list[T]]:
        """Buffer ``items``; return the full batches now due (each of ``max_items``)."""
        if not items:
            return []
        if self._first_at is None:
            self._first_at = self.clock()
        self._items.extend(items)
        out: list[list[T]] = []
        while len(self._items) >= self.max_items:
            out.append(self._items[: self.max_items])
            del self._items[: self.max_items]
            self._first_at = self.clock() if self._items else None
        return out

    def time_left(self) -> float | None:
        """Seconds until the buffered batch is due by time, or None when empty."""
        if self._first_at is None:
            return None
        return max(0.0, self._first_at + self.within - self.clock())

    def due(self) -> list[T]:
        """The buffered batch if it is due by time (else empty)."""
        left = self.time_left()
        if left is None or left > 0:
            return []
        return self.drain()

    def drain(self) -> list[T]:
        """Everything buffered, now (used at shutdown)."""
        items, self._items, self._first_at = self._items, [], None
        return items


class Stream(Generic[T]):
    """An async stream of item chunks with Faust's ``take``.

    Args:
        chunks: async iterator yielding lists of items (a source, or another agent).
        name: names the read-ahead task of :meth:`take` (``<name>-take``, as asyncio
            shows it in task dumps and errors); nothing else reads it.
    """

    def __init__(self, chunks: AsyncIterator[list[T]], name: str = "stream") -> None:
        self._chunks = chunks
        self.name = name

    def __aiter__(self) -> AsyncIterator[list[T]]:
        return self._chunks

    async def take(
        self, max_items: int, within: float, clock: Clock = time.monotonic
    ) -> AsyncIterator[list[T]]:
        """Yield batches of at most ``max_items``, each due ``within`` s after its first item.

        The stream is read ahead by a task of its own, so while the consumer of ``take``
        is busy (flushing), items keep arriving and the next batch grows up to
        ``max_items`` (the source bounds what is in flight): batching adapts to load
        instead of cutting small batches on a timer. When the stream ends, what is
        buffered is yielded as a last batch; an error of the stream is raised here after
        the batches before it.
        """
        buffer: TakeBuffer[T] = TakeBuffer(max_items, within, clock)

        async def pump() -> None:
            try:
                async for chunk in self._chunks:
                    buffer.put(chunk)
            finally:
                buffer.close()

        reader = asyncio.create_task(pump(), name=f"{self.name}-take")
        try:
            while batch := await buffer.get():
                yield batch
            await reader  # the stream's own error, if it ended with one
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader


class TakeBuffer(Generic[T]):
    """The buffer behind :meth:`Stream.take`: a reader task puts chunks; the consumer awaits
    :meth:`get`, which returns a batch when ``max_items`` are buffered or the oldest item
    waited ``within`` seconds."""

    def __init__(self, max_items: int, within: float, clock: Clock = time.monotonic) -> None:
        self._batcher: Batcher[T] = Batcher(max_items, within, clock)
        self._ready: list[list[T]] = []
        self._wake = asyncio.Event()
        self._closed = False

    def put(self, items: list[T]) -> None:
        """Add a chunk (never blocks; the source bounds what is in flight)."""
        self._ready.extend(self._batcher.add(items))
        self._wake.set()

    def close(self) -> None:
        """No more items: :meth:`get` drains what is left, then returns []."""
        self._closed = True
        self._wake.set()

    async def get(self) -> list[T]:
        """The next batch; [] once closed and empty."""
        while True:
            if self._ready:
                return self._ready.pop(0)
            if self._closed:
                return self._batcher.drain()
            batch = self._batcher.due()
            if batch:
                return batch
            self._wake.clear()
            timeout = self._batcher.time_left()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)


@dataclass(frozen=True)
class Agent(Generic[T]):
    """A named stage: ``fn`` maps a stream of chunks to a stream of chunks."""

    name: str
    fn: Callable[[Stream[T]], AsyncIterator[list[T]]]

    def __call__(self, stream: Stream[T]) -> Stream[T]:
        return Stream(self.fn(stream), name=self.name)
