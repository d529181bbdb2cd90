"""Pipelined JetStream publishing for the write API.

nats-py's ``JetStream.publish`` is a full request per message (a future, a timer, a
JetStream context, JSON parsing of the ack): about a fifth of the service's CPU under
batch writes. :class:`Publisher` sends a request's messages in one protocol write, each
with a reply subject under one inbox wildcard subscription, records each JetStream ack in
the request's :class:`Sent`, and lets the caller wait for all of them with one future.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

import msgspec

from infra.nats_codes import StatusCode, status_of
from pipeline.nats_fast import FastClient, parse_headers, publish_many


class PublishError(Exception):
    """JetStream refused a message or nothing acknowledged it in time."""


class Ack(msgspec.Struct):
    """A JetStream publish acknowledgement (or its error)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, Any] | None = None


_ack = msgspec.json.Decoder(Ack)


class Sent:
    """The answers to one :meth:`Publisher.publish_many`: per message its ack or the error
    that refused it (None while waiting); ``done`` completes when none waits any more
    (one future per batch, not per message)."""

    __slots__ = ("answers", "done", "tokens", "waiting")

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.answers: list[Ack | BaseException | None] = [None] * len(tokens)
        self.waiting = len(tokens)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not tokens:
            self.done.set_result(None)

    def answer(self, index: int, value: Ack | BaseException) -> None:
        if self.answers[index] is None:
            self.answers[index] = value
            self.waiting -= 1
            if not self.waiting and not self.done.done():
                self.done.set_result(None)


class Publisher:
    """Publishes to JetStream with acks collected on one inbox subscription.

    Args:
        nc: a connected nats-py client.
    """

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self._prefix = ""
        self._sub: Any = None
        self._ids = itertools.count()
        # token -> (the batch, the message's index in it)
        self._pending: dict[str, tuple[Sent, int]] = {}

    async def start(self) -> None:
        """Subscribe to the ack inbox (its frames scanned in runs, without a ``Msg`` and a
        callback each, when the client is a :class:`~pipeline.nats_fast.FastClient`)."""
        self._prefix = self.nc.new_inbox() + "."
        self._sub = await self.nc.subscribe(self._prefix + "*", cb=self._on_ack)
        if isinstance(self.nc, FastClient):
            self.nc.register_sink(self._sub, self._on_raw_ack, self._on_acks)

    async def _on_acks(self, items: list[Any]) -> None:
        # Frames as pipeline.nats_fast scans them: (subject, reply, data, raw headers).
        for item in items:
            await self._on_raw_ack(*item)

    async def _on_raw_ack(self, subject: bytes, reply: bytes, data: bytes,
                          raw_headers: bytes | None) -> None:  # fmt: skip
        token = subject[len(self._prefix) :].decode()
        if raw_headers:  # a status (503: no stream listens): rare, read by nats-py
            self._resolve(token, data, await parse_headers(self.nc, raw_headers))
        else:
            self._resolve(token, data, None)

    async def stop(self) -> None:
        """Unsubscribe; pending publishes fail."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        for sent, i in self._pending.values():
            sent.answer(i, PublishError("publisher stopped"))
        self._pending.clear()

    async def _on_ack(self, msg: Any) -> None:
        self._resolve(msg.subject[len(self._prefix) :], msg.data, msg.headers)

    def _resolve(self, token: str, data: bytes, headers: dict[str, str] | None) -> None:
        entry = self._pending.pop(token, None)
        if entry is not None:
            entry[0].answer(entry[1], _answer(data, headers))

    async def publish_many(self, msgs: Sequence[tuple[str, bytes, dict[str, str]]]) -> Sent:
        """Send ``msgs`` (subject, data, headers) in one protocol write; their answers
        arrive in the returned :class:`Sent` (a message refused before sending has its
        error there at once; see :func:`pipeline.nats_fast.publish_many`)."""
        tokens = [str(next(self._ids)) for _ in msgs]
        sent = Sent(tokens)
        pending = self._pending
        for i, token in enumerate(tokens):
            pending[token] = (sent, i)
        prefix = self._prefix
        try:
            refused = await publish_many(self.nc, [(subject, prefix + token, data, headers)
                                                   for (subject, data, headers), token
                                                   in zip(msgs, tokens, strict=True)])  # fmt: skip
        except BaseException:
            for token in tokens:
                pending.pop(token, None)
            raise
        for i, why in enumerate(refused):
            if why is not None:
                pending.pop(tokens[i], None)
                sent.answer(i, why)
        return sent

    async def settle_many(self, sent: Sent, within: float) -> list[Ack | BaseException]:
        """Each message's ack or error once all are answered, or after ``within`` seconds
        (then PublishError for those not acked; their late acks are ignored)."""
        if sent.waiting:
            await asyncio.wait([sent.done], timeout=within)
        out: list[Ack | BaseException] = []
        late = PublishError(f"no JetStream ack within {within:g} s")
        for token, answer in zip(sent.tokens, sent.answers, strict=True):
            if answer is None:
                self._pending.pop(token, None)
                out.append(late)
            else:
                out.append(answer)
        return out


def _answer(data: bytes, headers: dict[str, str] | None) -> Ack | PublishError:
    """What an ack message says: the Ack, or why the message was not stored."""
    if status_of(headers) is StatusCode.SERVICE_UNAVAILABLE:  # no responders
        return PublishError("no JetStream stream for the subject")
    try:
        ack = _ack.decode(data)
    except msgspec.MsgspecError:
        return PublishError(f"unreadable JetStream ack: {data[:100]!r}")
    if ack.error:
        return PublishError(str(ack.error.get("description", ack.error)))
    return ack
