"""pipeline.stages: validate, enrich, deduplicate (pure)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from pipeline.stages import (
    Dead,
    Deduplicator,
    Message,
    Valid,
    id_from_key,
    new_uuid7,
    process,
    uuid7_from,
)
from tests.conftest import README_EVENT

NOW = datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=UTC)
TS_NS = 1_764_000_000_123_456_789  # 2025-11-24T16:00:00.123456789Z


def msg(data: bytes = README_EVENT, **kw: object) -> Message:
    return Message(data=data, **kw)  # type: ignore[arg-type]


def test_invalid_message_becomes_dead_with_reason() -> None:
    out = process(msg(b'{"tenant_id": 5}'), NOW)
    assert isinstance(out, Dead)
    assert out.stage == "validate" and out.reason == "invalid_field" and out.field == "tenant_id"


def test_enrich_defaults_times_from_the_stream_timestamp() -> None:
    out = process(msg(stream_seq=7, timestamp_ns=TS_NS), NOW)
    assert isinstance(out, Valid)
    ev = out.event
    assert ev.received_at == datetime(2025, 11, 24, 16, 0, 0, 123456, tzinfo=UTC)
    assert ev.occurred_at == ev.received_at  # defaults to received_at
    assert ev.id is not None and ev.id.version == 7


def test_enrich_without_stream_uses_the_clock() -> None:
    out = process(msg(), NOW)
    assert isinstance(out, Valid)
    assert out.event.received_at == NOW and out.event.occurred_at == NOW


def test_client_occurred_at_and_id_are_kept_and_action_lowercased() -> None:
    doc = json.loads(README_EVENT)
    eid = uuid.uuid4()
    doc.update(id=str(eid), occurred_at="2019-03-04T05:06:07+02:00", action="User.Login")
    out = process(msg(json.dumps(doc).encode(), stream_seq=1, timestamp_ns=TS_NS), NOW)
    assert isinstance(out, Valid)
    assert out.event.id == eid
    assert out.event.occurred_at == datetime(2019, 3, 4, 3, 6, 7, tzinfo=UTC)
    assert out.event.occurred_at.tzinfo == UTC
    assert out.event.action == "user.login"


def test_redelivery_gets_the_same_derived_id() -> None:
    a = process(msg(stream_seq=42, timestamp_ns=TS_NS), NOW)
    b = process(msg(stream_seq=42, timestamp_ns=TS_NS), datetime.now(UTC))
    c = process(msg(stream_seq=43, timestamp_ns=TS_NS), NOW)
    assert isinstance(a, Valid) and isinstance(b, Valid) and isinstance(c, Valid)
    assert a.event.id == b.event.id != c.event.id
    assert a.prepared.canonical == b.prepared.canonical


def test_nats_msg_id_header_is_the_event_id() -> None:
    key = str(uuid.uuid4())
    out = process(msg(headers={"Nats-Msg-Id": key}, stream_seq=1, timestamp_ns=TS_NS), NOW)
    assert isinstance(out, Valid) and str(out.event.id) == key
    out2 = process(msg(headers={"Nats-Msg-Id": "order-42"}, stream_seq=2), NOW)
    assert isinstance(out2, Valid)
    assert out2.event.id == id_from_key("7e4e4e93-94ec-45bd-87ce-88ce3f689e3c", "order-42")
    assert id_from_key("t1", "k") != id_from_key("t2", "k")  # keys are per tenant


def test_uuid7_layout() -> None:
    u = uuid7_from(1_700_000_000_000, bytes(range(10)))
    assert u.version == 7 and u.variant == uuid.RFC_4122
    assert u.int >> 80 == 1_700_000_000_000
    assert new_uuid7(NOW, bytes(10)).int >> 80 == int(NOW.timestamp() * 1000)


def test_deduplicator_window_and_batch_repeats() -> None:
    d = Deduplicator(capacity=2)
    items = [process(msg(stream_seq=i, timestamp_ns=TS_NS), NOW) for i in (1, 2, 1)]
    valid = [i for i in items if isinstance(i, Valid)]
    fresh, dupes = d.split(valid)
    assert [v.msg.stream_seq for v in fresh] == [1, 2]
    assert [v.msg.stream_seq for v in dupes] == [1]
    d.remember([(v.event.tenant_id, v.event.id) for v in fresh])  # type: ignore[misc]
    again, dupes = d.split(valid[:1])
    assert again == [] and len(dupes) == 1
    third = process(msg(stream_seq=3, timestamp_ns=TS_NS), NOW)
    assert isinstance(third, Valid)
    d.remember([(third.event.tenant_id, third.event.id)])  # type: ignore[list-item]
    assert len(d) == 2  # capacity: the oldest (seq 1) is forgotten
    assert not d.seen(valid[0].event.tenant_id, valid[0].event.id)  # type: ignore[arg-type]
