"""`q` through the search index kept behind ingestion (``sql/009_search_index.sql``,
``sql/011_search_lexeme_once.sql``, ``pipeline/indexer.py``), against real PostgreSQL
(and NATS for the drain).

- `q` matches exactly what the old expression matches (``audit.search_text(...) @@
  websearch_to_tsquery('simple', q)`` over the events), for many generated queries, on a
  fixed data set: before the indexer ran (every event in the tail), half-way, and after;
  through pages (both plans: the newest-first walk and the index's keys), stats and exports;
- an event committed under a running drain is found by `q` at once and is in the index
  within :data:`INDEX_BOUND_S`;
- a database of the old schema (migrations up to 008) with events migrates in place: its
  events are found at once, then through the index once the indexer has caught up;
- one indexer at a time (the lease), the lag in metrics and /readyz.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from infra.db import create_pool
from infra.metrics import Metrics
from infra.migrate import load_migrations, migrate
from pipeline.indexer import LEASE_KEY, SearchIndexer, lag_status, read_lag
from query_api import sql
from query_api.cursor import Cursor
from query_api.filters import EventQuery
from tests.support.databases import create_database
from tests.support.events import README_EVENT, ROOT
from tests.support.metrics import sample
from tests.support.service import (
    DAY,
    make_event,
    publish_all,
    running_worker,
    serving_app,
    store,
)
from tests.support.waits import eventually

pytestmark = pytest.mark.integration
TENANT, OTHER = "search-a", "search-b"
INDEX_BOUND_S = 5.0  # the stated bound: a committed event is in the index within this
MIN_MARKERS = 20  # markers sent under the drain, at one per 200 ms

ACTIONS = ["user.login", "user.logout", "document.updated", "role.granted", "invoice.paid",
           "api_key.created", "settings:changed", "file-downloaded",
           "user_login.failed"]  # fmt: skip
WORDS = ["budget", "forecast", "quarterly", "login", "portal", "failed", "successful",
         "password", "reset", "admin", "editor", "Jane", "DOE", "O'Brien", "naïve", "42",
         "x-1", "a.b", "jane@example.com", "https://example.com/p?q=1", "user", "document",
         "über", "plan", "Budget-Forecast", "the", "and", "or"]  # fmt: skip
NAMES = ["Jane Doe", "John Smith", "Ada Lovelace", "", "Grace O'Brien", "Budget plan",
         "Quarterly forecast", "naïve user"]  # fmt: skip


def fixed_events(tenant: str, n: int = 240, seed: int = 26) -> list:
    """A fixed, varied data set: actions of every shape, descriptions of vocabulary words,
    display names, over 50 days (two or three monthly partitions)."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        words = rnd.sample(WORDS, rnd.randint(0, 6))
        actor = {"type": "ACTOR_TYPE_USER", "id": f"u-{i % 7}", "display_name": rnd.choice(NAMES)}
        resource = {"type": "document", "id": f"d-{i % 11}", "display_name": rnd.choice(NAMES)}
        out.append(make_event(tenant, i * 50 * DAY // n + 1, action=rnd.choice(ACTIONS),
                              description=" ".join(words), actor=actor,
                              primary_resource=resource))  # fmt: skip
    return out


FIXED_QUERIES = ["login", "user.login", "user login", '"user login"', "-login", "LOGIN",
                 "login or budget", "budget -forecast", '"budget forecast"', "doe jane",
                 '"jane doe"', "o'brien", "naïve", "über", "42", "x-1", "a.b", "settings",
                 "changed", "downloaded", "jane@example.com", "example", "the", "or", "-",
                 '"', "'", "  ", "user_login", "failed -user", "-budget -forecast",
                 "budget or forecast or login", "https://example.com/p?q=1",
                 "nothing-matches-this"]  # fmt: skip
_TOKEN = st.sampled_from(WORDS + ACTIONS + [n for n in NAMES if n] + ["-", "or", '"'])
QUERIES = st.one_of(
    st.lists(_TOKEN, min_size=1, max_size=5).map(" ".join),
    st.lists(_TOKEN, min_size=1, max_size=3).map(lambda ws: '"' + " ".join(ws) + '"'),
    st.lists(_TOKEN, min_size=1, max_size=3).map(lambda ws: " ".join("-" + w for w in ws)),
    st.text(min_size=1, max_size=30),
)


def generated(n: int = 120) -> list[str]:
    """``n`` queries drawn by hypothesis (generation only: the checks run afterwards, since
    the database and hypothesis's engine do not share an event loop)."""
    out: list[str] = []

    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(QUERIES)
    def collect(q: str) -> None:
        out.append(q.replace("\x00", ""))

    collect()
    return FIXED_QUERIES + [q for q in out if q.strip("\x00")]


async def expected(dsn: str, tenant: str, q: str) -> list[uuid.UUID]:
    """What `q` matched before the search table: the old expression over the events,
    newest first (as the superuser: no row-level security, no index involved)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            f"SELECT id FROM audit.events WHERE tenant_id = $1 AND {sql.SEARCH_EXPR}"
            " @@ websearch_to_tsquery('simple', $2) ORDER BY occurred_at DESC, id DESC",
            tenant, q,
        )  # fmt: skip
    finally:
        await conn.close()
    return [r["id"] for r in rows]


async def paged(pool, tenant: str, q: str, page_size: int, order: str = "desc") -> list:
    """Every event `q` matches, page by page as the API serves them."""
    query = EventQuery(q=q, page_size=page_size, order=order)
    out: list[uuid.UUID] = []
    after = None
    while True:
        async with sql.tenant_tx(pool, tenant) as conn:
            rows = await sql.list_events(conn, query, tenant, after)
        out.extend(r["id"] for r in rows[:page_size])
        if len(rows) <= page_size:
            return out
        last = rows[page_size - 1]
        us = (last["occurred_at"] - sql.EPOCH) // timedelta(microseconds=1)
        after = Cursor(us, last["id"])


async def served(pool, tenant: str, q: str) -> dict[str, object]:
    """What the read paths answer for `q`: pages of 1,000 and of 3 (mostly the newest-first
    walk), pages of 5 with a walk of one candidate per row (mostly the index's keys),
    ascending pages, the stats total and the export (the keys)."""
    query = EventQuery(q=q, order="desc")
    async with sql.tenant_tx(pool, tenant) as conn:
        start, end = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
        stats = await sql.stats(conn, query, tenant, start, end, end - start)
        export_sql, args = sql.export_query(query, tenant)
        exported = [json.loads(r[0])["id"] for r in await conn.fetch(export_sql, *args)]
    walk_per_row, sql.WALK_PER_ROW = sql.WALK_PER_ROW, 1
    try:
        keys = await paged(pool, tenant, q, 5)
    finally:
        sql.WALK_PER_ROW = walk_per_row
    return {
        "big": await paged(pool, tenant, q, 1000),
        "small": await paged(pool, tenant, q, 3),
        "keys": keys,
        "asc": list(reversed(await paged(pool, tenant, q, 7, "asc"))),
        "total": stats["total"],
        "export": [uuid.UUID(x) for x in exported],
    }


async def check_all(dsn: str, pool, queries: list[str]) -> int:
    """Every query answers exactly the old expression's matches on every path; returns
    how many queries matched something (so the check is not vacuous)."""
    nonempty = 0
    for q in queries:
        want = await expected(dsn, TENANT, q)
        got = await served(pool, TENANT, q)
        assert got == {"big": want, "small": want, "keys": want, "asc": want,
                       "total": len(want), "export": want}, (q, len(want), got)  # fmt: skip
        nonempty += bool(want)
    return nonempty


async def test_q_matches_what_it_matched_before_at_every_stage_of_indexing(db_url) -> None:
    pool = await create_pool(db_url, max_size=3)
    try:
        await store(pool, fixed_events(TENANT))
        await store(pool, fixed_events(OTHER, seed=27))  # same words, another tenant
        queries = generated()
        login = set(await expected(db_url, TENANT, "login"))  # `q=login` finds user.login
        logins = await _superuser(db_url, "SELECT array_agg(id) FROM audit.events WHERE"
                                  " tenant_id = $1 AND action = 'user.login'", TENANT)  # fmt: skip
        assert logins and set(logins) <= login
        indexer = SearchIndexer(_settings(db_url), pool, batch_rows=100)
        stages = []
        async with pool.acquire() as conn:
            stages.append(await read_lag(conn))  # nothing indexed: all tail
        nonempty = await check_all(db_url, pool, queries)
        assert nonempty > len(queries) // 3, nonempty
        step = await indexer.step()  # ~100 events: both tenants part-indexed
        assert step is not None and 0 < step[0] <= 200 and step[1]
        async with pool.acquire() as conn:
            stages.append(await read_lag(conn))
        await check_all(db_url, pool, queries)
        assert await indexer.cycle() == 480 - step[0]
        async with pool.acquire() as conn:
            stages.append(await read_lag(conn))
        await check_all(db_url, pool, queries)
        assert [s.events for s in stages] == [480, 480 - step[0], 0], stages
        assert await _superuser(db_url, "SELECT count(*) FROM audit.search") == 480
        # Each document is audit.search_doc of its own event, byte for byte (the indexer
        # makes each tenant's lexeme once per call: sql/011).
        assert await _superuser(db_url, DOCS_AS_DEFINED) == [480, 0]
        # Indexed, and a few newer events not yet: the index's keys plus a short tail.
        await store(pool, fixed_events(TENANT, 24, seed=28))
        async with pool.acquire() as conn:
            assert (await read_lag(conn)).events == 24
        await check_all(db_url, pool, queries)
    finally:
        await pool.close()


# (documents joined to their events, those that differ from audit.search_doc)
DOCS_AS_DEFINED = """
SELECT ARRAY[count(*), count(*) FILTER (WHERE s.doc IS DISTINCT FROM audit.search_doc(
    e.tenant_id, e.action, e.description, e.actor_display_name, e.resource_display_name))]
FROM audit.search s JOIN audit.events e USING (tenant_id, occurred_at, id)
"""


def _settings(db_url: str, **kw: object):
    from infra.settings import Settings

    return Settings(database_url=db_url, nats_url="nats://unused", **kw)  # type: ignore[arg-type]


async def _superuser(dsn: str, query: str, *args: object) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def test_the_api_finds_user_login_by_login_before_and_after_indexing(
    db_url, settings_factory, tmp_path
) -> None:
    admin = "search-admin-token-0123456789abcdef"
    settings = settings_factory(db_url, admin_token=admin, state_dir=str(tmp_path))
    async with serving_app(settings) as api:
        indexer = SearchIndexer(settings, api.pool)
        assert await indexer.cycle() == 0  # an indexer runs, nothing due yet
        await store(api.pool, [make_event(TENANT, 1, action="user.login"),
                               make_event(TENANT, 2, action="user.logout"),
                               make_event(OTHER, 3, action="user.login")])  # fmt: skip
        headers = {"Authorization": f"Bearer {admin}"}

        async def actions(q: str) -> list[str]:
            r = await api.get("/v1/audit/events", params={"tenant_id": TENANT, "q": q},
                              headers=headers)  # fmt: skip
            assert r.status == 200, await r.text()
            return [e["action"] for e in (await r.json())["events"]]

        assert await actions("login") == ["user.login"]  # the tail
        ready = await (await api.get("/readyz")).json()
        assert ready["checks"]["search"] == "ok", ready  # just behind, not degraded
        assert await indexer.cycle() == 3
        assert await actions("login") == ["user.login"]  # the index
        assert await actions("user") == ["user.login", "user.logout"]
        assert await actions("-login") == ["user.logout"]


async def test_one_indexer_at_a_time_and_the_lag_is_exported(db_url) -> None:
    pool = await create_pool(db_url, max_size=4)
    try:
        await store(pool, [make_event(f"lease-{i % 5}", i) for i in range(1, 301)])
        a, b = Metrics(), Metrics()
        first = SearchIndexer(_settings(db_url), pool, a, batch_rows=50)
        second = SearchIndexer(_settings(db_url), pool, b, batch_rows=50)
        async with pool.acquire() as conn, conn.transaction():
            # Hold the lease as an indexer transaction does: the others skip their round.
            assert await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", LEASE_KEY)
            assert await second.cycle() is None
            assert sample(b, "auditlog_search_lag_events") == 0  # not the holder: 0
        done = await asyncio.gather(first.cycle(), second.cycle())
        assert sorted(d or 0 for d in done) == [0, 300] or sum(d or 0 for d in done) == 300
        assert await _superuser(db_url, "SELECT count(*) FROM audit.search") == 300  # once each
        holder = a if done[0] else b
        assert sample(holder, "auditlog_search_lag_events") == 0
        assert sample(holder, "auditlog_search_indexed_events_total") == 300
        # Behind: the holder exports the events due and a bound of the oldest one's age.
        await _superuser(db_url, "UPDATE audit.search_indexer SET caught_up_at = now()"
                         " - interval '90 seconds'")  # fmt: skip
        await store(pool, [make_event("lease-0", 0)])
        async with pool.acquire() as conn:
            lag = await read_lag(conn)
        assert lag.events == 1 and 90 <= lag.seconds < 120, lag
        assert lag_status(lag, 60).startswith("degraded: search index 9")
        assert lag_status(lag, 600) == "ok"
    finally:
        await pool.close()


KEYS = "SELECT * FROM audit.search_keys(websearch_to_tsquery('simple', $1))"


async def test_the_search_table_is_per_tenant_and_read_only_for_the_app(db_url) -> None:
    pool = await create_pool(db_url, max_size=2)
    try:
        await store(pool, [make_event(TENANT, 1), make_event(OTHER, 2), make_event(OTHER, 3)])
        await SearchIndexer(_settings(db_url), pool).cycle()
        async with sql.tenant_tx(pool, OTHER) as conn:
            assert await conn.fetchval("SELECT count(*) FROM audit.search") == 2  # RLS
            # The keys come from the transaction's tenant, never from an argument.
            assert len(await conn.fetch(KEYS, "event")) == 2
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM audit.search") == 0  # no tenant
            assert await conn.fetch(KEYS, "event") == []
            for statement in ("INSERT INTO audit.search SELECT tenant_id, occurred_at, id,"
                              " doc FROM audit.search", "DELETE FROM audit.search",
                              "UPDATE audit.search_progress SET indexed_seq = 0",
                              "UPDATE audit.search_indexer SET caught_up_at = now()"):  # fmt: skip
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)
    finally:
        await pool.close()


async def test_an_event_committed_under_a_drain_is_found_at_once_and_indexed_within_the_bound(
    db_url, settings_factory
) -> None:
    """A drain of at least 60,000 events of 300 tenants (published while the worker stores
    them, and for as long as it takes to send MIN_MARKERS markers: a fast host drains
    60,000 in about 3 s); meanwhile, every 200 ms, a marker event with a word of its own.
    Each marker must be found by `q` as soon as it is committed, and be in the search
    index within INDEX_BOUND_S of that."""
    settings = settings_factory(db_url)  # the default interval: the bound is what ships
    committed: dict[uuid.UUID, float] = {}  # event id -> when its commit was announced

    async def on_commit(stored: list, duplicates: list, rejected: list) -> None:
        now = time.monotonic()
        for _tenant, event_id in stored:
            committed.setdefault(event_id, now)

    def bulk(start: int, n: int) -> list[bytes]:
        out = []
        for i in range(start, start + n):
            doc = json.loads(README_EVENT)
            doc.update(tenant_id=f"drain-{i % 300}", description=f"bulk event {i} login budget")
            doc.pop("occurred_at", None)
            out.append(json.dumps(doc).encode())
        return out

    first = bulk(0, 60_000)
    published = 0
    markers: list[asyncio.Task] = []
    readers = await create_pool(db_url, max_size=4)  # the API's side
    owner = await asyncpg.create_pool(db_url, min_size=1, max_size=2)  # sees audit.search
    try:
        async with running_worker(settings, on_commit=on_commit) as w:
            indexer = SearchIndexer(settings, w.pool, w.metrics)
            stop = asyncio.Event()
            indexing = asyncio.create_task(indexer.run(stop))

            async def publish_bulk() -> None:
                # 60,000 at once; then more, 6,000 at a time with at most 20,000 waiting,
                # while fewer than MIN_MARKERS markers were sent (so the drain lasts).
                nonlocal published
                published = await publish_all(w.nc, settings.subject, first)
                while len(markers) < MIN_MARKERS and published < 600_000:
                    stored = sample(w.metrics, "auditlog_events_stored_total", source="nats")
                    if published - stored > 20_000:
                        await asyncio.sleep(0.05)
                        continue
                    published += await publish_all(w.nc, settings.subject,
                                                   bulk(published, 6_000))  # fmt: skip

            drain = asyncio.create_task(publish_bulk())

            async def marker() -> tuple[float, float]:
                word = f"marker{uuid.uuid4().hex[:12]}"
                tenant = f"drain-{random.randrange(300)}"
                doc = json.loads(README_EVENT)
                doc.update(tenant_id=tenant, description=f"the {word} event")
                doc.pop("occurred_at", None)
                # Announced on commit (as a synchronous write's event is): it has a key.
                headers = {"Audit-Idempotency-Key": word}
                await publish_all(w.nc, settings.subject, [json.dumps(doc).encode()], [headers])
                return await _track(readers, owner, tenant, word, committed)

            stored = 0
            began = time.monotonic()
            while not drain.done() or stored < published:  # markers while the drain runs
                assert time.monotonic() - began < 300, f"drain stalled at {stored}/{published}"
                markers.append(asyncio.create_task(marker()))
                await asyncio.sleep(0.2)
                stored = int(sample(w.metrics, "auditlog_events_stored_total", source="nats"))
            rate = stored / (time.monotonic() - began)
            results = await asyncio.gather(*markers)
            await drain
            await eventually(lambda: sample(w.metrics, "auditlog_events_stored_total",
                                            source="nats"),
                             lambda n: n >= published + len(markers), timeout=60,
                             what="every event stored")  # fmt: skip
            # Caught up once the drain ended: the indexer, still running, reads no lag within
            # the bound (a pass that ran while the last flushes committed read theirs; the
            # next one indexes them).
            ended = time.monotonic()
            lag = await eventually(lambda: indexer.lag, lambda v: v is not None and v.events == 0,
                                   timeout=INDEX_BOUND_S, interval=0.05,
                                   what="the index caught up after the drain")  # fmt: skip
            caught_up_after = time.monotonic() - ended
            stop.set()
            await indexing
    finally:
        await readers.close()
        await owner.close()
    found_after = [f for f, _ in results]
    indexed_after = sorted(i for _, i in results)
    before = sum(f < i for f, i in results)  # found through the tail, not yet indexed
    print(
        f"\n{len(results)} markers under a drain of {published:,} events ({rate:,.0f}/s):"
        f" found by q at most {max(found_after):.3f} s after the commit ({before} before"
        f" they were indexed); in the index at most {indexed_after[-1]:.3f} s after it"
        f" (median {indexed_after[len(results) // 2]:.3f} s)"
    )  # shown with -s
    assert len(results) >= MIN_MARKERS, "the drain ended too soon to measure anything"
    # The tail is matched directly: found before the indexer reached them (how soon after
    # the commit is mostly how busy this one event loop is, polling under the drain).
    assert max(found_after) < INDEX_BOUND_S and before > len(results) // 2, results
    assert indexed_after[-1] < INDEX_BOUND_S, indexed_after
    assert lag.events == 0 and caught_up_after <= INDEX_BOUND_S + 0.5  # caught up


async def _track(readers, owner, tenant: str, word: str,
                 committed: dict) -> tuple[float, float]:  # fmt: skip
    """Seconds from the marker's commit until `q` finds it, and until it is in
    audit.search (polled every 50 ms)."""
    query = EventQuery(q=word, page_size=10)
    deadline = time.monotonic() + 60
    found = indexed = None
    event_id = None
    while found is None or indexed is None:
        assert time.monotonic() < deadline, (word, found, indexed)
        if found is None:
            async with sql.tenant_tx(readers, tenant) as conn:
                rows = await sql.list_events(conn, query, tenant, None)
            if rows:
                assert len(rows) == 1, rows
                event_id = rows[0]["id"]
                found = time.monotonic()
        if (
            event_id is not None
            and indexed is None
            and await owner.fetchval(
                "SELECT 1 FROM audit.search WHERE tenant_id = $1 AND id = $2", tenant, event_id
            )
        ):
            indexed = time.monotonic()
        await asyncio.sleep(0.05)
    while event_id not in committed:  # the notice follows the commit (and the ack)
        assert time.monotonic() < deadline, "a commit never announced"
        await asyncio.sleep(0.01)
    # Committed by then for sure: the notice, or the first moment `q` saw the event.
    start = min(committed[event_id], found)
    return found - start, indexed - start


async def test_an_old_database_migrates_in_place_and_backfills_in_the_background(
    pg_server_url, tmp_path
) -> None:
    old_sql = tmp_path / "sql"
    old_sql.mkdir()
    for m in load_migrations():
        if m.version <= 8:
            shutil.copy(Path(ROOT / "sql" / f"{m.version:03d}_{m.name}.sql"), old_sql)
    dsn = await create_database(pg_server_url, None)
    try:
        assert await migrate(dsn, old_sql) == [1, 2, 3, 4, 5, 6, 7, 8]
        pool = await create_pool(dsn, max_size=2)
        try:
            await store(pool, fixed_events(TENANT, 200) + fixed_events(OTHER, 50, seed=3))
            assert await _superuser(dsn, "SELECT to_regclass('audit.events_search')") is not None
            applied = await migrate(dsn)
            assert applied[0] == 9
            # The migration indexed nothing (no backfill inside it) and dropped the old index.
            assert await _superuser(dsn, "SELECT count(*) FROM audit.search") == 0
            assert await _superuser(dsn, "SELECT to_regclass('audit.events_search')") is None
            months = await _superuser(dsn, "SELECT count(*) FROM pg_inherits WHERE inhparent"
                                      " = 'audit.events'::regclass")  # fmt: skip
            assert months == await _superuser(dsn, "SELECT count(*) FROM pg_inherits WHERE"
                                              " inhparent = 'audit.search'::regclass")  # fmt: skip
            async with pool.acquire() as conn:
                assert (await read_lag(conn)).events == 250
            queries = FIXED_QUERIES[:12]
            assert await check_all(dsn, pool, queries) > 5  # at once, from the tail
            assert await SearchIndexer(_settings(dsn), pool, batch_rows=60).cycle() == 250
            assert await _superuser(dsn, "SELECT count(*) FROM audit.search") == 250
            await check_all(dsn, pool, queries)  # through the index
            # A month made after the migration gets its search partition too.
            await _superuser(dsn, "SELECT audit.ensure_partition(now() + interval '14 months')")
            assert await _superuser(dsn, "SELECT count(*) FROM pg_inherits WHERE inhparent"
                                    " = 'audit.search'::regclass") == months + 1  # fmt: skip
        finally:
            await pool.close()
    finally:
        admin = await asyncpg.connect(pg_server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
        finally:
            await admin.close()
