"""JetStream source: a durable pull consumer read through batched pull requests.

nats-py's ``sub.fetch()`` makes a task and a ``wait_for`` per message (~10-17k msg/s
here). This adapter instead subscribes one reply inbox on the core connection and
publishes pull requests (``{"batch": N, "expires": ...}``) to
``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`` itself, keeping at most ``max_inflight``
messages delivered-but-unacked in memory (backpressure: no acks, no new pulls). Several
workers, in one process or many, share the one durable consumer; acks are explicit per
message so one worker's ack never covers another's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats.js.api as jsapi
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from pipeline.settings import Settings
from pipeline.stages import Message

log = logging.getLogger(__name__)

_ACK = b"+ACK"
_IN_PROGRESS = b"+WPI"


RawSink = Callable[[bytes, bytes, bytes], Awaitable[None]]


class FastClient(Client):
    """nats-py's client with a raw delivery path for chosen subscriptions.

    For a registered subscription id, ``MSG``/``HMSG`` frames go straight to a sink as
    (reply, payload, raw headers), skipping the per-message ``Msg`` object, pending
    queue, task switch and callback of nats-py's subscription machinery (about half of
    the client's per-message cost). Everything else is nats-py unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self._raw_sinks: dict[int, RawSink] = {}

    def register_sink(self, sid: int, sink: RawSink) -> None:
        """Deliver messages of subscription ``sid`` to ``sink``."""
        self._raw_sinks[sid] = sink

    def unregister_sink(self, sid: int) -> None:
        """Stop raw delivery for ``sid``."""
        self._raw_sinks.pop(sid, None)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        sink = self._raw_sinks.get(sid)
        if sink is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        await sink(reply, data, headers)


async def connect(url: str, name: str) -> Client:
    """Connect to NATS with reconnects forever (the pipeline must outlive NATS restarts)."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats: %s", exc)

    nc = FastClient()
    await nc.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        error_cb=on_error,
        pending_size=64 * 1024 * 1024,
    )
    return nc


async def ensure_stream(nc: Client, settings: Settings) -> None:
    """Create the event stream, the dead-letter stream and the durable consumer if absent.

    Existing ones are left as they are (operators may have tuned them).
    """
    js = nc.jetstream()
    for name, subject in (
        (settings.stream, settings.subject),
        (settings.dlq_stream, settings.dlq_subject),
    ):
        try:
            await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(
                name=name,
                subjects=[subject],
                storage=jsapi.StorageType.FILE,
                retention=jsapi.RetentionPolicy.LIMITS,
                duplicate_window=120.0,
                max_age=7 * 24 * 3600.0 if name == settings.stream else 0,
            )
            log.info("created stream %s (%s)", name, subject)
    await js.add_consumer(
        settings.stream,
        jsapi.ConsumerConfig(
            durable_name=settings.consumer,
            ack_policy=jsapi.AckPolicy.EXPLICIT,
            deliver_policy=jsapi.DeliverPolicy.ALL,
            ack_wait=settings.ack_wait_s,
            max_ack_pending=-1,
            max_deliver=-1,
            filter_subject=settings.subject,
            max_waiting=4096,
        ),
    )


def parse_ack_subject(reply: str) -> tuple[int, int]:
    """(stream sequence, timestamp ns) from a JetStream ``$JS.ACK...`` reply subject."""
    tokens = reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.stream.consumer.delivered.sseq.cseq.ts.pending
        return int(tokens[5]), int(tokens[7])
    # v2: $JS.ACK.domain.accounthash.stream.consumer.delivered.sseq.cseq.ts.pending.token
    return int(tokens[7]), int(tokens[9])


class JetStreamSource:
    """Pulls messages from a durable consumer in large batches.

    Args:
        nc: a connected client.
        settings: stream/consumer names and batch sizes.
        max_inflight: most messages held delivered-but-unacked by this source.
    """

    def __init__(self, nc: Client, settings: Settings, max_inflight: int) -> None:
        self.nc = nc
        self.settings = settings
        self.max_inflight = max_inflight
        self.inflight = 0
        self._outstanding = 0
        self._buffer: list[Message] = []
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._stopping = False
        self._sub: Any = None
        self._pull_subject = f"$JS.API.CONSUMER.MSG.NEXT.{settings.stream}.{settings.consumer}"
        self._inbox = ""
        self._puller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe the reply inbox and start issuing pull requests."""
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(
            self._inbox, cb=self._on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        if isinstance(self.nc, FastClient):
            self.nc.register_sink(self._sub._id, self._on_raw)
        self._puller = asyncio.create_task(self._pull_loop(), name="jetstream-pull")

    async def _on_raw(self, reply: bytes, data: bytes, raw_headers: bytes) -> None:
        headers = await self.nc._process_headers(raw_headers) if raw_headers else None
        if not reply:
            self._on_status(headers)
            return
        ack = reply.decode()
        sseq, ts = parse_ack_subject(ack)
        self._outstanding = max(0, self._outstanding - 1)
        self.inflight += 1
        self._buffer.append(
            Message(data=data, headers=headers, stream_seq=sseq, timestamp_ns=ts, ack=ack)
        )
        self._wake.set()

    def _on_status(self, headers: dict[str, str] | None) -> None:
        # Status message for a pull request: 404/408 end it, 409 rejects it, 100 is a
        # heartbeat. Pending counts say how much of the request went undelivered.
        status = headers.get("Status", "") if headers else ""
        pending = headers.get("Nats-Pending-Messages") if headers else None
        if status in ("404", "408", "409"):
            left = int(pending) if pending else self._outstanding
            self._outstanding = max(0, self._outstanding - left)
            if status == "409":
                log.debug("pull request ended: %s %s", status, headers)
            self._room.set()

    async def _on_msg(self, msg: Msg) -> None:
        """The same as :meth:`_on_raw` for a plain nats-py client."""
        headers = msg.headers
        if not msg.reply:
            self._on_status(headers)
            return
        sseq, ts = parse_ack_subject(msg.reply)
        self._outstanding = max(0, self._outstanding - 1)
        self.inflight += 1
        self._buffer.append(
            Message(data=msg.data, headers=headers, stream_seq=sseq, timestamp_ns=ts,
                    ack=msg.reply)
        )  # fmt: skip
        self._wake.set()

    async def _pull_loop(self) -> None:
        batch = self.settings.fetch_batch
        # Requests expire so a worker that dies does not hold messages in waiting pulls.
        expires_ns = 2_000_000_000
        while not self._stopping:
            room = self.max_inflight - self.inflight - self._outstanding
            if room < min(batch, self.max_inflight) // 2 or self._outstanding > batch:
                self._room.clear()
                try:
                    await asyncio.wait_for(self._room.wait(), timeout=0.5)
                except TimeoutError:
                    # Expired requests answer 408; if a status got lost, re-arm anyway.
                    if self._outstanding and self.inflight == 0:
                        self._outstanding = 0
                continue
            n = min(batch, room)
            try:
                await self.nc.publish(
                    self._pull_subject,
                    json.dumps({"batch": n, "expires": expires_ns}).encode(),
                    reply=self._inbox,
                )
                self._outstanding += n
            except Exception as exc:  # reconnecting: try again shortly
                log.warning("pull request failed: %s", exc)
                await asyncio.sleep(0.5)

    async def chunks(self) -> AsyncIterator[list[Message]]:
        """Yield messages in chunks as they arrive, until :meth:`stop`."""
        while True:
            if not self._buffer:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            chunk, self._buffer = self._buffer, []
            yield chunk

    async def _reply_all(self, msgs: list[Message], payload: bytes) -> None:
        send = getattr(self.nc, "_send_command", None)
        if send is None:  # pragma: no cover - nats-py without the internal fast path
            for m in msgs:
                await self.nc.publish(m.ack, payload)
        else:
            # One protocol write for the whole batch: nats-py's publish() validates and
            # frames each message in Python (~10 us each), the ack path's main cost.
            tail = b" %d\r\n%s\r\n" % (len(payload), payload)
            await send(b"".join(b"PUB " + m.ack.encode() + tail for m in msgs))
        await self.nc.flush()

    async def ack(self, msgs: list[Message]) -> None:
        """Acknowledge ``msgs`` (explicitly, each one) and make room for more pulls."""
        if msgs:
            await self._reply_all(msgs, _ACK)
        self.inflight -= len(msgs)
        self._room.set()

    async def in_progress(self, msgs: list[Message]) -> None:
        """Tell JetStream we still work on ``msgs`` (resets their ack timers)."""
        if msgs:
            await self._reply_all(msgs, _IN_PROGRESS)

    async def stop(self) -> None:
        """Stop pulling; :meth:`chunks` ends once the buffer is drained."""
        self._stopping = True
        self._wake.set()
        self._room.set()
        if self._puller:
            self._puller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._puller
        if self._sub is not None:
            if isinstance(self.nc, FastClient):
                self.nc.unregister_sink(self._sub._id)
            with contextlib.suppress(Exception):  # the connection may be gone
                await self._sub.unsubscribe()

    async def consumer_state(self) -> tuple[int, int]:
        """(pending, ack-pending) of the durable consumer, for metrics."""
        info = await self.nc.jetstream().consumer_info(self.settings.stream, self.settings.consumer)
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)
