"""Kafka source: a faust-streaming ``App`` whose agent feeds the worker's stages.

    Kafka topic (AUDIT_KAFKA_TOPIC) -> faust agent (consumer group AUDIT_KAFKA_GROUP)
        -> :class:`KafkaSource` (a :class:`pipeline.worker.Source`) -> the same Worker,
           stages, PostgreSQL store, chain and claim table as the JetStream source.

Guarantees:

- **Commit after store.** The agent reads a ``noack`` stream: a record is acked to faust
  only when the worker settled it (stored, a duplicate, or dead-lettered), i.e. after the
  batch's PostgreSQL transaction committed, **and** every record delivered before it from
  its partition is settled too (acks reach faust in partition order). Faust commits the
  acked offsets every ``COMMIT_INTERVAL_S`` and at shutdown; auto-commit is off. A crash
  anywhere means redelivery of what was not committed, and the claim table keeps storage
  exactly-once. (In-order acks are not only tidier: faust-streaming 0.15's
  ``Consumer._new_offset`` compares the first acked offset with the committed one off by
  one, so acks with a one-record hole after a commit are committed past the hole; this
  source never hands it a hole. ``tests/integration/test_source_kafka.py`` checks the
  committed offsets against the broker.)
- **Nothing skipped.** Kafka cannot give back one record. When the worker cannot settle
  one (its dead letter could not be published, or a flush failed unexpectedly) it NAKs
  it: the source pauses that record's partition (no new fetches from it; fetched records
  behind it still go on, their offsets wait uncommitted behind it), delivers the same
  record again after the worker's backoff, and resumes the partition once every held
  record of it is settled. Other partitions go on.
- **Rebalances.** Records of revoked partitions that the worker has not taken yet are
  dropped from the buffer (their new owner reads them from the last commit); records
  already in a flush are stored and settled (a duplicate at the new owner is dropped by
  the claim table). Per-tenant chains are kept by PostgreSQL's chain-head row locks
  whatever the number of workers, as with JetStream.

Ids derived from a source position use topic, partition, offset and the record
timestamp (``Message.origin``/``created_ns``), so a redelivered record gets the same id.
``received_at`` is the broker's LogAppendTime when the topic uses it, else the time the
worker read the record (a producer's own CreateTime is not trusted as a receipt time).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from typing import Any

import msgspec

from infra.metrics import Metrics
from infra.settings import Settings
from pipeline.stages import Message

log = logging.getLogger(__name__)

# Faust commits acked offsets this often (and at shutdown and rebalance).
COMMIT_INTERVAL_S = 1.0
# Kafka's record timestamp type 1: LogAppendTime (set by the broker).
_LOG_APPEND_TIME = 1
# Topics faust creates when missing get this many partitions (an existing topic is used
# as it is).
DEFAULT_PARTITIONS = 8
# faust hands records over one by one: chunks for the worker are gathered up to this many
# records or this long after the first (without it, batches stay tiny at low rates and
# PostgreSQL pays per batch; measured: 2,300 -> 4,300 events/s, PostgreSQL 198 -> 44
# µs/event, benchmarks/README.md).
CHUNK_ITEMS = 1000
CHUNK_WAIT_S = 0.05
# Producer header values kept per record (bytes, decoded as UTF-8 with replacement).
MAX_HEADER_VALUE = 4096


def kafka_app(settings: Settings, client_id: str = "auditlog") -> Any:
    """A faust ``App`` for the Kafka source: consumer group ``settings.kafka_group``, no web
    server, no tables (memory store), no leader topic, earliest offset for a new group.

    faust requires ``broker_session_timeout <= broker_request_timeout``; the heartbeat is
    a third of the session.
    """
    import faust

    session = settings.kafka_session_timeout_s
    return faust.App(
        settings.kafka_group,
        broker=[f"kafka://{hp}" for hp in settings.kafka_bootstrap.split(",")],
        broker_client_id=client_id,
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        topic_disable_leader=True,
        topic_partitions=DEFAULT_PARTITIONS,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session,
        broker_heartbeat_interval=max(1.0, session / 3),
        broker_request_timeout=max(30.0, session),
        broker_commit_interval=COMMIT_INTERVAL_S,
        stream_wait_empty=False,
        producer_max_request_size=settings.kafka_max_message_bytes,
        consumer_max_fetch_size=max(4 * 1024 * 1024, settings.kafka_max_message_bytes),
    )


def to_message(record: Any, now_ns: int) -> Message:
    """The :class:`Message` for a faust ``ConsumerMessage`` (pure; tested with hypothesis).

    Header values are decoded as UTF-8 (invalid bytes replaced) and cut to
    ``MAX_HEADER_VALUE``; a missing value (tombstone) becomes empty bytes (a malformed
    event, dead-lettered with its reason).
    """
    value = record.value
    data = bytes(value) if value is not None else b""
    headers: dict[str, str] | None = None
    if record.headers:
        headers = {}
        for name, raw in record.headers:
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else ""
            headers[str(name)] = text[:MAX_HEADER_VALUE]
    ts = record.timestamp
    created_ns = int(ts * 1e9) if ts and ts > 0 else 0
    stored_ns = created_ns if record.timestamp_type == _LOG_APPEND_TIME else 0
    size = len(data) + sum(len(k) + len(v) for k, v in (headers or {}).items())
    origin = f"{record.topic}/{record.partition}"
    return Message(data=data, headers=headers, stream_seq=record.offset,
                   timestamp_ns=stored_ns or now_ns, ack=f"{origin}:{record.offset}",
                   origin=origin, created_ns=created_ns, size=size)  # fmt: skip


class KafkaSource:
    """A :class:`pipeline.worker.Source` over a faust agent on ``settings.kafka_topic``.

    Args:
        settings: bootstrap servers, topic, group, in-flight bytes.
        max_inflight: most records held delivered-but-unsettled (the agent waits beyond:
            faust's stream buffer fills and fetching stops).
        metrics: redeliveries, paused partitions, lag and broker reachability go here.
        app: a faust App to use (default: :func:`kafka_app`).
        wait_for_broker: :meth:`start` waits until the broker answers (off only for unit
            tests with a stand-in App and no broker).
    """

    kind = "kafka"

    def __init__(self, settings: Settings, max_inflight: int, metrics: Metrics | None = None,
                 app: Any = None, wait_for_broker: bool = True) -> None:  # fmt: skip
        self.settings = settings
        self.where = f"Kafka topic {settings.kafka_topic}"
        self.metrics = metrics
        self.max_inflight = max_inflight
        self.max_bytes = settings.max_inflight_bytes
        self.app = app if app is not None else kafka_app(settings)
        self.held: dict[str, Message] = {}
        self._events: dict[str, Any] = {}  # ack token -> faust event (until acked to faust)
        self._tps: dict[str, Any] = {}  # ack token -> faust TP
        # Per partition, tokens in delivery order until acked to faust; settled ones wait
        # in _done for the records before them.
        self._order: dict[Any, collections.deque[str]] = defaultdict(collections.deque)
        self._done: set[str] = set()
        self._naked: dict[Any, set[str]] = defaultdict(set)  # paused TP -> held tokens
        self._buffer: list[Message] = []
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._inflight_bytes = 0
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._wait_for_broker = wait_for_broker
        self._retries: set[asyncio.Task[None]] = set()
        self.broker_error = ""  # why the broker is unreachable ("" when it is)
        self._started = False
        self._probe_client: Any = None
        topic = self.app.topic(settings.kafka_topic, key_type=bytes, value_type=bytes,
                               key_serializer="raw", value_serializer="raw")  # fmt: skip
        self.app.agent(topic, name="audit-ingest")(self._agent)
        self.app.on_partitions_revoked.connect(self._on_revoked)

    # -- the faust side -------------------------------------------------------------------
    async def _agent(self, stream: Any) -> None:
        """The faust agent: hand each record to the worker, acks left to :meth:`ack`."""
        async for event in stream.noack().events():
            while (len(self.held) >= self.max_inflight
                   or self._inflight_bytes >= self.max_bytes) and not self._stopping:  # fmt: skip
                self._room.clear()
                await self._room.wait()
            if self._stopping:
                continue  # not acked: read again after the restart
            try:
                msg = to_message(event.message, time.time_ns())
            except Exception as exc:  # never let one record end the agent
                log.error("kafka record not readable (left unacked, redelivered on restart): "
                          "%r", exc)  # fmt: skip
                continue
            self._deliver(msg, event, event.message.tp)

    def _deliver(self, msg: Message, event: Any, tp: Any) -> None:
        token = msg.ack
        old = self.held.get(token)
        if old is not None:  # delivered again (after a rebalance seek)
            self._inflight_bytes -= old.size
        self.held[token] = msg
        if token not in self._events:
            self._order[tp].append(token)
        self._done.discard(token)
        self._events[token] = event
        self._tps[token] = tp
        self._inflight_bytes += msg.size
        self._buffer.append(msg)
        self._wake.set()

    async def _on_revoked(self, app: Any, revoked: Iterable[Any], **_: Any) -> None:
        gone = {(tp.topic, tp.partition) for tp in revoked}
        if not gone:
            return
        self._buffer = [m for m in self._buffer if self._tp_key(m.ack) not in gone]
        for tp in [tp for tp in self._order if (tp.topic, tp.partition) in gone]:
            for token in self._order.pop(tp):
                self._drop(token)
            self._naked.pop(tp, None)
        self._update_paused()
        log.info("kafka partitions revoked: %s", sorted(f"{t}/{p}" for t, p in gone))

    def _tp_key(self, token: str) -> tuple[str, int] | None:
        tp = self._tps.get(token)
        return (tp.topic, tp.partition) if tp is not None else None

    def _settle(self, token: str) -> None:
        msg = self.held.pop(token, None)
        if msg is not None:
            self._inflight_bytes -= msg.size
        self._room.set()

    def _drop(self, token: str) -> None:
        """Forget a record entirely (its partition went to another worker)."""
        self._settle(token)
        self._events.pop(token, None)
        self._tps.pop(token, None)
        self._done.discard(token)

    def _advance(self, tp: Any) -> None:
        """Ack to faust the settled records at the head of ``tp``'s delivery order."""
        order = self._order.get(tp)
        while order and order[0] in self._done:
            token = order.popleft()
            self._done.discard(token)
            self._tps.pop(token, None)
            event = self._events.pop(token, None)
            if event is not None:
                try:
                    event.ack()
                except Exception as exc:  # the partition moved away meanwhile
                    log.debug("ack of %s not taken: %r", token, exc)
        if order is not None and not order:
            del self._order[tp]

    # -- the worker side ------------------------------------------------------------------
    async def start(self) -> None:
        """Wait for the broker (a warning per try, backoff to 30 s; :meth:`stop` ends the
        wait), then start the faust app (consumer, producer, the agent); joining the group
        follows. A broker that is down at start is an outage, not a failure."""
        delay = 0.5
        while self._wait_for_broker and not self._stopping and await self.probe():
            log.warning("kafka broker %s unreachable (%s); retrying in %.0fs",
                        self.settings.kafka_bootstrap, self.broker_error, delay)  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), delay)
            delay = min(delay * 2, 30.0)
        if self._stopping:
            return
        self._started = True  # from here on, close() stops the app whatever happens
        await self.app.start()
        log.info("kafka source: topic %s, group %s, bootstrap %s", self.settings.kafka_topic,
                 self.settings.kafka_group, self.settings.kafka_bootstrap)  # fmt: skip

    async def chunks(self) -> AsyncIterator[list[Message]]:
        """Yield records in chunks of up to ``CHUNK_ITEMS``, each at most ``CHUNK_WAIT_S``
        after its first record arrived, until :meth:`stop`."""
        loop = asyncio.get_running_loop()
        while True:
            if not self._buffer:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            deadline = loop.time() + CHUNK_WAIT_S
            while len(self._buffer) < CHUNK_ITEMS and not self._stopping:
                left = deadline - loop.time()
                if left <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
            chunk, self._buffer = self._buffer[:CHUNK_ITEMS], self._buffer[CHUNK_ITEMS:]
            yield chunk

    async def ack(self, msgs: list[Message]) -> None:
        """Settle ``msgs``: each is acked to faust (whose next commit includes its offset)
        once every record delivered before it from its partition is settled. Never raises."""
        resumed = False
        touched = set()
        for m in msgs:
            token = m.ack
            self._settle(token)
            tp = self._tps.get(token)
            if tp is None or token not in self._events:
                continue  # revoked meanwhile: the new owner has it
            self._done.add(token)
            touched.add(tp)
            if tp in self._naked:
                self._naked[tp].discard(token)
                if not self._naked[tp]:
                    del self._naked[tp]
                    resumed = True
        for tp in touched:
            self._advance(tp)
        if resumed:
            self._update_paused()

    async def nak(self, msgs: list[Message], delay_s: float) -> None:
        """Hold ``msgs`` (never acked, never skipped): pause their partitions and deliver
        them again after ``delay_s``. Never raises."""
        if not msgs:
            return
        for m in msgs:
            tp = self._tps.get(m.ack)
            if tp is not None:
                self._naked[tp].add(m.ack)
        self._update_paused()
        task = asyncio.create_task(self._again(msgs, delay_s), name="kafka-redeliver")
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _again(self, msgs: list[Message], delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        again = []
        for m in msgs:
            if m.ack in self.held and not self._stopping:
                again.append(msgspec.structs.replace(m, delivered=m.delivered + 1))
        for m in again:
            self.held[m.ack] = m
        if again:
            if self.metrics is not None:
                self.metrics.redeliveries.labels(self.kind).inc(len(again))
            self._buffer.extend(again)
            self._wake.set()

    def _update_paused(self) -> None:
        consumer = self.app.consumer if self._started else None
        paused = set(self._naked)
        if consumer is not None:
            with contextlib.suppress(Exception):
                consumer.pause_partitions(paused)
            with contextlib.suppress(Exception):
                resume = set(consumer._paused_partitions) - paused
                if resume:
                    consumer.resume_partitions(resume)
        if self.metrics is not None:
            self.metrics.kafka_paused.set(len(paused))

    def paused(self) -> list[str]:
        """``topic/partition`` of the partitions paused for held records."""
        return sorted(f"{tp.topic}/{tp.partition}" for tp in self._naked)

    def oldest_held_age_s(self, now_ns: int) -> float:
        """Seconds since the oldest held record was received (0 if none)."""
        if not self.held:
            return 0.0
        return max(0.0, (now_ns - min(m.timestamp_ns for m in self.held.values())) / 1e9)

    async def stop(self) -> None:
        """Stop taking records; :meth:`chunks` ends once the buffer is drained (what the
        agent has not handed over stays uncommitted and is read again on restart)."""
        self._stopping = True
        self._stop_event.set()
        self._wake.set()
        self._room.set()
        for task in list(self._retries):
            task.cancel()

    async def close(self) -> None:
        """Commit what was acked and stop the faust app (after the worker settled)."""
        await self._close_probe()
        if not self._started:
            return
        self._started = False
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.app.consumer.commit(), 10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.app.stop(), 30)

    async def _close_probe(self) -> None:
        client, self._probe_client = self._probe_client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def lag(self) -> dict[tuple[str, int], int]:
        """Records not yet committed per assigned partition (highwater - committed)."""
        consumer = self.app.consumer
        out: dict[tuple[str, int], int] = {}
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            committed = consumer._committed_offset.get(tp)
            if high is None:
                continue
            out[(tp.topic, tp.partition)] = max(0, int(high) - int(committed or 0))
        return out

    async def probe(self, within_s: float = 5.0) -> str:
        """Ask the broker for the topic's metadata; ``""`` when it answered, else why not
        (kept in :attr:`broker_error` for /readyz)."""
        try:
            # A small client of our own, in this loop (faust's consumer runs in a thread
            # with its own loop).
            if self._probe_client is None:
                from aiokafka import AIOKafkaClient

                self._probe_client = AIOKafkaClient(
                    bootstrap_servers=self.settings.kafka_bootstrap.split(","),
                    client_id="auditlog-probe", request_timeout_ms=int(within_s * 1000),
                )  # fmt: skip
                await asyncio.wait_for(self._probe_client.bootstrap(), within_s)
            await asyncio.wait_for(self._probe_client.fetch_all_metadata(), within_s)
            self.broker_error = ""
        except Exception as exc:
            self.broker_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if self._probe_client is not None and not self._probe_client.cluster.brokers():
                await self._close_probe()  # never bootstrapped: start over next time
        if self.metrics is not None:
            self.metrics.source_up.labels(self.kind).set(0 if self.broker_error else 1)
        return self.broker_error
