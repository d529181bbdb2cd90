"""pipeline.source_kafka without a broker: record conversion under hostile input, stable
ids, and the in-order ack bookkeeping (a stand-in faust App records what is acked; the
broker-facing behaviour is tested against tansu in tests/integration/test_source_kafka.py)."""

from __future__ import annotations

import asyncio
from collections import namedtuple
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.settings import Settings
from pipeline.source_kafka import MAX_HEADER_VALUE, KafkaSource, to_message
from pipeline.stages import Dead, Valid, process
from tests.hostile import HOSTILE
from tests.support.events import README_EVENT

NOW = datetime(2026, 6, 1, tzinfo=UTC)
NOW_NS = int(NOW.timestamp() * 1e9)
TP = namedtuple("TP", "topic partition")


@dataclass
class Record:
    """The fields of a faust ConsumerMessage the source reads."""

    topic: str = "audit.events"
    partition: int = 0
    offset: int = 0
    timestamp: float | None = NOW.timestamp()
    timestamp_type: int = 0
    headers: Any = None
    value: Any = README_EVENT

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


header_values = st.none() | st.binary(max_size=5000) | st.text(max_size=50).map(str.encode)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=st.none() | HOSTILE,
    headers=st.none() | st.lists(st.tuples(st.text(max_size=30), header_values), max_size=8),
    partition=st.integers(0, 10_000),
    offset=st.integers(0, 2**63 - 1),
    timestamp=st.none() | st.floats(-1e12, 1e11, allow_nan=False),
    timestamp_type=st.sampled_from([-1, 0, 1]),
)  # fmt: skip
def test_any_record_becomes_a_message_that_process_settles(
    value, headers, partition, offset, timestamp, timestamp_type
) -> None:
    rec = Record(partition=partition, offset=offset, timestamp=timestamp,
                 timestamp_type=timestamp_type, headers=headers, value=value)  # fmt: skip
    msg = to_message(rec, NOW_NS)
    assert msg.origin == f"audit.events/{partition}" and msg.stream_seq == offset
    assert msg.ack == f"audit.events/{partition}:{offset}"
    assert all(len(v) <= MAX_HEADER_VALUE for v in (msg.headers or {}).values())
    # received_at is the broker's LogAppendTime, else when the worker read it
    if timestamp_type != 1 or not timestamp or timestamp <= 0:
        assert msg.timestamp_ns == NOW_NS
    out = process(msg, NOW)
    assert isinstance(out, Valid | Dead)
    if isinstance(out, Dead):
        assert out.reason and out.message


@given(partition=st.integers(0, 50), offset=st.integers(0, 10**9))
def test_a_redelivered_record_gets_the_same_id_and_others_differ(partition, offset) -> None:
    def event_id(**kw: Any) -> Any:
        out = process(to_message(Record(**kw), NOW_NS), NOW)
        assert isinstance(out, Valid)
        return out.event.id

    first = event_id(partition=partition, offset=offset)
    assert event_id(partition=partition, offset=offset) == first  # redelivered
    assert event_id(partition=partition + 1, offset=offset) != first
    assert event_id(partition=partition, offset=offset + 1) != first
    assert event_id(partition=partition, offset=offset, topic="other.topic") != first


# -- in-order acks ----------------------------------------------------------------------
@dataclass
class StandInEvent:
    message: Record
    acked: list[tuple[int, int]]

    def ack(self) -> bool:
        self.acked.append((self.message.partition, self.message.offset))
        return True


@dataclass
class StandInConsumer:
    _paused_partitions: set = field(default_factory=set)

    def pause_partitions(self, tps: Any) -> None:
        self._paused_partitions |= set(tps)

    def resume_partitions(self, tps: Any) -> None:
        self._paused_partitions -= set(tps)


class StandInApp:
    """What KafkaSource asks of a faust App, without a broker."""

    def __init__(self) -> None:
        self.consumer = StandInConsumer()
        self.on_partitions_revoked = self

    def topic(self, *args: Any, **kw: Any) -> str:
        return "topic"

    def agent(self, *args: Any, **kw: Any) -> Any:
        return lambda fn: fn

    def connect(self, fn: Any) -> None:
        pass

    async def start(self) -> None:
        pass


def deliver(source: KafkaSource, records: list[Record], acked: list) -> list:
    msgs = []
    for rec in records:
        msg = to_message(rec, NOW_NS)
        source._deliver(msg, StandInEvent(rec, acked), rec.tp)
        msgs.append(msg)
    return msgs


@settings(max_examples=300, deadline=None)
@given(data=st.data(), sizes=st.lists(st.integers(1, 12), min_size=1, max_size=3))
def test_acks_reach_faust_in_partition_order_whatever_the_settle_order(data, sizes) -> None:
    async def run() -> None:
        source = KafkaSource(
            Settings(kafka_bootstrap="x:1"), 10_000, app=StandInApp(), wait_for_broker=False
        )
        await source.start()
        acked: list[tuple[int, int]] = []
        records = [Record(partition=p, offset=o) for p, n in enumerate(sizes) for o in range(n)]
        msgs = deliver(source, records, acked)
        order = data.draw(st.permutations(msgs))
        held = set(data.draw(st.lists(st.sampled_from(msgs), max_size=3)))
        for m in order:
            if m in held:
                await source.nak([m], 3600)
            else:
                await source.ack([m])
            # Invariant: per partition, what reached faust is a prefix of its offsets,
            # and never includes a held record or anything after it.
            for p, n in enumerate(sizes):
                got = [o for q, o in acked if q == p]
                assert got == list(range(len(got)))
                first_held = min((h.stream_seq for h in held if h.origin.endswith(f"/{p}")),
                                 default=n)  # fmt: skip
                assert len(got) <= first_held
        assert sorted(source.paused()) == sorted({h.origin for h in held})
        await source.ack(list(held))  # the held ones are settled at last
        assert sorted(acked) == sorted((r.partition, r.offset) for r in records)
        assert source.paused() == [] and not source.held
        await source.stop()

    asyncio.run(run())


def test_revoked_partitions_are_forgotten() -> None:
    async def run() -> None:
        source = KafkaSource(
            Settings(kafka_bootstrap="x:1"), 10_000, app=StandInApp(), wait_for_broker=False
        )
        await source.start()
        acked: list[tuple[int, int]] = []
        msgs = deliver(source, [Record(partition=p, offset=o) for p in (0, 1)
                                for o in range(3)], acked)  # fmt: skip
        await source.nak([msgs[0]], 3600)  # partition 0 paused
        await source._on_revoked(None, [TP("audit.events", 0)])
        assert source.paused() == []
        assert sorted(source.held) == [f"audit.events/1:{o}" for o in range(3)]
        await source.ack(msgs)  # late acks of the revoked partition go nowhere
        assert acked == [(1, 0), (1, 1), (1, 2)]
        await source.stop()

    asyncio.run(run())


@given(before=st.lists(st.booleans(), max_size=6), after=st.lists(st.booleans(), max_size=12))
def test_the_broker_answering_after_two_failed_probes_in_a_row_ends_the_source(
    before: list[bool], after: list[bool]
) -> None:
    """Probe outcomes (True: the broker answered) before and after the consumer started:
    the source ends (its chunks end, a reason is given) exactly at the first answer after
    two or more failed probes in a row of the running consumer; never otherwise."""

    async def run() -> None:
        source = KafkaSource(
            Settings(kafka_bootstrap="x:1"), 10_000, app=StandInApp(), wait_for_broker=False
        )

        def probe(answered: bool) -> None:
            source.broker_problem = None if answered else "KafkaConnectionError"
            source._after_probe()

        for answered in before:  # waiting for the broker at start: not counted
            probe(answered)
        await source.start()
        failed, expected_end = 0, None
        for i, answered in enumerate(after):
            if answered and failed >= 2 and expected_end is None:
                expected_end = i
            failed = 0 if answered else failed + 1
        for i, answered in enumerate(after):
            probe(answered)
            ended = source.restart_reason is not None
            assert ended == (expected_end is not None and i >= expected_end), (after, i)
        if expected_end is not None:
            assert "failed probes" in (source.restart_reason or "")
            assert [chunk async for chunk in source.chunks()] == []  # ended, nothing held
        await source.stop()

    asyncio.run(run())
