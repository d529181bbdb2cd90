"""pipeline.source_nats's pull loop against a fake client: no pull request while the client
is disconnected (nats-py would buffer it and send it stale after the reconnect), a 503 (no
consumer leader: an election) ends a request and pauses the next one, a 409 (e.g.
Leadership Change) ends it and the next goes out at once, and an error inside the loop
does not end it. A URL list that does not parse is a configuration error, not an outage."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from nats.aio.msg import Msg

from infra.errors import ConfigError
from infra.settings import Settings
from pipeline.pull_credit import REQUEST_EXPIRES_S
from pipeline.source_nats import UNANSWERED_PAUSE_S, JetStreamSource, connect
from tests.support.waits import eventually


class _Sub:
    async def unsubscribe(self) -> None:
        pass


class FakeNats:
    """What the source uses of a nats-py client; pull requests are recorded with when."""

    def __init__(self, connected: bool = True) -> None:
        self.is_connected = connected
        self.requests: list[tuple[float, dict[str, Any]]] = []
        self.cb: Any = None
        self.payload_errors = 0  # reading max_payload raises this many times

    @property
    def max_payload(self) -> int:
        if self.payload_errors:
            self.payload_errors -= 1
            raise RuntimeError("a bug inside the pull loop")
        return 1 << 20

    def new_inbox(self) -> str:
        return "_INBOX.test"

    async def subscribe(self, subject: str, cb: Any = None, **_: Any) -> _Sub:
        self.cb = cb
        return _Sub()

    async def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        self.requests.append((time.monotonic(), json.loads(payload)))

    async def status(self, code: str, description: str = "") -> None:
        """The server ends a pull request with ``code``."""
        headers = {"Status": code, "Description": description}
        await self.cb(Msg(_client=self, subject="_INBOX.test", reply="", data=b"",  # type: ignore[arg-type]
                          headers=headers))  # fmt: skip


def _source(nc: FakeNats) -> JetStreamSource:
    # 100 in flight, batches of up to 2000: one request of 100 at a time.
    return JetStreamSource(nc, Settings(), max_inflight=100)  # type: ignore[arg-type]


async def _requests(nc: FakeNats, n: int) -> None:
    await eventually(lambda: len(nc.requests), lambda k: k >= n, timeout=10,
                     what=f"{n} pull request(s)")  # fmt: skip


async def test_no_pull_request_while_disconnected() -> None:
    nc = FakeNats(connected=False)
    source = _source(nc)
    await source.start()
    try:
        await asyncio.sleep(0.6)  # an absence: several turns of the loop ask nothing
        assert nc.requests == []
        nc.is_connected = True
        await _requests(nc, 1)
        assert nc.requests[0][1]["batch"] == 100
    finally:
        await source.stop()


async def test_503_pauses_the_next_request_and_409_does_not() -> None:
    nc = FakeNats()
    source = _source(nc)
    await source.start()
    try:
        await _requests(nc, 1)
        ended = time.monotonic()
        await nc.status("503")  # no responders: the consumer has no leader yet
        await _requests(nc, 2)
        # Not at once (an election takes seconds), but long before the request's expiry.
        assert UNANSWERED_PAUSE_S * 0.9 <= nc.requests[1][0] - ended < REQUEST_EXPIRES_S
        ended = time.monotonic()
        await nc.status("409", "Leadership Change")
        await _requests(nc, 3)
        assert nc.requests[2][0] - ended < UNANSWERED_PAUSE_S
        await nc.status("100", "Idle Heartbeat")  # ends nothing: no new request
        await asyncio.sleep(0.3)
        assert len(nc.requests) == 3
    finally:
        await source.stop()


async def test_an_error_inside_the_pull_loop_does_not_end_it() -> None:
    nc = FakeNats()
    nc.payload_errors = 2
    source = _source(nc)
    await source.start()
    try:
        await _requests(nc, 1)
        assert nc.payload_errors == 0
    finally:
        await source.stop()


async def test_a_url_list_that_does_not_parse_is_a_configuration_error() -> None:
    # Not an outage to wait out: the start stops, naming the variable.
    with pytest.raises(ConfigError) as info:
        await connect("nats://n1:4222;nats://n2:4222", "test")
    assert info.value.setting == "AUDIT_NATS_URL"
