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
  source never hands it a hole: the rule is :class:`pipeline.partition_acks.PartitionAcks`,
  pure and property-tested; ``tests/integration/test_source_kafka.py`` checks the
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
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import msgspec

from infra.metrics import Metrics
from infra.settings import Settings
from pipeline.deliveries import Deliveries
from pipeline.partition_acks import PartitionAcks
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
# Failed broker probes in a row after which the broker's return ends this source, so that
# the runtime starts a new one (a new faust App and consumer). Seen in CI: after a broker
# restart that lost the group (UnknownMemberIdError on commit, "will rejoin"), faust's
# consumer stored nothing more for the 90 s the test waited, with the broker answering.
# A fresh consumer joins the group afresh; what the old one held unacked is read again
# (storage stays exactly-once). One failed probe (a slow answer) does not count.
REJOIN_AFTER_FAILED_PROBES = 2


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

    Thin I/O around :class:`~pipeline.partition_acks.PartitionAcks` (what may be acked to
    faust) and :class:`~pipeline.deliveries.Deliveries` (what is held and buffered).

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
        self._deliveries = Deliveries()
        self.held = self._deliveries.held
        # Per partition, in delivery order, until acked to faust (keyed by faust TP).
        self._acks: PartitionAcks[Any, Any] = PartitionAcks()
        self._stop_event = asyncio.Event()
        self._wait_for_broker = wait_for_broker
        self._retries: set[asyncio.Task[None]] = set()
        # Why the broker did not answer the last probe (None: it did), for /readyz.
        self.broker_problem: str | None = None
        self._failed_probes = 0  # in a row, while the consumer runs
        # Set when the broker's return ended this source: why the runtime starts another.
        self.restart_reason: str | None = None
        self._started = False
        self._probe_client: Any = None
        topic = self.app.topic(settings.kafka_topic, key_type=bytes, value_type=bytes,
                               key_serializer="raw", value_serializer="raw")  # fmt: skip
        self.app.agent(topic, name="audit-ingest")(self._agent)
        self.app.on_partitions_revoked.connect(self._on_revoked)

    # -- the faust side -------------------------------------------------------------------
    async def _agent(self, stream: Any) -> None:
        """The faust agent: hand each record to the worker, acks left to :meth:`ack`."""
        deliveries = self._deliveries
        async for event in stream.noack().events():
            while not deliveries.stopping and (
                len(self.held) >= self.max_inflight or deliveries.held_bytes >= self.max_bytes
            ):
                deliveries.room.clear()
                await deliveries.room.wait()
            if deliveries.stopping:
                continue  # not acked: read again after the restart
            try:
                msg = to_message(event.message, time.time_ns())
            except Exception as exc:  # never let one record end the agent
                log.error("kafka record not readable (left unacked, redelivered on restart): "
                          "%r", exc)  # fmt: skip
                continue
            self._deliver(msg, event, event.message.tp)

    def _deliver(self, msg: Message, event: Any, tp: Any) -> None:
        self._acks.delivered(msg.ack, tp, event)
        self._deliveries.deliver(msg)

    async def _on_revoked(self, app: Any, revoked: Iterable[Any], **_: Any) -> None:
        gone = {(tp.topic, tp.partition) for tp in revoked}
        if not gone:
            return

        def revoked_tp(tp: Any) -> bool:
            return tp is not None and (tp.topic, tp.partition) in gone

        self._deliveries.unbuffer(lambda m: revoked_tp(self._acks.partition_of(m.ack)))
        forgotten = self._acks.revoke([tp for tp in self._acks.partitions() if revoked_tp(tp)])
        self._deliveries.settle([self.held[t] for t in forgotten if t in self.held])
        self._update_paused()
        log.info("kafka partitions revoked: %s", sorted(f"{t}/{p}" for t, p in gone))

    def _ack_to_faust(self, events: list[Any]) -> None:
        """Ack released records to faust (its next commit includes their offsets)."""
        for event in events:
            try:
                event.ack()
            except Exception as exc:  # the partition moved away meanwhile
                log.debug("ack of a record not taken (its partition moved?): %r", exc)

    # -- the worker side ------------------------------------------------------------------
    async def start(self) -> None:
        """Wait for the broker (a warning per try, backoff to 30 s; :meth:`stop` ends the
        wait), then start the faust app (consumer, producer, the agent); joining the group
        follows. A broker that is down at start is an outage, not a failure."""
        delay = 0.5
        while (self._wait_for_broker and not self._deliveries.stopping
               and (problem := await self.probe_broker()) is not None):  # fmt: skip
            log.warning("kafka broker %s unreachable (%s); retrying in %.0fs",
                        self.settings.kafka_bootstrap, problem, delay)  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), delay)
            delay = min(delay * 2, 30.0)
        if self._deliveries.stopping:
            return
        self._started = True  # from here on, close() stops the app whatever happens
        await self.app.start()
        log.info("kafka source: topic %s, group %s, bootstrap %s", self.settings.kafka_topic,
                 self.settings.kafka_group, self.settings.kafka_bootstrap)  # fmt: skip

    def chunks(self) -> AsyncIterator[list[Message]]:
        """Yield records in chunks of up to ``CHUNK_ITEMS``, each at most ``CHUNK_WAIT_S``
        after its first record arrived, until :meth:`stop`."""
        return self._deliveries.chunks(CHUNK_ITEMS, CHUNK_WAIT_S)

    async def ack(self, msgs: list[Message]) -> None:
        """Settle ``msgs``: each is acked to faust (whose next commit includes its offset)
        once every record delivered before it from its partition is settled. Never raises."""
        self._deliveries.settle(msgs)
        paused = self._acks.paused()
        self._ack_to_faust(self._acks.settle(m.ack for m in msgs))
        if self._acks.paused() != paused:
            self._update_paused()

    async def nak(self, msgs: list[Message], delay_s: float) -> None:
        """Hold ``msgs`` (never acked, never skipped): pause their partitions and deliver
        them again after ``delay_s``. Never raises."""
        if not msgs:
            return
        self._acks.hold(m.ack for m in msgs)
        self._update_paused()
        task = asyncio.create_task(self._again(msgs, delay_s), name="kafka-redeliver")
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _again(self, msgs: list[Message], delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        if self._deliveries.stopping:
            return
        again = self._deliveries.again(
            msgspec.structs.replace(m, delivered=m.delivered + 1) for m in msgs
        )
        if again and self.metrics is not None:
            self.metrics.redeliveries.labels(self.kind).inc(again)

    def _update_paused(self) -> None:
        consumer = self.app.consumer if self._started else None
        paused = set(self._acks.paused())
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
        return sorted(f"{tp.topic}/{tp.partition}" for tp in self._acks.paused())

    def oldest_held_age_s(self, now_ns: int) -> float:
        """Seconds since the oldest held record was received (0 if none)."""
        return self._deliveries.oldest_held_age_s(now_ns)

    async def stop(self) -> None:
        """Stop taking records; :meth:`chunks` ends once the buffer is drained (what the
        agent has not handed over stays uncommitted and is read again on restart)."""
        self._end()

    def _end(self) -> None:
        """:meth:`stop`'s work (also done when the broker's return ends this source)."""
        self._deliveries.stop()
        self._stop_event.set()
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

    def _after_probe(self) -> None:
        """The broker answers again after :data:`REJOIN_AFTER_FAILED_PROBES` or more failed
        probes in a row while the consumer ran: end this source (as :meth:`stop` does, so
        the worker settles what it holds), with :attr:`restart_reason` saying why; the
        runtime then starts a new worker and source."""
        if self.broker_problem is not None:
            self._failed_probes += self._started
            return
        failed, self._failed_probes = self._failed_probes, 0
        if failed >= REJOIN_AFTER_FAILED_PROBES and not self._deliveries.stopping:
            self.restart_reason = (f"the broker answers again after {failed} failed probes: "
                                   "a new consumer joins the group afresh")  # fmt: skip
            log.warning("kafka source: %s", self.restart_reason)
            self._end()

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

    async def probe_broker(self, within_s: float = 5.0) -> str | None:
        """Ask the broker for the topic's metadata: None when it answered, else why not
        (also kept in :attr:`broker_problem`, for /readyz)."""
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
            self.broker_problem = None
        except Exception as exc:
            self.broker_problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if self._probe_client is not None and not self._probe_client.cluster.brokers():
                await self._close_probe()  # never bootstrapped: start over next time
        self._after_probe()
        if self.metrics is not None:
            up = self.broker_problem is None
            self.metrics.source_up.labels(self.kind).set(1 if up else 0)
        return self.broker_problem
