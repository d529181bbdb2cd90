"""The write API's pipelined JetStream publisher against a real NATS server."""

from __future__ import annotations

import nats
import pytest

from pipeline.source_nats import ensure_stream
from query_api.publisher import Ack, Publisher, PublishError

pytestmark = pytest.mark.integration


async def test_acks_duplicates_and_refusals(settings_factory, nats_url) -> None:
    settings = settings_factory("postgresql://unused")
    nc = await nats.connect(nats_url)
    await ensure_stream(nc, settings)
    pub = Publisher(nc)
    await pub.start()
    try:
        sent = await pub.publish_many([(settings.subject, b"{}", {"Nats-Msg-Id": f"m{i % 3}"})
                                       for i in range(6)])  # fmt: skip
        acks = await pub.settle_many(sent, within=5)
        assert all(isinstance(a, Ack) for a in acks)
        assert [a.duplicate for a in acks] == [False] * 3 + [True] * 3  # type: ignore[union-attr]
        assert len({a.seq for a in acks}) == 3  # type: ignore[union-attr]
        # No stream listens on this subject: a clear error, not a hang.
        (refused,) = await pub.settle_many(await pub.publish_many([("nowhere.at.all", b"{}", {})]),
                                           within=5)  # fmt: skip
        assert isinstance(refused, PublishError) and "no JetStream stream" in str(refused)
    finally:
        await pub.stop()
        await nc.close()


async def test_unacknowledged_publishes_time_out(settings_factory, nats_url) -> None:
    nc = await nats.connect(nats_url)
    pub = Publisher(nc)
    await pub.start()
    try:
        # A core subscriber that never answers stands in for a JetStream that does not ack.
        async def ignore(msg: object) -> None:
            return None

        await nc.subscribe("silent.subject", cb=ignore)
        (late,) = await pub.settle_many(await pub.publish_many([("silent.subject", b"{}", {})]),
                                        within=0.3)  # fmt: skip
        assert isinstance(late, PublishError) and "no JetStream ack" in str(late)
        assert not pub._pending
        # A batch: each message says so.
        sent = await pub.publish_many([("silent.subject", b"{}", {}) for _ in range(3)])
        late_ones = await pub.settle_many(sent, within=0.3)
        assert all(isinstance(x, PublishError) and "no JetStream ack" in str(x) for x in late_ones)
        assert not pub._pending
    finally:
        await pub.stop()
        await nc.close()


@pytest.mark.parametrize("fast", [True, False])
async def test_a_batch_in_one_write_gets_each_messages_answer(settings_factory, nats_url,
                                                              fast: bool) -> None:  # fmt: skip
    """publish_many: acks (and duplicates) per message, a subject no stream listens on
    refused with a clear error, and what publish() would refuse refused alone (a subject
    with a space, a payload over the server's limit); the others still go. On the
    service's client (``fast``) the acks arrive through the scanned-frame path."""
    from pipeline.nats_fast import FastClient
    from pipeline.source_nats import connect

    settings = settings_factory("postgresql://unused")
    nc = await (connect(nats_url, "publisher-test") if fast else nats.connect(nats_url))
    assert isinstance(nc, FastClient) == fast
    await ensure_stream(nc, settings)
    pub = Publisher(nc)
    await pub.start()
    try:
        too_big = b"x" * (nc.max_payload + 1)
        msgs = [(settings.subject, b"{}", {"Nats-Msg-Id": f"b{i % 4}"}) for i in range(8)]
        msgs += [("nowhere.at.all", b"{}", {}), ("bad subject", b"{}", {}),
                 (settings.subject, too_big, {}),
                 (settings.subject, b"{}", {"Nats-Msg-Id": "b9"})]  # fmt: skip
        sent = await pub.publish_many(msgs)
        # Refused before sending: answered at once.
        assert isinstance(sent.answers[9], nats.errors.BadSubjectError)
        assert isinstance(sent.answers[10], nats.errors.MaxPayloadError)
        assert sent.waiting == 10
        acks = await pub.settle_many(sent, within=5)
        assert sent.done.done() and sent.waiting == 0
        assert [a.duplicate for a in acks[:8]] == [False] * 4 + [True] * 4  # type: ignore[union-attr]
        assert isinstance(acks[8], PublishError) and "no JetStream stream" in str(acks[8])
        assert isinstance(acks[11], Ack) and not acks[11].duplicate
        assert len({a.seq for a in acks if isinstance(a, Ack)}) == 5
        assert not pub._pending
    finally:
        await pub.stop()
        await nc.close()
