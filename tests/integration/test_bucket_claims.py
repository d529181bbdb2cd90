"""pipeline.bucket_claims against a real PostgreSQL: two workers' claims never overlap,
nobody waits for a claim, a claim counts (released once per claim), and a worker whose
claims connection dies loses its claims at once and flushes without them for a while."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from infra.db import KEEPALIVES, create_pool
from pipeline.bucket_claims import CLASS_ID, WAIT_CLASS_ID, PgBucketClaims

pytestmark = pytest.mark.integration


@pytest.fixture
async def two(db_url: str) -> AsyncIterator[tuple[PgBucketClaims, PgBucketClaims, list[Any]]]:
    """Two workers' claims, each on a pool of its own: ``(a, b, [a's pool, b's pool])``."""
    pools = [await create_pool(db_url, max_size=2) for _ in range(2)]
    a, b = (PgBucketClaims(p) for p in pools)
    try:
        yield a, b, pools
    finally:
        await a.close()
        await b.close()
        for p in pools:
            await p.close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_two_workers_claim_disjoint_buckets_without_waiting(two) -> None:
    a, b, _ = two
    assert await a.claim([1, 2, 3], 2) == [1, 2]
    # b wants 1..4: 1 and 2 are a's, so it skips them (no waiting) and takes 3 and 4.
    got = await asyncio.wait_for(b.claim([1, 2, 3, 4], 2), 2)
    assert got == [3, 4]
    assert await b.claim([1, 2], 2) == []  # all held elsewhere: nothing, at once
    await a.release([1, 2])
    assert await b.claim([2, 1], 5) == [2, 1]  # in the order asked
    assert await a.claim([1, 2, 3, 4, 5], 1) == [5]


async def test_a_claim_counts_and_close_ends_every_claim(two) -> None:
    a, b, pools = two
    # The same worker's next flush may claim a bucket before the previous flush of
    # it released its claim: both claims hold until both are released.
    assert await a.claim([7], 1) == [7]
    assert await a.claim([7], 1) == [7]
    await a.release([7])
    assert await b.claim([7], 1) == []
    await a.release([7])
    assert await b.claim([7], 1) == [7]
    await b.release([7])
    assert await a.claim([8, 9], 2) == [8, 9]
    await a.close()  # the connection goes back to the pool, reset: claims end
    assert await b.claim([8, 9], 2) == [8, 9]
    # The pool's connection is usable again afterwards (no lock left on it).
    async with pools[0].acquire() as conn:
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1"
            " AND pid = pg_backend_pid()", CLASS_ID)  # fmt: skip
        assert held == 0


async def test_a_dead_claims_connection_frees_its_buckets_and_pauses_claims(db_url: str) -> None:
    pools = [await create_pool(db_url, max_size=2) for _ in range(2)]
    clock = Clock()
    a, b = PgBucketClaims(pools[0], clock), PgBucketClaims(pools[1])
    admin = await asyncpg.connect(db_url)
    try:
        assert await a.claim([1, 2], 2) == [1, 2]
        pid = await admin.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = $1"
            " AND objid = 1", CLASS_ID)  # fmt: skip
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        # PostgreSQL dropped a's claims with its session: b takes them at once.
        assert await b.claim([1, 2], 2) == [1, 2]
        assert await a.claim([3], 1) is None  # noticed: claims unavailable, flush without
        await a.release([1, 2])  # (nothing to release: never raises)
        assert await a.claim([3], 1) is None  # paused for a while after a failure
        clock.now += 10
        assert await a.claim([3, 1], 2) == [3]  # a fresh connection; 1 is b's
    finally:
        await admin.close()
        await a.close()
        await b.close()
        for p in pools:
            await p.close()


async def test_claims_wait_for_no_pool_connection_longer_than_a_moment(db_url: str) -> None:
    """A pool with no connection to spare: claims say 'unavailable' quickly instead of
    holding the flush back."""
    pool = await create_pool(db_url, max_size=1)
    claims = PgBucketClaims(pool)
    try:
        async with pool.acquire():
            got = await asyncio.wait_for(claims.claim([1], 1), 3)
        assert got is None
    finally:
        await claims.close()
        await pool.close()


async def test_a_claim_says_how_many_workers_claim(two) -> None:
    """A worker alone flushes oldest-first; it learns from its claims when another one
    starts and when it is gone again."""
    a, b, _ = two
    assert a.peers == 0  # unknown before the first claim
    await a.claim([1], 1)
    assert a.peers == 1
    await b.claim([2], 1)
    assert b.peers == 2
    await a.claim([3], 1)
    assert a.peers == 2
    await b.close()
    await a.claim([4], 1)
    assert a.peers == 1


async def test_sessions_keep_alive_so_a_vanished_host_loses_its_claims_in_a_minute(
    db_url: str,
) -> None:
    """A worker host that vanishes without closing its connections (power, network): the
    server probes its sessions and ends them after ~60 s, releasing its claims and locks
    (not after the kernel's default two hours)."""
    pool = await create_pool(db_url, max_size=1)
    try:
        async with pool.acquire() as conn:
            got = {k: await conn.fetchval(f"SHOW {k}") for k in KEEPALIVES}
            await conn.execute("RESET ALL")  # (what asyncpg runs when a connection returns)
            again = {k: await conn.fetchval(f"SHOW {k}") for k in KEEPALIVES}
        assert got == KEEPALIVES and again == KEEPALIVES
    finally:
        await pool.close()


async def test_a_bucket_whose_turn_was_had_goes_to_the_worker_waiting_for_it(
    db_url: str, two
) -> None:
    """a keeps bucket 1 busy (claims it again before each release); b, with nothing else
    to flush and finding it held, waits for it (a busy worker does not). a's next claim
    that says its turn at 1 was had skips 1 (and locks nothing for it), so 1 comes free
    when a releases, and b takes it; nobody waiting, a turn had changes nothing."""
    a, b, _ = two
    admin = await asyncpg.connect(db_url)

    async def claims_held(claims: PgBucketClaims) -> int:
        return await admin.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1"
            " AND objid = 1 AND pid = $2", CLASS_ID, claims._conn.get_server_pid())  # fmt: skip

    try:
        assert await a.claim([1, 2], 2, yield_to=[1, 2]) == [1, 2]  # nobody waits: claimed
        assert await b.claim([1, 3], 2, wait=True) == [3] and b.waiting == set()  # busy
        assert await b.claim([1], 1, wait=True) == [] and b.waiting == {1}  # idle: waits
        # a's next flush of 1 claims it again before the last one's release, unless a's
        # turn is over while b waits: then a skips it.
        assert await a.claim([1], 1) == [1]
        assert await a.claim([1], 1, yield_to=[1]) == [] and a.waiting == set()
        assert await claims_held(a) == 1  # (only the claims a made; nothing for the skip)
        await a.release([1, 1])
        assert await b.claim([1], 1) == [1] and b.waiting == set()  # b's now
        assert await a.claim([1], 1, wait=True) == [] and a.waiting == {1}  # a idle: waits
        assert await b.claim([1], 1, yield_to=[1]) == []  # b's turn over: yields to a
        await b.release([1, 3])
        assert await a.claim([1], 1, yield_to=[1]) == [1] and a.waiting == set()
        waits = await admin.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1",
            WAIT_CLASS_ID)  # fmt: skip
        assert waits == 0  # every wait ended with the claim that took the bucket
    finally:
        await admin.close()
