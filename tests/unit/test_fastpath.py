"""pipeline._fastpath (compiled) against the pure path (the oracle): identical results.

Both paths run on the same messages: hostile events (escapes, control characters,
non-ASCII, lone surrogates, huge numbers, every dead-letter reason), any headers, subjects
and source times. Every outcome must be equal: dead letters (reason, message, field,
stage) and prepared events (keys, times, canonical bytes, COPY row); per batch, the chain
hashes and both binary COPY buffers. The pure path's buffers are then decoded here
independently of both and checked against what schemas/README.md specifies: each row's
canonical bytes recomputed from its stored columns, each hash chained over them.

Without the extension these tests skip, except under CI (``CI=true``), where the
extension must be built (``make test`` installs with a C compiler present).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline import fastpath
from pipeline.chain import Prepared, month_of
from pipeline.copy_binary import HEADER, TRAILER
from pipeline.stages import Dead, Limits, Message, Pending, Valid, pending_tenant
from schemas import events
from schemas.canonical import canonical_bytes
from schemas.ids import IDEMPOTENCY_HEADER, tenant_subject
from schemas.rows import COLUMNS
from tests.hostile import HOSTILE, JSON_VALUES, camel_doc
from tests.support.events import README_EVENT

if fastpath.BUILT is None:
    if os.environ.get("CI") == "true":
        pytest.fail("CI: the C extension pipeline._fastpath is not built", pytrace=False)
    pytest.skip("the C extension pipeline._fastpath is not built", allow_module_level=True)

NOW = datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=UTC)
NOW_NS = 1_795_701_600_123_456_789  # 2026-11-26T12:00:00.123456789Z
LIMITS = Limits()
BASE = json.loads(README_EVENT)

# ---- hostile but mostly valid events -----------------------------------------------------
# Valid strings that are hard to write: escapes, control characters, non-ASCII, astral.
_ODD_VALID = st.sampled_from([
    '"', "\\", "\n\r\t\b\f", "\x01\x1f\x7f", "é", "日本語", "😀", "\u2028\u2029",
    "a\ufeffb", "</script>", "'\"\\/", "\U0010ffff", "x" * 300,
])  # fmt: skip
_ODD_INVALID = st.sampled_from(["\ud800", "\udfff", "\x00", "a\x00b", "ä" * 5000])
_ANY_CHAR = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
TEXT = st.one_of(st.text(_ANY_CHAR, max_size=20), _ODD_VALID)
NAME = st.one_of(st.text(_ANY_CHAR, min_size=1, max_size=12), _ODD_VALID)
_GOOD_TENANTS = ["acme", "t-1", "7e4e4e93-94ec-45bd-87ce-88ce3f689e3c", "A.b_c:d@e-f", "x" * 128]
REF = st.fixed_dictionaries({"type": NAME, "id": NAME}, optional={"display_name": TEXT})
NUMBERS = st.sampled_from([10**40, -(10**40), 2**63, 2**64, 1e308, 1e-300, -0.0, 0.1, 1e16])
META = st.dictionaries(TEXT, st.one_of(JSON_VALUES, NUMBERS), max_size=4)
# Valid values of each field, and a few invalid ones (at most one field of an event is
# drawn from those, so most events are valid and each invalid one fails in one place).
FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "tenant_id": (st.sampled_from(_GOOD_TENANTS),
                  st.sampled_from(["", "-x", "a b", "x" * 129, "acmé", 5])),
    "action": (st.sampled_from(["user.login", "User.LOGIN", "A_b:c-d.E", "a" * 128]),
               st.sampled_from(["", ".x", "a b", "a" * 129, "ünï", None])),
    "actor": (st.fixed_dictionaries(
                  {"type": st.sampled_from(["ACTOR_TYPE_USER", "ACTOR_TYPE_API_KEY"]), "id": NAME},
                  optional={"display_name": TEXT}),
              st.sampled_from([{"type": "ACTOR_TYPE_UNSPECIFIED", "id": "a"},
                               {"type": "ROBOT", "id": "a"}, {"type": "ACTOR_TYPE_USER"}])),
    "id": (st.uuids().map(str), st.just("not-a-uuid")),
    "category": (st.sampled_from(["CATEGORY_AUTH", "CATEGORY_DATA"]), st.just("CATEGORY_NOPE")),
    "severity": (st.sampled_from(["SEVERITY_INFO", "SEVERITY_SECURITY"]), st.just(7)),
    "primary_resource": (REF | st.none(), st.just({"type": "", "id": "x"})),
    "related_resources": (st.lists(REF, max_size=3), st.just([{"type": "t", "id": "i"}] * 33)),
    "description": (TEXT, st.just("d" * 4097)),
    "metadata": (META, st.just({"big": "m" * 17_000})),
    "changes": (st.none() | st.fixed_dictionaries({}, optional={
                    "old_value": META | st.none(), "new_value": META,
                    "changed_fields": st.lists(TEXT, max_size=3)}),
                st.just({"changed_fields": ["f"] * 257})),
    "occurred_at": (st.sampled_from([
        "2026-11-26T12:00:00Z", "2026-11-26T12:00:00.5Z", "2026-11-26T13:30:00+01:30",
        "2026-11-26T06:00:00.000001-05:59", "2025-11-27T12:00:00Z", "2026-11-26T12:10:00+00:00",
    ]), st.sampled_from([
        "2024-11-20T12:00:00Z", "2026-11-26T12:20:00Z", "0001-01-01T00:00:00+00:01",
        "9999-12-31T23:59:59-00:01", "2026-11-26T12:00:00", "2026-02-30T00:00:00Z", 5,
    ])),
    "ip": (TEXT, _ODD_INVALID), "user_agent": (TEXT, _ODD_INVALID),
    "request_id": (TEXT, _ODD_INVALID), "trace_id": (TEXT, _ODD_INVALID),
    "received_at": (st.just("2020-01-01T00:00:00Z"), st.just("yesterday")),
}  # fmt: skip
_REQUIRED = ("tenant_id", "action", "actor")


@st.composite
def event_docs(draw: st.DrawFn) -> dict[str, Any]:
    broken = draw(st.none() | st.none() | st.sampled_from([*FIELDS, "missing", "unknown"]))
    doc: dict[str, Any] = {}
    for key, (good, bad) in FIELDS.items():
        if key in _REQUIRED or key == broken or draw(st.integers(0, 2)):
            doc[key] = draw(bad if key == broken else good)
    if broken == "missing":
        del doc[draw(st.sampled_from(_REQUIRED))]
    elif broken == "unknown":
        doc["seq"] = 1
    return camel_doc(doc) if draw(st.integers(0, 9)) == 0 else doc


def _dumps(doc: Any, ascii_only: bool) -> bytes:
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


DOCS = st.builds(_dumps, event_docs(), st.booleans())  # lone surrogates: invalid UTF-8 if raw


@st.composite
def messages(draw: st.DrawFn) -> Message:
    data = draw(DOCS if draw(st.integers(0, 4)) else HOSTILE)  # mostly events, some anything
    tenant = draw(st.sampled_from(_GOOD_TENANTS))
    headers = draw(st.none() | st.dictionaries(
        st.sampled_from(["Nats-Msg-Id", IDEMPOTENCY_HEADER, "X-Other"]),
        st.sampled_from(["", "order-42", str(uuid.UUID(int=7)), "ключ"]), max_size=2))  # fmt: skip
    subject = draw(st.sampled_from(["", "audit.events", tenant_subject("audit.events", tenant),
                                    "audit.events.acme", "other"]))  # fmt: skip
    ts = draw(st.one_of(st.integers(NOW_NS - 10**15, NOW_NS + 10**11),
                        st.sampled_from([0, NOW_NS, -1999, 10**30, 2**63 - 1])))  # fmt: skip
    origin = draw(st.sampled_from(["", "", "audit.events/3"]))
    return Message(data=data, headers=headers, subject=subject, timestamp_ns=ts, origin=origin,
                   created_ns=draw(st.integers(-(2**40), 2**62)) if origin else 0,
                   stream_seq=draw(st.integers(1, 2**64 - 1)))  # fmt: skip


# ---- comparing outcomes ----------------------------------------------------------------
def outcome(item: Valid | Dead) -> tuple[Any, ...]:
    if isinstance(item, Dead):
        return ("dead", item.reason, item.message, item.field, item.stage)
    p = item.prepared
    return ("valid", p.tenant_id, p.id, p.occurred_us, p.received_us, p.canonical, p.row,
            p.seq_at, p.key)  # fmt: skip


def forget_names() -> None:
    events.KNOWN_TENANTS.clear()
    events.KNOWN_ACTIONS.clear()


def both(msgs: list[Message], warm: bool) -> tuple[list[Valid | Dead], list[Valid | Dead]]:
    """(compiled, pure) outcomes; ``warm``: the known-name caches filled first, so the
    compiled path runs its own code for every valid event (else it hands them over)."""
    forget_names()
    if warm:
        fastpath.pure_prepare_batch(msgs, NOW, LIMITS)
    compiled = fastpath.compiled_prepare_batch(msgs, NOW, LIMITS)
    pure = fastpath.pure_prepare_batch(msgs, NOW, LIMITS)
    return compiled, pure


def heads_for(items: list[Prepared], seed: int) -> dict[str, tuple[int, bytes]]:
    return {p.tenant_id: (seed % 1000, hashlib.sha256(p.tenant_id.encode()).digest())
            for p in items}  # fmt: skip


# ---- an independent reader of the binary COPY data --------------------------------------
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def read_copy(data: bytes, columns: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """Rows of PostgreSQL binary COPY data, decoded by each column's type in audit.events
    (as PostgreSQL would read them; JSON columns as their text)."""
    assert data.startswith(HEADER) and data.endswith(TRAILER)
    at, end = len(HEADER), len(data) - len(TRAILER)
    while at < end:
        (count,) = struct.unpack_from(">h", data, at)
        assert count == len(columns)
        at += 2
        row: dict[str, Any] = {}
        for name in columns:
            (size,) = struct.unpack_from(">i", data, at)
            at += 4
            raw = data[at : at + size] if size >= 0 else None
            at += max(size, 0)
            row[name] = decode_column(name, raw)
        yield row
    assert at == end


def decode_column(name: str, raw: bytes | None) -> Any:
    if raw is None:
        return None
    if name in ("occurred_at", "received_at"):
        return _PG_EPOCH + timedelta(microseconds=struct.unpack(">q", raw)[0])
    if name == "seq":
        return struct.unpack(">q", raw)[0]
    if name == "id":
        return uuid.UUID(bytes=raw)
    if name == "hash":
        return raw
    if name == "related_resources":  # jsonb: version 1, then the text
        assert raw[:1] == b"\x01"
        return raw[1:].decode()
    return raw.decode()


def check_against_the_spec(items: list[Prepared], heads: dict[str, tuple[int, bytes]],
                           by_month: dict[int, bytes]) -> None:  # fmt: skip
    """The pure path's COPY data, read back: every row's values, canonical bytes
    recomputed from its columns as an outside verifier does, hashes chained in order;
    each month's rows grouped by tenant (tenants in code-point order), each tenant's in
    batch order."""
    months = {m: read_copy(data, COLUMNS) for m, data in by_month.items()}
    state = dict(heads)
    for p in sorted(items, key=lambda p: p.tenant_id):  # stable: batch order per tenant
        row = next(months[month_of(p.occurred_us)])
        assert (row["tenant_id"], row["id"]) == (p.tenant_id, p.id)
        assert canonical_bytes(row) == p.canonical  # schemas/README.md, from the stored row
        seq, prev = state[p.tenant_id]
        assert row["seq"] == seq + 1
        assert row["hash"] == hashlib.sha256(prev + p.canonical).digest()
        state[p.tenant_id] = (seq + 1, row["hash"])
        expected = p.values  # the enriched event's columns
        for name, value in zip(COLUMNS, expected, strict=True):
            if name not in ("seq", "hash"):
                assert row[name] == value, name
    assert all(next(rows, None) is None for rows in months.values())


# ---- the properties --------------------------------------------------------------------
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=st.lists(messages(), min_size=1, max_size=8), warm=st.booleans(),
       seed=st.integers(0, 2**32))  # fmt: skip
@example(msgs=[Message(data=README_EVENT, stream_seq=1)], warm=True, seed=0)
def test_both_paths_give_identical_outcomes_and_copy_data(msgs: list[Message], warm: bool,
                                                         seed: int) -> None:  # fmt: skip
    compiled, pure = both(msgs, warm)
    assert [outcome(x) for x in compiled] == [outcome(x) for x in pure]
    assert all(c.msg is m for c, m in zip(compiled, msgs, strict=True))
    valid_c = [x.prepared for x in compiled if isinstance(x, Valid)]
    valid_p = [x.prepared for x in pure if isinstance(x, Valid)]
    if not valid_p:
        return
    # One event of a tenant per batch, as the flush chains it (unique keys).
    heads = heads_for(valid_p, seed)
    pure_copy = fastpath.pure_chain_copy(valid_p, heads)
    assert fastpath.compiled_chain_copy(valid_c, heads) == pure_copy
    assert fastpath.compiled_claims_copy(valid_c) == fastpath.pure_claims_copy(valid_p)
    check_against_the_spec(valid_p, heads, pure_copy[0])
    claims = list(read_copy(fastpath.pure_claims_copy(valid_p), ("tenant_id", "occurred_at", "id")))
    grouped = sorted(valid_p, key=lambda p: p.tenant_id)  # stable: batch order per tenant
    assert [(c["tenant_id"], c["id"]) for c in claims] == [(p.tenant_id, p.id) for p in grouped]


# Tenants whose code-point order differs from their order of first appearance, and a
# month boundary (the window LIMITS allows around NOW reaches back into October).
_MANY_TENANTS = [*_GOOD_TENANTS, "B", "a", "acme2", "t-10", "t-2", "Z9"]
_OCCURRED = ["2026-10-31T23:59:59.999999Z", "2026-11-01T00:00:00Z", "2026-11-26T11:00:00Z"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(picks=st.lists(st.tuples(st.sampled_from(_MANY_TENANTS), st.sampled_from(_OCCURRED)),
                      min_size=1, max_size=60),
       seed=st.integers(0, 2**32))  # fmt: skip
def test_both_paths_write_rows_and_claims_grouped_by_tenant(picks: list[tuple[str, str]],
                                                          seed: int) -> None:  # fmt: skip
    """Batches interleaving many tenants over two months: both paths give the same COPY
    data and heads, each month's rows and the claims grouped by tenant (code-point order),
    every tenant's rows chained in batch order (check_against_the_spec)."""
    msgs = [Message(data=json.dumps({**BASE, "tenant_id": t, "occurred_at": at}).encode(),
                    stream_seq=i + 1, timestamp_ns=NOW_NS)
            for i, (t, at) in enumerate(picks)]  # fmt: skip
    compiled, pure = both(msgs, warm=True)
    valid_c = [x.prepared for x in compiled if isinstance(x, Valid)]
    valid_p = [x.prepared for x in pure if isinstance(x, Valid)]
    assert len(valid_p) == len(picks)
    heads = heads_for(valid_p, seed)
    pure_copy = fastpath.pure_chain_copy(valid_p, heads)
    assert fastpath.compiled_chain_copy(valid_c, heads) == pure_copy
    check_against_the_spec(valid_p, heads, pure_copy[0])
    claims = fastpath.pure_claims_copy(valid_p)
    assert fastpath.compiled_claims_copy(valid_c) == claims
    tenants = [c["tenant_id"] for c in read_copy(claims, ("tenant_id", "occurred_at", "id"))]
    assert tenants == sorted(t for t, _ in picks)
    for data in pure_copy[0].values():
        rows = [r["tenant_id"] for r in read_copy(data, COLUMNS)]
        assert rows == sorted(rows)


@settings(max_examples=200, deadline=None)
@given(msgs=st.lists(messages(), min_size=1, max_size=6))
def test_the_known_name_caches_change_no_outcome(msgs: list[Message]) -> None:
    """decode_parts with the caches cold (full decoder) and warm (pattern-free decoder for
    known names): the same events, the same errors."""
    forget_names()
    cold = fastpath.pure_prepare_batch(msgs, NOW, LIMITS)
    warm = fastpath.pure_prepare_batch(msgs, NOW, LIMITS)
    assert [outcome(x)[:9] for x in cold] == [outcome(x)[:9] for x in warm]


def reason_examples() -> dict[str, Message]:
    def msg(doc: Any = None, raw: bytes | None = None, **kw: Any) -> Message:
        data = raw if raw is not None else json.dumps(doc).encode()
        return Message(data=data, stream_seq=kw.pop("stream_seq", 1), **kw)

    return {
        "malformed_json": msg(raw=b'{"tenant_id": '),
        "invalid_field": msg({**BASE, "tenant_id": "a b"}),
        "missing_field": msg({k: v for k, v in BASE.items() if k != "actor"}),
        "unknown_field": msg({**BASE, "seq": 1}),
        "unknown_enum": msg({**BASE, "severity": "SEVERITY_LOUD"}),
        "too_large": msg({**BASE, "metadata": {"x": "y" * 17_000}}),
        "too_deep": msg(raw=README_EVENT[:-2] + b', "extra": ' + b"[" * 40 + b"]" * 40 + b"}"),
        "tenant_mismatch": msg(BASE, subject="audit.events.someone-else"),
        "occurred_at_out_of_range": msg({**BASE, "occurred_at": "1999-01-01T00:00:00Z"},
                                        timestamp_ns=NOW_NS),
        "internal_error": msg(BASE, timestamp_ns=10**30),
        "valid: a text with \\u0000 written out": msg({**BASE, "description": "\\u0000"}),
        "valid: 32 brackets, deep enough to be looked at": msg(
            {**BASE, "related_resources": [{"type": "t", "id": "i"}] * 32}),
    }  # fmt: skip


@pytest.mark.parametrize("warm", [False, True])
def test_every_dead_letter_reason_is_identical(warm: bool) -> None:
    """Each reason once, and the valid events the compiled path hands over."""
    cases = reason_examples()
    compiled, pure = both(list(cases.values()), warm)
    for (reason, _), c, p in zip(cases.items(), compiled, pure, strict=True):
        if reason.startswith("valid"):
            assert isinstance(c, Valid), (reason, c)
        else:
            assert isinstance(c, Dead) and c.reason == reason, (reason, c)
        assert outcome(c) == outcome(p)


def test_valid_events_with_known_names_take_the_compiled_path() -> None:
    assert fastpath.BUILT is not None
    docs = [dict(BASE, description=f"event {i}", occurred_at="2026-11-26T11:00:00+02:00")
            for i in range(50)]  # fmt: skip
    msgs = [Message(data=json.dumps(d).encode(), stream_seq=i + 1, timestamp_ns=NOW_NS)
            for i, d in enumerate(docs)]  # fmt: skip
    fastpath.pure_prepare_batch(msgs[:1], NOW, LIMITS)  # the names are known now
    before = fastpath.BUILT.counts()
    out = fastpath.compiled_prepare_batch(msgs, NOW, LIMITS)
    after = fastpath.BUILT.counts()
    assert all(isinstance(x, Valid) for x in out)
    assert (after[0] - before[0], after[1] - before[1]) == (50, 0)


def test_every_code_point_is_escaped_as_msgspec_escapes_it() -> None:
    """Descriptions holding every code point but surrogates and NUL, 512 per event."""
    points = [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]
    msgs = []
    for i in range(0, len(points), 512):
        text = "".join(map(chr, points[i : i + 512]))
        doc = dict(BASE, description=text[:4096], ip=text[:128], actor=dict(BASE["actor"],
                   display_name=text[:256]))  # fmt: skip
        msgs.append(Message(data=json.dumps(doc).encode(), stream_seq=i + 1, timestamp_ns=NOW_NS))
    compiled, pure = both(msgs, warm=True)
    assert all(isinstance(x, Valid) for x in compiled)
    assert [outcome(x) for x in compiled] == [outcome(x) for x in pure]


def test_pure_python_is_chosen_by_the_environment_switch() -> None:
    code = "from pipeline import fastpath; print(fastpath.COMPILED is None, fastpath.KIND)"
    env = dict(os.environ, AUDIT_PURE_PYTHON="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.startswith("True pure Python (AUDIT_PURE_PYTHON is set)")


def test_a_message_whose_fields_are_computed_gets_the_pure_paths_outcome() -> None:
    """The compiled path reads a message's fields as stored slots; an object whose fields
    are computed on access (properties: nothing else owns the value) once left it reading
    freed memory. Now such a message goes to the pure path, with its outcome."""

    class Computed:
        headers = None
        stream_seq = 1
        origin = ""
        created_ns = 0
        delivered = 1
        ack = ""
        timestamp_ns = NOW_NS

        @property
        def data(self) -> bytes:
            return bytes(bytearray(README_EVENT))

        @property
        def subject(self) -> str:
            return "".join(["audit.", "events"])

    msgs: Any = [Computed(), Message(data=README_EVENT, stream_seq=2)]
    compiled = fastpath.compiled_prepare_batch(msgs, NOW, LIMITS)
    assert compiled == fastpath.pure_prepare_batch(msgs, NOW, LIMITS)
    assert all(isinstance(r, Valid) for r in compiled)


# ---- deferred preparing: which messages wait, under which tenant -------------------------
_OPENINGS = st.sampled_from([
    b'{"tenant_id":"', b'{ "tenant_id" : "', b'{\n\t"tenant_id":\r"', b'{"tenant_id":',
    b'{"tenant_id" "', b'["tenant_id":"', b' {"tenant_id":"', b'{"tenant_ID":"', b"",
])  # fmt: skip
_TAILS = st.binary(max_size=12) | st.sampled_from(
    [b'acme"}', b'\xc3\xa9"', b'a\\"b"', b'\xed\xa0\x80"', b'"', b"a"]
)
_RAW_OPENED = st.builds(bytes.__add__, _OPENINGS, _TAILS)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=st.lists(messages(), min_size=1, max_size=6),
       raw=st.lists(_RAW_OPENED, max_size=4), ts=st.sampled_from([0, NOW_NS]),
       seq=st.sampled_from([0, 7]))  # fmt: skip
def test_both_paths_defer_the_same_messages_under_the_same_tenant(msgs: list[Message],
                                                                   raw: list[bytes], ts: int,
                                                                   seq: int) -> None:  # fmt: skip
    msgs = msgs + [Message(data=r, timestamp_ns=ts, stream_seq=seq) for r in raw]
    compiled = fastpath.compiled_defer_batch(msgs, NOW, LIMITS)
    pure = fastpath.pure_defer_batch(msgs, NOW, LIMITS)
    assert len(compiled) == len(pure) == len(msgs)
    for c, p, m in zip(compiled, pure, msgs, strict=True):
        assert type(c) is type(p) and c.msg is m and p.msg is m
        if isinstance(c, Pending):
            assert c.tenant_id == p.tenant_id == pending_tenant(m)
        else:
            assert outcome(c) == outcome(p)


def test_defer_split_refuses_what_is_not_a_message() -> None:
    assert fastpath.BUILT is not None
    with pytest.raises(AttributeError):
        fastpath.BUILT.defer_split([object()])
    with pytest.raises(TypeError):
        fastpath.BUILT.defer_split(5)
