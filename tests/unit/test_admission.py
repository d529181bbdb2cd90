"""query_api.admission: global and per-key limits for heavy reads."""

from __future__ import annotations

import asyncio

import pytest

from query_api.admission import Admission
from query_api.errors import ApiError


async def test_per_key_limit_refuses_at_once_with_retry_after() -> None:
    adm = Admission(limit=4, per_key=1, wait_s=0.05)
    async with adm.admit("k1", "exports"):
        with pytest.raises(ApiError) as info:
            async with adm.admit("k1", "exports"):
                pass
        assert info.value.status == 429 and info.value.headers["Retry-After"]
        async with adm.admit("k2", "exports"):  # another key is fine
            assert adm.running == 2
    assert adm.running == 0


async def test_global_limit_waits_briefly_then_refuses() -> None:
    adm = Admission(limit=1, per_key=0, wait_s=0.05)
    release = asyncio.Event()

    async def hold() -> None:
        async with adm.admit("a", "exports"):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    with pytest.raises(ApiError, match="at most 1 exports at once"):
        async with adm.admit("b", "exports"):
            pass
    release.set()
    await holder
    async with adm.admit("b", "exports"):  # a slot is free again
        assert adm.running == 1


async def test_one_key_cannot_pass_twice_while_waiting_for_a_slot() -> None:
    adm = Admission(limit=1, per_key=1, wait_s=0.2)
    release = asyncio.Event()

    async def use(key: str) -> str:
        try:
            async with adm.admit(key, "exports"):
                await release.wait()
                return "ran"
        except ApiError:
            return "refused"

    first = asyncio.create_task(use("other"))
    await asyncio.sleep(0)
    a, b = asyncio.create_task(use("k")), asyncio.create_task(use("k"))
    await asyncio.sleep(0.01)
    release.set()
    results = sorted(await asyncio.gather(a, b))
    await first
    assert results.count("refused") >= 1  # never both of one key at once
    assert adm.running == 0 and not adm._by_key
