"""JetStream source: a durable pull consumer read through batched pull requests.

nats-py's ``sub.fetch()`` makes a task and a ``wait_for`` per message (~10-17k msg/s
here). This adapter instead subscribes one reply inbox on the core connection (delivered
through ``pipeline.nats_fast``, the only module touching nats-py internals) and
publishes pull requests (``{"batch": N, "expires": ...}``) to
``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`` itself, keeping at most ``max_inflight``
messages delivered-but-unacked in memory (backpressure: no acks, no new pulls; the
arithmetic is :class:`pipeline.pull_credit.PullCredit`, pure and property-tested). Several
workers, in one process or many, share the one durable consumer; acks are explicit per
message so one worker's ack never covers another's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import nats.js.api as jsapi
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import APIError, BadRequestError, NotFoundError

from infra.metrics import Metrics
from infra.settings import Settings
from pipeline.deliveries import Deliveries
from pipeline.nats_codes import PULL_ENDED, JsErrorCode, StatusCode, status_of
from pipeline.nats_fast import FastClient, parse_headers, send_commands
from pipeline.pull_credit import PullCredit
from pipeline.stages import Message
from schemas.events import MAX_EVENT_BYTES

log = logging.getLogger(__name__)

_ACK = b"+ACK"
_IN_PROGRESS = b"+WPI"


# Header room a stream allows beyond the largest event (ours plus a producer's own).
HEADER_ROOM = 16 * 1024
EVENT_MAX_MSG_SIZE = MAX_EVENT_BYTES + HEADER_ROOM


def nats_options(settings: Settings | None) -> dict[str, Any]:
    """nats-py ``connect()`` keyword arguments for the credentials and TLS in ``settings``.

    Used by every connection the service makes (workers, API, CLI).
    """
    if settings is None:
        return {}
    opts: dict[str, Any] = {}
    if settings.nats_user:
        opts["user"] = settings.nats_user
        opts["password"] = settings.nats_password
    if settings.nats_token:
        opts["token"] = settings.nats_token
    if settings.nats_creds:
        opts["user_credentials"] = settings.nats_creds
    if settings.nats_nkey_seed:
        opts["nkeys_seed"] = settings.nats_nkey_seed
    if settings.nats_tls_ca or settings.nats_tls_cert:
        ctx = ssl.create_default_context(cafile=settings.nats_tls_ca or None)
        if settings.nats_tls_cert:
            ctx.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
        opts["tls"] = ctx
    return opts


async def connect(url: str, name: str, settings: Settings | None = None) -> Client:
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
        **nats_options(settings),
    )
    return nc


async def _add_stream(js: Any, **config: Any) -> None:
    """``add_stream``; when the server cannot reserve ``max_bytes`` (a small disk), the
    stream is made without a byte limit and a warning says so (it still works)."""
    try:
        await js.add_stream(**config)
    except APIError as exc:
        if exc.err_code != JsErrorCode.STORAGE_RESOURCES_EXCEEDED or not config.get("max_bytes"):
            raise
        log.warning("stream %s: the server cannot reserve max_bytes=%d (%s); made without a "
                    "byte limit", config["name"], config["max_bytes"], exc.description)  # fmt: skip
        config["max_bytes"] = -1
        await js.add_stream(**config)


async def ensure_dlq_stream(nc: Client, settings: Settings) -> None:
    """Create the dead-letter stream if it is missing (no size limit beyond max_payload)."""
    js = nc.jetstream()
    try:
        await js.stream_info(settings.dlq_stream)
    except NotFoundError:
        await _add_stream(
            js,
            name=settings.dlq_stream,
            subjects=[settings.dlq_subject],
            storage=jsapi.StorageType.FILE,
            retention=jsapi.RetentionPolicy.LIMITS,
            duplicate_window=120.0,
            max_age=settings.dlq_max_age_days * 86400,
            max_bytes=settings.dlq_max_bytes,
            discard=jsapi.DiscardPolicy.NEW,
        )
        log.info("created stream %s (%s)", settings.dlq_stream, settings.dlq_subject)


async def ensure_stream(nc: Client, settings: Settings) -> None:
    """Create or upgrade the event stream, the dead-letter stream and the durable consumer.

    The event stream takes ``<subject>`` and the tenant-bound ``<subject>.*``, refuses
    messages larger than an event at its limit plus header room (``max_msg_size``), and
    never discards a message the pipeline has not acked: interest retention (a message
    goes once acked), no age limit, a byte limit (``AUDIT_STREAM_MAX_BYTES``) beyond which
    JetStream refuses publishers instead of dropping backlog. An existing stream is
    moved to that (NATS >= 2.10 edits these in place; older servers keep it as it is,
    with a warning); operators' other settings are left alone.
    """
    js = nc.jetstream()
    subjects = [settings.subject, settings.subject + ".*"]
    try:
        info = await js.stream_info(settings.stream)
    except NotFoundError:
        await _add_stream(
            js,
            name=settings.stream,
            subjects=subjects,
            storage=jsapi.StorageType.FILE,
            retention=jsapi.RetentionPolicy.INTEREST,
            discard=jsapi.DiscardPolicy.NEW,
            max_bytes=settings.stream_max_bytes,
            duplicate_window=120.0,
            max_msg_size=EVENT_MAX_MSG_SIZE,
        )
        log.info("created stream %s (%s)", settings.stream, ", ".join(subjects))
    else:
        config = info.config
        have = list(config.subjects or [])
        size = config.max_msg_size or -1
        old = (any(s not in have for s in subjects) or not 0 < size <= EVENT_MAX_MSG_SIZE
               or config.retention != jsapi.RetentionPolicy.INTEREST
               or (config.max_age or 0) > 0)  # fmt: skip
        if old:
            config.subjects = have + [s for s in subjects if s not in have]
            config.max_msg_size = EVENT_MAX_MSG_SIZE if not 0 < size <= EVENT_MAX_MSG_SIZE else size
            # Retention moves to interest only once the durable consumer exists (below):
            # a stream without interest would drop its backlog at the switch.
            config.max_age = 0
            if not (config.max_bytes or 0) > 0:
                config.max_bytes = settings.stream_max_bytes
                config.discard = jsapi.DiscardPolicy.NEW
            try:
                await js.update_stream(config)
                log.info("upgraded stream %s: subjects %s, max_msg_size %d, no max_age",
                         settings.stream, config.subjects, config.max_msg_size)  # fmt: skip
            except BadRequestError as exc:
                log.warning("stream %s kept as it is (could not upgrade it: %s); see the "
                            "README, 'Upgrading'", settings.stream, exc)  # fmt: skip
    await ensure_dlq_stream(nc, settings)
    consumer = jsapi.ConsumerConfig(
        durable_name=settings.consumer,
        ack_policy=jsapi.AckPolicy.EXPLICIT,
        deliver_policy=jsapi.DeliverPolicy.ALL,
        ack_wait=settings.ack_wait_s,
        max_ack_pending=-1,
        max_deliver=-1,
        max_waiting=4096,
    )
    try:
        await js.add_consumer(settings.stream, consumer)
    except BadRequestError as exc:
        # NATS < 2.10 cannot edit an existing consumer's filter: it keeps working, but
        # consumes only the subject it was made for (no tenant-bound subjects).
        log.warning("consumer %s kept as it is (could not update it: %s)", settings.consumer, exc)
    info = await js.stream_info(settings.stream)
    if info.config.retention != jsapi.RetentionPolicy.INTEREST:
        info.config.retention = jsapi.RetentionPolicy.INTEREST
        try:
            await js.update_stream(info.config)
            log.info("stream %s now keeps each message until the pipeline acked it (interest "
                     "retention)", settings.stream)  # fmt: skip
        except BadRequestError as exc:
            log.warning("stream %s keeps its retention (could not change it: %s); see the "
                        "README, 'Upgrading'", settings.stream, exc)  # fmt: skip


def parse_ack_subject(reply: str) -> tuple[int, int, int]:
    """(stream sequence, timestamp ns, times delivered) from a ``$JS.ACK...`` reply subject."""
    tokens = reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.stream.consumer.delivered.sseq.cseq.ts.pending
        return int(tokens[5]), int(tokens[7]), int(tokens[4])
    # v2: $JS.ACK.domain.accounthash.stream.consumer.delivered.sseq.cseq.ts.pending.token
    return int(tokens[7]), int(tokens[9]), int(tokens[6])


class JetStreamSource:
    """Pulls messages from a durable consumer in large batches, bounded by count and bytes.

    Thin I/O around :class:`~pipeline.pull_credit.PullCredit` (what to ask for) and
    :class:`~pipeline.deliveries.Deliveries` (what is held and buffered).

    Args:
        nc: a connected client.
        settings: stream/consumer names, batch sizes, ``max_inflight_bytes``.
        max_inflight: most messages held delivered-but-unacked by this source.

    Memory: delivered-but-unsettled bytes plus the ``max_bytes`` of outstanding pull
    requests never exceed ``settings.max_inflight_bytes`` (payload and headers counted).
    """

    kind = "nats"

    def __init__(self, nc: Client, settings: Settings, max_inflight: int,
                 metrics: Metrics | None = None) -> None:  # fmt: skip
        self.where = f"stream {settings.stream}"
        self.nc = nc
        self.metrics = metrics
        self.settings = settings
        self._deliveries = Deliveries()
        # Delivered and not yet settled, by ack subject: heartbeats go to all of them.
        self.held = self._deliveries.held
        self._credit = PullCredit(max_inflight, settings.max_inflight_bytes,
                                  settings.fetch_batch)  # fmt: skip
        self._sub: Any = None
        self._pull_subject = f"$JS.API.CONSUMER.MSG.NEXT.{settings.stream}.{settings.consumer}"
        self._inbox = ""
        self._puller: asyncio.Task[None] | None = None
        self._beater: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe the reply inbox and start issuing pull requests."""
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(
            self._inbox, cb=self._on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        if isinstance(self.nc, FastClient):
            self.nc.register_sink(self._sub, self._on_raw)
        self._puller = asyncio.create_task(self._pull_loop(), name="jetstream-pull")
        self._beater = asyncio.create_task(self._heartbeat_loop(), name="jetstream-heartbeat")

    async def _heartbeat_loop(self) -> None:
        """Tell JetStream every held message is in progress, every third of ``ack_wait``.

        Held means delivered and not yet acked or NAKed, wherever it waits (the take
        buffer, a flush, a storage retry), so a slow PostgreSQL causes no redelivery storm.
        """
        every = max(0.5, self.settings.ack_wait_s / 3)
        while True:
            await asyncio.sleep(every)
            if self.held:
                await self.in_progress(list(self.held.values()))

    def oldest_held_age_s(self, now_ns: int) -> float:
        """Seconds since JetStream stored the oldest message this source holds (0 if none)."""
        return self._deliveries.oldest_held_age_s(now_ns)

    def _deliver(self, subject: str, ack: str, data: bytes,
                 headers: dict[str, str] | None, size: int) -> None:  # fmt: skip
        sseq, ts, delivered = parse_ack_subject(ack)
        if self._credit.delivered(size):  # filled its request: room for the next one
            self._deliveries.room.set()
        msg = Message(data=data, headers=headers, stream_seq=sseq, timestamp_ns=ts, ack=ack,
                      subject=subject, delivered=delivered, size=size)  # fmt: skip
        if delivered > 1 and self.metrics is not None:
            self.metrics.redeliveries.labels("nats").inc()
        self._deliveries.deliver(msg)

    async def _on_raw(self, subject: bytes, reply: bytes, data: bytes, raw_headers: bytes) -> None:
        headers = await parse_headers(self.nc, raw_headers)
        if not reply:
            self._on_status(headers)
            return
        self._deliver(subject.decode(), reply.decode(), data, headers,
                      len(data) + len(raw_headers or b""))  # fmt: skip

    def _on_status(self, headers: dict[str, str] | None) -> None:
        # A status message for a pull request (no reply subject); pending counts in its
        # headers say how much of the request went undelivered.
        status = status_of(headers)
        if status in PULL_ENDED:
            self._credit.ended()
            if status is StatusCode.CONFLICT:
                log.debug("pull request ended: %s %s", status.value, headers)
            self._deliveries.room.set()

    async def _on_msg(self, msg: Msg) -> None:
        """The same as :meth:`_on_raw` for a plain nats-py client."""
        if not msg.reply:
            self._on_status(msg.headers)
            return
        size = len(msg.data) + sum(len(k) + len(v) + 4 for k, v in (msg.headers or {}).items())
        self._deliver(msg.subject, msg.reply, msg.data, msg.headers, size)

    async def _pull_loop(self) -> None:
        room = self._deliveries.room
        while not self._deliveries.stopping:
            # The largest single message the server may deliver.
            largest = int(getattr(self.nc, "max_payload", 0) or 1 << 20)
            # Requests whose status got lost (a reconnect) end at the server when they
            # expire: only then is their credit free again.
            self._credit.forget_expired(time.monotonic())
            request = self._credit.next_request(largest)
            if request is None:
                room.clear()
                with contextlib.suppress(TimeoutError):  # look at expiries now and then
                    await asyncio.wait_for(room.wait(), timeout=0.5)
                continue
            body = {"batch": request.batch, "expires": int(request.expires_s * 1e9),
                    "max_bytes": request.max_bytes}  # fmt: skip
            try:
                await self.nc.publish(self._pull_subject, json.dumps(body).encode(),
                                      reply=self._inbox)  # fmt: skip
            except Exception as exc:  # reconnecting: try again shortly
                log.warning("pull request failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            self._credit.sent(request, time.monotonic())

    def chunks(self) -> AsyncIterator[list[Message]]:
        """Yield messages in chunks as they arrive, until :meth:`stop`."""
        return self._deliveries.chunks()

    async def _reply_all(self, msgs: list[Message], payload: bytes) -> None:
        await send_commands(self.nc, [m.ack for m in msgs], payload)

    def _settled(self, msgs: list[Message]) -> None:
        for m in self._deliveries.settle(msgs):
            self._credit.settled(m.size)

    async def _reply_safely(self, msgs: list[Message], payload: bytes, what: str) -> bool:
        # Never raises: with NATS away, an unsent ack means a redelivery later (the claim
        # table keeps storage exactly-once); an exception here must not end the worker.
        try:
            await self._reply_all(msgs, payload)
            return True
        except Exception as exc:
            log.warning("%s of %d message(s) not sent (NATS unavailable?): %r", what, len(msgs),
                        exc)  # fmt: skip
            return False

    async def ack(self, msgs: list[Message]) -> None:
        """Acknowledge ``msgs`` (explicitly, each one) and make room for more pulls.

        Never raises: if NATS is away the acks are lost and JetStream redelivers.
        """
        if msgs:
            await self._reply_safely(msgs, _ACK, "ack")
        self._settled(msgs)

    async def nak(self, msgs: list[Message], delay_s: float) -> None:
        """Give ``msgs`` back for redelivery after ``delay_s`` (never lost, never acked)."""
        if msgs:
            await self._reply_safely(msgs, b'-NAK {"delay": %d}' % int(delay_s * 1e9), "nak")
        self._settled(msgs)

    async def in_progress(self, msgs: list[Message]) -> None:
        """Tell JetStream we still work on ``msgs`` (resets their ack timers). Never raises."""
        if msgs:
            await self._reply_safely(msgs, _IN_PROGRESS, "in-progress")

    async def stop(self) -> None:
        """Stop pulling; :meth:`chunks` ends once the buffer is drained."""
        self._deliveries.stop()
        for task in (self._puller, self._beater):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._sub is not None:
            if isinstance(self.nc, FastClient):
                self.nc.unregister_sink(self._sub)
            with contextlib.suppress(Exception):  # the connection may be gone
                await self._sub.unsubscribe()

    async def consumer_state(self) -> tuple[int, int]:
        """(pending, ack-pending) of the durable consumer, for metrics."""
        info = await self.nc.jetstream().consumer_info(self.settings.stream, self.settings.consumer)
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)
