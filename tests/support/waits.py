"""Waiting in tests: one poll, :func:`eventually`, and the drained-consumer waits.

A test that waits for something polls it through :func:`eventually` (or
:func:`eventually_sync` in synchronous code): on time-out it raises ``AssertionError``
saying what it waited for and the last value it saw, instead of falling through.

"Nothing more will arrive" is never a sleep: :func:`drained` waits until the JetStream
consumers have nothing pending and nothing awaiting an ack (a message is acked only after
its commit, so once drained every delivery has been stored or dead-lettered);
:func:`kafka_drained` waits until a Kafka group has committed every record.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
import nats.errors
from nats.aio.client import Client

from infra.settings import Settings
from pipeline.source_nats import nats_options

T = TypeVar("T")
_SHOWN = 3000  # characters of the last observed value shown in a failure


def _show(value: object) -> str:
    text = repr(value)
    if len(text) <= _SHOWN:
        return text
    return f"{text[: _SHOWN // 3]} ... {text[-2 * _SHOWN // 3 :]}"


def _timed_out(what: str, timeout: float, last: object) -> AssertionError:
    return AssertionError(f"{what}: not true after {timeout:g}s; last observed: {_show(last)}")


async def eventually(
    probe: Callable[[], T | Awaitable[T]],
    predicate: Callable[[T], object] = bool,
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``probe`` (sync or async) every ``interval`` seconds until ``predicate`` holds
    for its value; return that value.

    Exceptions of the ``ignore`` types count as "not yet" (a server still starting, a
    database away during a fault test). The probe runs at least once, and once more at
    the deadline.

    Raises:
        AssertionError: not true within ``timeout``: says ``what`` and the last value (or
            ignored exception) observed.
    """
    deadline = time.monotonic() + timeout
    while True:
        failed: BaseException | None = None
        try:
            value: Any = probe()
            if inspect.isawaitable(value):
                value = await value
        except ignore as exc:
            failed = value = exc
        else:
            if predicate(value):
                return value
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, value) from failed
        await asyncio.sleep(interval)


def eventually_sync(
    probe: Callable[[], T],
    predicate: Callable[[T], object] = bool,
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """:func:`eventually` for synchronous tests and fixtures (the probe is a plain call).

    Raises:
        AssertionError: not true within ``timeout`` (``what`` and the last value observed).
    """
    deadline = time.monotonic() + timeout
    while True:
        failed: BaseException | None = None
        try:
            value: Any = probe()
        except ignore as exc:
            failed = value = exc
        else:
            if inspect.isawaitable(value):
                raise TypeError("eventually_sync() got an async probe: use eventually()")
            if predicate(value):
                return value
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, value) from failed
        time.sleep(interval)


async def drained(settings: Settings, nc: Client | None = None, *,
                  timeout: float = 60.0) -> dict[str, tuple[int, int]]:  # fmt: skip
    """Wait until every consumer of ``settings.stream`` has no message pending and none
    awaiting an ack; return {consumer: (pending, ack pending)}.

    Uses ``nc`` (or a connection of its own, with ``settings``' credentials). Errors
    while NATS is away count as "not yet".

    Raises:
        AssertionError: not drained within ``timeout`` (the last states observed).
    """
    own = nc is None
    conn = nc or await nats.connect(settings.nats_url, **nats_options(settings))
    js = conn.jetstream()

    async def states() -> dict[str, tuple[int, int]]:
        infos = await js.consumers_info(settings.stream)
        return {i.name: (int(i.num_pending or 0), int(i.num_ack_pending or 0)) for i in infos}

    try:
        return await eventually(
            states, lambda s: bool(s) and all(v == (0, 0) for v in s.values()),
            timeout=timeout, interval=0.1, ignore=(nats.errors.Error, OSError, TimeoutError),
            what=f"consumers of {settings.stream} drained: {{name: (pending, ack pending)}}",
        )  # fmt: skip
    finally:
        if own:
            await conn.close()


async def kafka_drained(bootstrap: str, group: str, topic: str, partitions: int, total: int,
                        *, timeout: float = 60.0) -> dict[int, int]:  # fmt: skip
    """Wait until ``group`` has committed offsets past all ``total`` records of ``topic``
    (a Kafka worker commits only what it stored or dead-lettered); return the offsets.

    Raises:
        AssertionError: not drained within ``timeout`` (the last offsets observed).
    """
    from tests.tansu import group_offsets

    async with group_offsets(bootstrap, group, topic, partitions) as read:
        return await eventually(
            read, lambda o: sum(o.values()) >= total, timeout=timeout, interval=0.2,
            ignore=(OSError,), what=f"group {group} committed all {total} records of {topic}",
        )  # fmt: skip
