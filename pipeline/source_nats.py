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
import operator
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from infra.errors import ConfigError
from infra.metrics import Metrics
from infra.nats_codes import PULL_ENDED, PULL_UNANSWERED, StatusCode, status_of

# The streams moved to infra.nats_streams; these names stay importable from here.
from infra.nats_streams import (  # noqa: F401
    EVENT_MAX_MSG_SIZE,
    HEADER_ROOM,
    ensure_dlq_stream,
    ensure_stream,
)
from infra.settings import Settings, nats_servers
from pipeline.deliveries import Deliveries
from pipeline.nats_fast import FastClient, parse_headers, send_commands
from pipeline.pull_credit import PullCredit
from pipeline.stages import Message

log = logging.getLogger(__name__)

_ACK = b"+ACK"
_IN_PROGRESS = b"+WPI"
_SIZE = operator.attrgetter("size")
_DELIVERED = operator.attrgetter("delivered")
# After a pull request reached no consumer leader (503), the pause before the next one.
UNANSWERED_PAUSE_S = 0.25


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
    """Connect to NATS with reconnects forever (the pipeline must outlive NATS restarts).

    ``url`` is one URL or several, comma-separated (``AUDIT_NATS_URL``): the nodes of a
    cluster, tried in random order until one answers; once connected the client also
    learns the cluster's other nodes from the server, and reconnects to any of them.

    Raises:
        ConfigError: ``url`` is not a list of ``nats://`` / ``tls://`` URLs (retrying
            cannot help, unlike a server that does not answer).
    """
    try:
        servers = nats_servers(url)
    except ValueError as exc:
        raise ConfigError("AUDIT_NATS_URL", str(exc)) from exc

    async def on_error(exc: Exception) -> None:
        log.warning("nats: %s", exc)

    nc = FastClient()
    await nc.connect(
        servers,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        error_cb=on_error,
        pending_size=64 * 1024 * 1024,
        **nats_options(settings),
    )
    return nc


def _only_messages(items: list[Any]) -> bool:
    """Whether ``items`` are all ``Message`` objects (one C-level pass, no Python per item)."""
    return set(map(type, items)) == {Message}


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
        self._paused_until = 0.0  # no pull request before (monotonic): see PULL_UNANSWERED

    async def start(self) -> None:
        """Subscribe the reply inbox and start issuing pull requests."""
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(
            self._inbox, cb=self._on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        if isinstance(self.nc, FastClient):
            self.nc.register_sink(self._sub, self._on_raw, self._on_batch)
        self._puller = asyncio.create_task(self._pull_loop(), name="jetstream-pull")
        self._beater = asyncio.create_task(self._heartbeat_loop(), name="jetstream-heartbeat")

    async def _heartbeat_loop(self) -> None:
        """Every third of ``ack_wait``, tell JetStream that each message held since the
        previous tick is in progress (:meth:`Deliveries.due_for_heartbeat`).

        Held means delivered and not yet acked or NAKed, wherever it waits (the take
        buffer, a flush, a storage retry), so a slow PostgreSQL causes no redelivery storm;
        a message held for less than one tick needs no heartbeat (its ack timer started at
        its delivery and has at least two thirds to run), so a flowing drain sends none.
        """
        every = max(0.1, self.settings.ack_wait_s / 3)
        while True:
            await asyncio.sleep(every)
            due = self._deliveries.due_for_heartbeat()
            if due:
                await self.in_progress(due)

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

    async def _on_batch(self, items: list[Any]) -> None:
        """Frames scanned in C (``pipeline.nats_fast``): ``Message`` objects, built there as
        :meth:`_deliver` builds them, delivered run by run (the usual read is one run);
        any other frame (headers, a status) through :meth:`_on_raw`, in order."""
        if _only_messages(items):
            self._deliver_run(items)
            return
        run: list[Message] = []  # Messages in a row, delivered together
        for item in items:
            if type(item) is not Message:
                if run:
                    self._deliver_run(run)
                    run = []
                await self._on_raw(*item)
            else:
                run.append(item)
        if run:
            self._deliver_run(run)

    def _deliver_run(self, run: list[Message]) -> None:
        """:meth:`_deliver` of Messages built in C, for a whole run at once."""
        if self._credit.delivered_many(list(map(_SIZE, run))):  # filled a request: room
            self._deliveries.room.set()
        if self.metrics is not None and max(map(_DELIVERED, run)) > 1:
            again = sum(1 for m in run if m.delivered > 1)
            self.metrics.redeliveries.labels("nats").inc(again)
        self._deliveries.deliver_many(run)

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
        if status in PULL_ENDED or status is PULL_UNANSWERED:
            self._credit.ended()
            if status is PULL_UNANSWERED:  # no consumer leader yet: ask again after a pause
                self._paused_until = time.monotonic() + UNANSWERED_PAUSE_S
                log.debug("pull request reached no consumer leader (an election?)")
            elif status is StatusCode.CONFLICT:  # e.g. 409 Leadership Change
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
        """Issue pull requests until :meth:`stop`; nothing but a stop ends it (an error is
        logged and the loop goes on: a source that stopped pulling would stall silently)."""
        while not self._deliveries.stopping:
            try:
                await self._pull_once()
            except Exception:
                log.exception("pull loop error (pulling again shortly)")
                await asyncio.sleep(0.5)

    async def _pull_once(self) -> None:
        """Publish the next pull request when the credit allows, else wait for room.

        Requests go out only while connected: nats-py buffers what is published during a
        reconnect and sends it afterwards, when the credit of those requests may already
        have been forgotten as expired (their expiry runs from when they were counted as
        sent), and a burst of stale requests would overrun both budgets.
        """
        room = self._deliveries.room
        now = time.monotonic()
        # Requests whose status got lost (a reconnect, their consumer leader's node gone)
        # end at the server when they expire: only then is their credit free again.
        self._credit.forget_expired(now)
        if now < self._paused_until or not getattr(self.nc, "is_connected", True):
            await asyncio.sleep(min(max(self._paused_until - now, 0.05), 0.5))
            return
        # The largest single message the server may deliver.
        largest = int(getattr(self.nc, "max_payload", 0) or 1 << 20)
        request = self._credit.next_request(largest)
        if request is None:
            room.clear()
            with contextlib.suppress(TimeoutError):  # look at expiries now and then
                await asyncio.wait_for(room.wait(), timeout=0.5)
            return
        body = {"batch": request.batch, "expires": int(request.expires_s * 1e9),
                "max_bytes": request.max_bytes}  # fmt: skip
        try:
            await self.nc.publish(self._pull_subject, json.dumps(body).encode(),
                                  reply=self._inbox)  # fmt: skip
        except Exception as exc:  # reconnecting: try again shortly
            log.warning("pull request failed: %s", exc)
            await asyncio.sleep(0.5)
            return
        self._credit.sent(request, time.monotonic())

    def chunks(self) -> AsyncIterator[list[Message]]:
        """Yield messages in chunks as they arrive, until :meth:`stop`."""
        return self._deliveries.chunks()

    async def _reply_all(self, msgs: list[Message], payload: bytes) -> None:
        await send_commands(self.nc, [m.ack for m in msgs], payload)

    def _settled(self, msgs: list[Message]) -> None:
        settled = self._deliveries.settle(msgs)
        self._credit.settled_many(len(settled), sum([m.size for m in settled]))

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
