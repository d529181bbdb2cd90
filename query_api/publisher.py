"""Pipelined JetStream publishing for the write API.

nats-py's ``JetStream.publish`` is a full request per message (a future, a timer, a
JetStream context, JSON parsing of the ack): about a fifth of the service's CPU under
batch writes. :class:`Publisher` sends messages with a reply subject under one inbox
wildcard subscription, resolves each message's future from its JetStream ack, and lets
a caller wait for a whole batch with one timer.
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
        self._pending: dict[str, asyncio.Future[Ack]] = {}

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
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(PublishError("publisher stopped"))
        self._pending.clear()

    async def _on_ack(self, msg: Any) -> None:
        self._resolve(msg.subject[len(self._prefix) :], msg.data, msg.headers)

    def _resolve(self, token: str, data: bytes, headers: dict[str, str] | None) -> None:
        fut = self._pending.pop(token, None)
        if fut is None or fut.done():
            return
        if status_of(headers) is StatusCode.SERVICE_UNAVAILABLE:  # no responders
            fut.set_exception(PublishError("no JetStream stream for the subject"))
            return
        try:
            ack = _ack.decode(data)
        except msgspec.MsgspecError:
            fut.set_exception(PublishError(f"unreadable JetStream ack: {data[:100]!r}"))
            return
        if ack.error:
            fut.set_exception(PublishError(str(ack.error.get("description", ack.error))))
        else:
            fut.set_result(ack)

    async def publish(self, subject: str, data: bytes,
                      headers: dict[str, str]) -> asyncio.Future[Ack]:  # fmt: skip
        """Send one message; the future resolves with its ack (or PublishError)."""
        token = str(next(self._ids))
        fut: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._pending[token] = fut
        try:
            await self.nc.publish(subject, data, reply=self._prefix + token, headers=headers)
        except Exception:
            self._pending.pop(token, None)
            raise
        return fut

    async def publish_many(self, msgs: Sequence[tuple[str, bytes, dict[str, str]]]
                           ) -> list[asyncio.Future[Ack] | BaseException]:  # fmt: skip
        """Send ``msgs`` (subject, data, headers) in one protocol write; per message the
        future of its ack, or the error that refused it (see
        :func:`pipeline.nats_fast.publish_many`)."""
        loop = asyncio.get_running_loop()
        tokens = [str(next(self._ids)) for _ in msgs]
        futs: list[asyncio.Future[Ack]] = [loop.create_future() for _ in msgs]
        pending = self._pending
        for token, fut in zip(tokens, futs, strict=True):
            pending[token] = fut
        prefix = self._prefix
        try:
            refused = await publish_many(self.nc, [(subject, prefix + token, data, headers)
                                                   for (subject, data, headers), token
                                                   in zip(msgs, tokens, strict=True)])  # fmt: skip
        except BaseException:
            for token in tokens:
                pending.pop(token, None)
            raise
        out: list[asyncio.Future[Ack] | BaseException] = []
        for token, fut, why in zip(tokens, futs, refused, strict=True):
            if why is None:
                out.append(fut)
            else:
                pending.pop(token, None)
                out.append(why)
        return out

    async def settle(self, futures: Sequence[asyncio.Future[Ack]],
                     within: float) -> list[Ack | BaseException]:  # fmt: skip
        """Each future's ack, or its exception (PublishError when not acked ``within`` s)."""
        if futures:
            _, late = await asyncio.wait(futures, timeout=within)
            for fut in late:
                fut.cancel()
        out: list[Ack | BaseException] = []
        for fut in futures:
            if fut.cancelled():
                out.append(PublishError(f"no JetStream ack within {within:g} s"))
            elif fut.exception() is not None:
                out.append(fut.exception())  # type: ignore[arg-type]
            else:
                out.append(fut.result())
        # Forget cancelled tokens (their acks, if they come, are ignored).
        if any(f.cancelled() for f in futures):
            self._pending = {k: f for k, f in self._pending.items() if not f.done()}
        return out
