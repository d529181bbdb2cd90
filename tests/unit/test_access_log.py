"""query_api.access_log by property: whatever the mix of reads, every request and row is
counted exactly once, one event per key, operation and filter per window, every event a
valid input event; publishing failures lose nothing (up to the backlog bound)."""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from query_api.access_log import MAX_VALUE_LEN, AccessLog, filters_of
from query_api.auth import Principal
from schemas.events import decode_event

KEYS = [Principal("t1", frozenset({"read"}), "k1"), Principal("t2", frozenset({"read"}), "k2"),
        Principal(None, frozenset({"read", "write"}), "admin")]  # fmt: skip

read = st.tuples(
    st.integers(0, 2),  # who
    st.sampled_from(["t1", "t2"]),
    st.sampled_from(["list", "stats", "get"]),
    st.dictionaries(st.sampled_from(["q", "actions", "page_token", "severities"]),
                    st.text(max_size=300).filter(lambda s: "\x00" not in s), max_size=3),
    st.integers(0, 500),  # rows
    st.floats(0, 40),  # seconds until the next read
)  # fmt: skip


class Sink:
    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[bytes] = []
        self.fail_first = fail_first

    async def __call__(self, batch: list[bytes]) -> list[bool]:
        if self.fail_first:
            self.fail_first -= 1
            raise ConnectionError("NATS away")
        self.events += batch
        return [True] * len(batch)


@settings(max_examples=150, deadline=None)
@given(reads=st.lists(read, max_size=60), fail_first=st.integers(0, 3))
def test_every_read_is_counted_once_per_key_and_filter_and_window(reads, fail_first) -> None:
    now = [1_000_000.0]
    sink = Sink(fail_first)
    log = AccessLog(sink, window_s=60.0, clock=lambda: now[0])

    async def go() -> None:
        for who, tenant, op, params, rows, wait in reads:
            log.read(KEYS[who], tenant, op, params, rows)
            now[0] += wait
            await log.flush()
        for _ in range(fail_first + 1):
            await log.flush(force=True)

    asyncio.run(go())
    events = [decode_event(e) for e in sink.events]  # each a valid input event
    assert sum(e.metadata["requests"] for e in events) == len(reads)
    assert sum(e.metadata["rows"] for e in events) == sum(r[4] for r in reads)
    spans = {}
    for e in events:
        assert e.action == "audit_log.read" and e.category == "CATEGORY_COMPLIANCE"
        group = (e.tenant_id, e.actor.id, e.metadata["operation"], str(e.metadata["filters"]))
        assert "page_token" not in e.metadata["filters"]
        assert all(len(v) <= MAX_VALUE_LEN for v in e.metadata["filters"].values())
        spans.setdefault(group, []).append((e.metadata["first_at"], e.metadata["last_at"]))
    for windows in spans.values():  # one event per window: windows of a group never overlap
        windows.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(windows))


def test_paging_is_one_filter_and_repeated_parameters_are_kept() -> None:
    from multidict import MultiDict

    a = filters_of(MultiDict([("severities", "SEVERITY_ERROR"), ("severities", "SEVERITY_INFO"),
                              ("page_token", "abc"), ("tenant_id", "t1")]))  # fmt: skip
    b = filters_of({"severities": "SEVERITY_ERROR,SEVERITY_INFO"})
    assert a == b == {"severities": "SEVERITY_ERROR,SEVERITY_INFO"}


def test_records_are_one_by_one_and_the_backlog_is_bounded(monkeypatch) -> None:
    import query_api.access_log as mod

    monkeypatch.setattr(mod, "MAX_PENDING", 5)
    sink = Sink(fail_first=1)
    log = AccessLog(sink)
    for i in range(8):
        log.record(KEYS[2], "t1", "audit_log.export", ("audit_log", "t1"), {"rows": i})
    asyncio.run(log.flush())  # fails: kept
    assert len(log.ready) == 5  # the 3 oldest dropped (bounded)
    asyncio.run(log.flush())
    assert [decode_event(e).metadata["rows"] for e in sink.events] == [3, 4, 5, 6, 7]


def test_off_means_nothing_is_recorded() -> None:
    sink = Sink()
    log = AccessLog(sink, enabled=False)
    log.read(KEYS[0], "t1", "list", {}, 3)
    log.record(KEYS[2], "t1", "api_key.create", ("api_key", "x"), {})
    asyncio.run(log.flush(force=True))
    assert sink.events == [] and not log.windows and not log.ready
