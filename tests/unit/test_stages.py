"""pipeline.stages: validate, enrich, deduplicate (pure)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.stages import (
    Dead,
    Deduplicator,
    Limits,
    Message,
    Pending,
    Valid,
    defer_batch,
    pending_tenant,
    process,
)
from schemas.ids import (
    IDEMPOTENCY_HEADER,
    id_from_key,
    msg_id_for,
    new_uuid7,
    subject_tenant,
    tenant_subject,
    uuid7_from,
)
from tests.hostile import HOSTILE
from tests.support.events import README_EVENT

BASE_TENANT = json.loads(README_EVENT)["tenant_id"]

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
    doc.update(id=str(eid), occurred_at="2025-03-04T05:06:07+02:00", action="User.Login")
    out = process(msg(json.dumps(doc).encode(), stream_seq=1, timestamp_ns=TS_NS), NOW)
    assert isinstance(out, Valid)
    assert out.event.id == eid
    assert out.event.occurred_at == datetime(2025, 3, 4, 3, 6, 7, tzinfo=UTC)
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


class _WindowOracle:
    """The window as first written, key by key over an insertion-ordered dict: what
    :class:`Deduplicator`'s set operations must answer exactly."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.seen: dict[tuple[str, int], None] = {}

    def remember_keys(self, keys: list[tuple[str, int]]) -> None:
        self.seen.update(dict.fromkeys(keys))
        for key in list(self.seen)[: max(0, len(self.seen) - self.capacity)]:
            del self.seen[key]

    def split(self, keys: list[tuple[str, int]]) -> tuple[list[int], list[int]]:
        fresh, dupes, batch = [], [], set()
        for i, key in enumerate(keys):
            if key in batch or key in self.seen:
                dupes.append(i)
            else:
                batch.add(key)
                fresh.append(i)
        return fresh, dupes


class _Item:
    """What :meth:`Deduplicator.split` reads of a Valid: its prepared key."""

    def __init__(self, key: tuple[str, int]) -> None:
        self.prepared = self
        self.key = key


_keys = st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 9)), max_size=12)


@settings(max_examples=500, deadline=None)
@given(capacity=st.integers(0, 8),
       ops=st.lists(st.tuples(st.booleans(), _keys), max_size=30))  # fmt: skip
def test_deduplicator_answers_as_the_key_by_key_window(capacity, ops) -> None:
    """Any sequence of splits and remembers (repeats inside a call, keys remembered again,
    forgotten and remembered anew, capacity 0; a split that dropped nothing remembered
    unchecked, ``new=True``, as the worker does after storing it): the same fresh and
    duplicate items, in input order, and the same keys remembered, as the key-by-key
    dict window."""
    d, oracle = Deduplicator(capacity), _WindowOracle(capacity)
    for remember, keys in ops:
        if remember:
            d.remember_keys(keys)
            oracle.remember_keys(keys)
        else:
            items = [_Item(k) for k in keys]
            fresh, dupes, fresh_keys = d.split_keys(items)  # type: ignore[arg-type]
            want_fresh, want_dupes = oracle.split(keys)
            assert fresh == [items[i] for i in want_fresh]
            assert dupes == [items[i] for i in want_dupes]
            assert fresh_keys == [keys[i] for i in want_fresh]
            assert d.split(items) == (fresh, dupes)  # type: ignore[arg-type]
            if not dupes and keys and keys[0][1] % 2:  # stored, as the worker remembers them
                d.remember_keys(fresh_keys, new=True)
                oracle.remember_keys(keys)
        assert len(d) == len(oracle.seen) <= capacity
        for tenant, n in oracle.seen:
            assert d.seen(tenant, uuid.UUID(int=n))
        assert sum(map(len, d._order)) == len(d)  # no stale entries behind


# -- hostile input: process() ends every message as Valid or Dead, never raises ------------
DEAD_REASONS = {"malformed_json", "invalid_field", "missing_field", "unknown_field",
                "unknown_enum", "too_large", "too_deep", "tenant_mismatch",
                "occurred_at_out_of_range", "internal_error"}  # fmt: skip
_header_text = st.text(max_size=80) | st.sampled_from(["", "not-a-uuid", str(uuid.UUID(int=7))])


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=HOSTILE,
    headers=st.none() | st.dictionaries(
        st.sampled_from(["Nats-Msg-Id", IDEMPOTENCY_HEADER, "X-Other"]), _header_text),
    subject=st.sampled_from(["", "audit.events", "audit.events.acme",
                             "audit.events.7e4e4e93-94ec-45bd-87ce-88ce3f689e3c", "other"]),
    seq=st.integers(0, 2**64 - 1),
    ts=st.integers(0, 2**63 - 1),
)  # fmt: skip
def test_process_never_raises(raw, headers, subject, seq, ts) -> None:
    m = msg(raw, headers=headers, subject=subject, stream_seq=seq, timestamp_ns=ts)
    out = process(m, NOW)
    assert isinstance(out, Valid | Dead) and out.msg is m
    if isinstance(out, Dead):
        assert out.reason in DEAD_REASONS and out.message
        return
    # A Valid event is storable as prepared: UTF-8 text without NUL, in the accepted range.
    for value in out.prepared.values:
        if isinstance(value, str):
            assert "\x00" not in value
            value.encode("utf-8")
    ev = out.event
    assert ev.received_at is not None and ev.occurred_at is not None
    assert ev.received_at - timedelta(days=367) <= ev.occurred_at
    assert ev.occurred_at <= ev.received_at + timedelta(minutes=16)


def test_unexpected_exception_becomes_internal_error_dead_letter() -> None:
    # A source timestamp beyond datetime's range makes enrich raise OverflowError.
    out = process(msg(README_EVENT, stream_seq=1, timestamp_ns=10**30), NOW)
    assert isinstance(out, Dead) and out.reason == "internal_error"
    assert out.stage == "process" and "OverflowError" in out.message


def test_tenant_bound_subject_must_match_the_event() -> None:
    ok = process(msg(README_EVENT, subject=tenant_subject("audit.events", BASE_TENANT)), NOW)
    assert isinstance(ok, Valid)
    other = process(msg(README_EVENT, subject="audit.events.someone-else"), NOW)
    assert isinstance(other, Dead) and other.reason == "tenant_mismatch"
    assert other.field == "tenant_id" and "someone-else" in other.message
    assert subject_tenant("audit.events", "audit.events.acme~eu") == "acme.eu"
    assert tenant_subject("audit.events", "acme.eu") == "audit.events.acme~eu"
    assert subject_tenant("audit.events", "audit.events") is None


@pytest.mark.parametrize(
    ("occurred", "ok"),
    [
        ("0001-01-01T00:00:00Z", False),
        ("1900-01-01T00:00:00Z", False),
        ("9999-12-31T23:59:59Z", False),
        ("2025-11-27T12:00:00Z", True),  # 364 days before NOW
        ("2024-11-20T12:00:00Z", False),  # 371 days before
        ("2026-11-26T12:10:00Z", True),  # 10 minutes ahead
        ("2026-11-26T12:20:00Z", False),  # 20 minutes ahead (skew 15 + grace 1)
    ],
)
def test_occurred_at_is_bounded_around_received_at(occurred: str, ok: bool) -> None:
    doc = json.loads(README_EVENT)
    doc["occurred_at"] = occurred
    out = process(msg(json.dumps(doc).encode()), NOW)  # no source time: received = NOW
    if ok:
        assert isinstance(out, Valid)
    else:
        assert isinstance(out, Dead) and out.reason == "occurred_at_out_of_range"
        assert out.field == "occurred_at" and "AUDIT_MAX_" in out.message


def test_a_backlog_never_turns_a_valid_event_dead() -> None:
    # received_at is when JetStream stored it, not when the worker reads it a year later.
    doc = json.loads(README_EVENT)
    doc["occurred_at"] = "2025-11-24T15:00:00Z"
    later = NOW + timedelta(days=500)
    assert isinstance(process(msg(json.dumps(doc).encode(), timestamp_ns=TS_NS), later), Valid)


def test_raised_limits_import_older_history() -> None:
    doc = json.loads(README_EVENT)
    doc["occurred_at"] = "2019-03-04T05:06:07Z"
    raw = json.dumps(doc).encode()
    assert isinstance(process(msg(raw), NOW), Dead)
    wide = Limits(max_age=timedelta(days=365 * 10))
    assert isinstance(process(msg(raw), NOW, wide), Valid)


def test_msg_id_is_per_tenant() -> None:
    eid = uuid.uuid4()
    assert msg_id_for("a", eid) != msg_id_for("b", eid)


_UUID_FORMS = st.uuids().flatmap(lambda u: st.sampled_from([
    str(u), u.hex, f"{{{u}}}", f"urn:uuid:{u}", str(u).upper(), f"uuid:{u.hex}",
    str(u).replace("-", "", 2), f"{u}x", str(u)[:-1],
]))  # fmt: skip


@settings(max_examples=500)
@given(st.text(max_size=12), st.one_of(st.text(max_size=48), _UUID_FORMS))
def test_a_key_names_the_id_it_always_named(tenant: str, key: str) -> None:
    """The id of an idempotency key is frozen (a retry after an upgrade must name the same
    event): a key uuid.UUID() reads is the id, any other the UUIDv5 under the tenant."""
    try:
        expected = uuid.UUID(key)
    except ValueError:
        expected = uuid.uuid5(
            uuid.UUID("5a0b7a7e-3c1f-4d55-9a8e-6f1f2f0c0a11"), f"{tenant}\x1f{key}"
        )
    assert id_from_key(tenant, key) == expected


# -- deferred preparing (Pending) --------------------------------------------------------

_TENANT_TEXT = st.text(max_size=24) | st.sampled_from([BASE_TENANT, "acme", "t\\x", 'a"b'])


@st.composite
def _tenant_first(draw: st.DrawFn) -> bytes:
    """An event re-serialized with ``tenant_id`` first, as compact producers write it:
    any tenant text, escaped or raw UTF-8, with other spacing, or a second tenant key."""
    doc = {k: v for k, v in json.loads(README_EVENT).items() if k != "tenant_id"}
    tenant = draw(_TENANT_TEXT)
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=draw(st.booleans()))[1:]
    head = json.dumps(tenant, ensure_ascii=draw(st.booleans()))
    again = draw(st.sampled_from(["", ',"tenant_id":"other"', ',"tenant\\u005fid":"other"']))
    colon = draw(st.sampled_from([":", ": ", " :"]))
    return f'{{"tenant_id"{colon}{head},{body[:-1]}{again}}}'.encode("utf-8", "surrogatepass")


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_tenant_first() | HOSTILE, seq=st.integers(0, 2**64 - 1),
       ts=st.integers(0, 2**63 - 1), later_s=st.integers(0, 10**6))  # fmt: skip
def test_a_deferred_message_prepares_later_as_it_would_have_at_once(raw, seq, ts, later_s) -> None:
    # The worker prepares a Pending when a flush takes it, seconds (or, with a broker
    # outage, days) after it arrived: the result must not depend on when.
    m = msg(raw, stream_seq=seq, timestamp_ns=ts)
    (item,) = defer_batch([m], NOW)
    at_once = process(m, NOW)
    if not isinstance(item, Pending):
        # prepared at once, as before (without a position its id is random: not compared)
        assert type(item) is type(at_once) and item.msg is m
        return
    assert item.msg is m and item.tenant_id
    assert process(m, NOW + timedelta(seconds=later_s)) == at_once
    if isinstance(at_once, Valid) and at_once.prepared.tenant_id != item.tenant_id:
        # The guess may differ only where the payload names a tenant twice (the decoder
        # keeps the last; the worker flushes such an event in its real tenant's bucket).
        assert raw.count(b'"tenant') >= 2 or b"\\u" in raw


def test_what_may_wait_and_what_is_prepared_at_once() -> None:
    compact = b'{"tenant_id":"acme","action":"user.login"}'
    assert pending_tenant(msg(compact, stream_seq=1, timestamp_ns=TS_NS)) == "acme"
    assert pending_tenant(msg(b'{"tenant_id":"\xc3\xa9t\xc3\xa9"}', stream_seq=1,
                              timestamp_ns=TS_NS)) == "été"  # fmt: skip
    for waits_not in (
        msg(compact, stream_seq=1),  # no broker time: `now` would be its received_at
        msg(compact, timestamp_ns=TS_NS),  # no position: `now` may make its id
        msg(b'{"action":"user.login","tenant_id":"acme"}', stream_seq=1, timestamp_ns=TS_NS),
        msg(b'{"tenant_id":"a\\u0063me"}', stream_seq=1, timestamp_ns=TS_NS),  # escaped
        msg(b'{"tenant_id":""}', stream_seq=1, timestamp_ns=TS_NS),
        msg(b'{"tenant_id":"\xff"}', stream_seq=1, timestamp_ns=TS_NS),  # not UTF-8
        msg(b'{"tenant_id":"acme', stream_seq=1, timestamp_ns=TS_NS),  # unterminated
    ):
        assert pending_tenant(waits_not) is None
        assert not isinstance(defer_batch([waits_not], NOW)[0], Pending)
