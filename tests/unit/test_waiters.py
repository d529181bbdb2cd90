"""query_api.waiters: requests waiting for their keys' commit notices."""

from __future__ import annotations

import asyncio
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from query_api.waiters import STORED, Waiters

KEYS = [(f"t{i % 3}", uuid.UUID(int=i)) for i in range(8)]
_KEYS = st.lists(st.sampled_from(KEYS), max_size=6)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("expect"), _KEYS),
        st.tuples(st.just("stored"), _KEYS),
        st.tuples(st.just("refused"), _KEYS),
        st.tuples(st.just("forget"), st.integers(0, 20)),
        st.tuples(st.just("own"), st.integers(0, 20)),  # the request settles a key itself
    ),
    max_size=30,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_each_request_hears_each_of_its_keys_once_and_nothing_leaks(steps) -> None:
    """Any interleaving of requests, notices, keys a request settles itself (stored
    before) and requests ending: a key's outcome is the first one after the request began
    (stored, or the reason); ``done`` is set exactly when no key of the request waits; once
    every request ended nothing is kept."""

    async def go() -> None:
        waiters = Waiters()
        live: list = []  # (awaited, expected outcomes, forgotten)
        for kind, arg in steps:
            if kind == "expect":
                live.append([waiters.expect(list(arg)), [None] * len(arg), False])
            elif kind in ("stored", "refused"):
                if kind == "stored":
                    waiters.committed(arg)
                else:
                    waiters.committed([], [(k, "why") for k in arg])
                for awaited, expected, forgotten in live:
                    for i, key in enumerate(awaited.keys):
                        if key in arg and expected[i] is None and not forgotten:
                            expected[i] = STORED if kind == "stored" else "why"
            elif kind == "own" and live:
                awaited, expected, _ = live[arg % len(live)]
                if awaited.keys:
                    i = arg % len(awaited.keys)
                    awaited.settle(i, STORED)
                    expected[i] = expected[i] if expected[i] is not None else STORED
            elif kind == "forget" and live:
                entry = live[arg % len(live)]
                waiters.forget(entry[0])
                entry[2] = True
            for awaited, expected, _ in live:
                assert awaited.outcomes == expected
                assert awaited.done.done() == all(o is not None for o in expected)
        for awaited, _, _ in live:
            waiters.forget(awaited)
        assert len(waiters) == 0

    asyncio.run(go())
