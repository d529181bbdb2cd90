"""What a source delivered and has not settled, shared by the JetStream and Kafka sources:
the held messages (by ack token) and the buffer the worker takes them from.

A message is *held* from its delivery until the worker settles it (ack or NAK), wherever
it waits meanwhile (this buffer, a flush, a storage retry); the source keeps held messages
alive (JetStream in-progress heartbeats) and the worker's stall check counts them. The
buffer only hands them over: :meth:`Deliveries.chunks` yields what arrived, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
from collections.abc import AsyncIterator, Callable, Iterable

from pipeline.stages import Message

_ACK = operator.attrgetter("ack")
_SIZE = operator.attrgetter("size")


class Deliveries:
    """Held messages and the buffer of those not yet taken by the worker.

    Attributes:
        held: delivered and not yet settled, by ack token (a JetStream ack subject, new
            per delivery; a Kafka ``topic/partition:offset``, the same on redelivery).
        held_bytes: the sizes of the held messages, summed.
        room: set whenever something is settled, and at :meth:`stop`: a source waiting
            for room in its budget looks again.
    """

    def __init__(self) -> None:
        self.held: dict[str, Message] = {}
        self.held_bytes = 0
        self.room = asyncio.Event()
        self.room.set()
        self._buffer: list[Message] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._held_at_last_beat: set[str] = set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping

    def deliver(self, msg: Message) -> None:
        """Hold ``msg`` and buffer it for the worker (a held message with the same token
        is replaced: the same Kafka record read again)."""
        old = self.held.get(msg.ack)
        if old is not None:
            self.held_bytes -= old.size
        self.held[msg.ack] = msg
        self.held_bytes += msg.size
        self._buffer.append(msg)
        self._wake.set()

    def deliver_many(self, msgs: list[Message]) -> None:
        """:meth:`deliver` of each of ``msgs``, in order."""
        held = self.held
        acks = list(map(_ACK, msgs))
        if held.keys().isdisjoint(acks):  # the usual: none held already (C-level passes)
            before = len(held)
            held.update(zip(acks, msgs, strict=True))
            if len(held) == before + len(msgs):
                self.held_bytes += sum(map(_SIZE, msgs))
            else:  # a token twice among them: the last one is held
                self.held_bytes += sum(held[a].size for a in set(acks))
            self._buffer += msgs
            self._wake.set()
            return
        held_bytes = self.held_bytes
        for msg in msgs:
            old = held.get(msg.ack)
            if old is not None:
                held_bytes -= old.size
            held[msg.ack] = msg
            held_bytes += msg.size
        self.held_bytes = held_bytes
        self._buffer += msgs
        self._wake.set()

    def again(self, msgs: Iterable[Message]) -> int:
        """Buffer ``msgs`` once more, those still held (replacing the held copy: the caller
        counted the delivery); returns how many."""
        n = 0
        for m in msgs:
            if m.ack in self.held:
                self.held[m.ack] = m
                self._buffer.append(m)
                n += 1
        if n:
            self._wake.set()
        return n

    def settle(self, msgs: Iterable[Message]) -> list[Message]:
        """Stop holding ``msgs``; returns those that were held (each once)."""
        pop = self.held.pop
        out = [held for m in msgs if (held := pop(m.ack, None)) is not None]
        self.held_bytes -= sum([m.size for m in out])
        self.room.set()
        return out

    def unbuffer(self, drop: Callable[[Message], bool]) -> None:
        """Take the buffered messages ``drop`` picks out of the buffer (not out of held)."""
        self._buffer = [m for m in self._buffer if not drop(m)]

    async def chunks(
        self, max_items: int = 0, gather_s: float = 0.0
    ) -> AsyncIterator[list[Message]]:
        """Yield buffered messages in order until :meth:`stop` and the buffer is empty.

        Args:
            max_items: most messages per chunk (0: all that are buffered).
            gather_s: after the first message of a chunk arrives, wait up to this long
                for more (up to ``max_items``) before yielding it.
        """
        loop = asyncio.get_running_loop()
        while True:
            if not self._buffer:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if gather_s > 0:
                deadline = loop.time() + gather_s
                while (not max_items or len(self._buffer) < max_items) and not self._stopping:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), left)
            if max_items:
                chunk, self._buffer = self._buffer[:max_items], self._buffer[max_items:]
            else:
                chunk, self._buffer = self._buffer, []
            yield chunk

    def due_for_heartbeat(self) -> list[Message]:
        """The held messages that were held at the previous call too (in delivery order);
        remembers what is held now for the next call.

        Called every third of the ack wait (or more often), it names each held message at
        most two periods after its delivery and every period after that, so its ack
        timer never runs out; a message delivered since the last call needs nothing yet
        (its timer started at delivery). In a steady drain most messages are settled
        within one period, so most are never named at all.
        """
        before = self._held_at_last_beat
        due = [m for a, m in self.held.items() if a in before]
        self._held_at_last_beat = set(self.held)
        return due

    def oldest_held_age_s(self, now_ns: int) -> float:
        """Seconds since the source stored the oldest held message (0 if none)."""
        if not self.held:
            return 0.0
        return max(0.0, (now_ns - min(m.timestamp_ns for m in self.held.values())) / 1e9)

    def stop(self) -> None:
        """No more deliveries are expected: :meth:`chunks` ends once the buffer is empty,
        and waiters for room wake up."""
        self._stopping = True
        self._wake.set()
        self.room.set()
