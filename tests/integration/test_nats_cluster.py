"""A three-node NATS cluster with R3 streams: the consumer's leader moves gracefully (409
Leadership Change), is then killed -9 mid-drain, and later the stream's leader while
publishing, each node started again later. Two worker processes (`auditlog pipeline`,
AUDIT_NATS_URL listing the three nodes) and a publisher run throughout: exactly N rows for
N acknowledged publishes, every chain verifies, no worker exits or restarts, each still
pulls after the faults, and neither storing nor publishing stops longer than an election
plus the ack wait (and a margin).

The streams are made R1 first (a backlog already in them) and the workers' start raises
them to R3 in place (AUDIT_STREAM_REPLICAS=3); a later start asking fewer never lowers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import asyncpg
import nats.errors
import pytest

from auditlog.embedded import free_port
from infra.errors import ConfigError
from infra.nats_streams import ensure_stream
from infra.settings import Settings
from infra.signing import load_signer
from ledger.chain import verify_tenant
from pipeline.source_nats import connect
from schemas.ids import msg_id_for
from tests.support.events import README_EVENT
from tests.support.nats_cluster import NatsCluster
from tests.support.waits import drained, eventually
from tests.support.workers import (
    NATS_ERRORS,
    StallMeter,
    WorkerProcess,
    gone,
    longest_gap,
    pipeline_env,
    publish_acked,
)

pytestmark = pytest.mark.integration
N = 8000
BACKLOG = 1000  # published before the workers start, into the R1 streams
TAIL = 1000  # published after the faults: every worker must still be pulling
RATE = 350.0  # events/s offered during the faults (~17 s), and for the tail
TENANTS = [f"cluster-{i:02d}" for i in range(40)]
ACK_WAIT_S = 4.0
# nats-server's raft: a follower calls an election after 4-9 s without its leader.
ELECTION_S = 9.0
# Reconnects, the credit of pull requests lost with a node (expiry + grace: 3 s), and a
# loaded 2-core machine.
MARGIN_S = 7.0
STALL_BOUND_S = ELECTION_S + ACK_WAIT_S + MARGIN_S
DOWN_S = 5.0  # how long a killed node stays down


def _events(first: int, last: int) -> list[tuple[bytes, dict[str, str]]]:
    out = []
    for i in range(first, last):
        doc = json.loads(README_EVENT)
        doc["tenant_id"] = TENANTS[i % len(TENANTS)]
        doc["description"] = f"cluster {i}"
        out.append((json.dumps(doc).encode(),
                    {"Nats-Msg-Id": msg_id_for(doc["tenant_id"], f"e{i}")}))  # fmt: skip
    return out


async def _leader(probe, what: str) -> str:
    info = await eventually(probe, lambda i: i.cluster is not None and i.cluster.leader,
                            timeout=60, interval=0.2, ignore=NATS_ERRORS,
                            what=f"the {what} has a leader")  # fmt: skip
    return str(info.cluster.leader)


async def _r3_current(js, stream: str) -> bool:
    info = await js.stream_info(stream)
    peers = (info.cluster.replicas or []) if info.cluster else []
    return (info.config.num_replicas == 3 and info.cluster.leader is not None
            and len(peers) == 2 and all(p.current for p in peers))  # fmt: skip


async def _raised_in_place(js, settings: Settings) -> None:
    """Wait until every stream is R3 with each copy current, and the consumer R3."""
    for stream in (settings.stream, settings.dlq_stream, settings.checkpoint_stream):
        await eventually(lambda s=stream: _r3_current(js, s), timeout=90, interval=0.5,
                         ignore=NATS_ERRORS,
                         what=f"stream {stream} R3, every copy current")  # fmt: skip
    consumer = await eventually(
        lambda: js.consumer_info(settings.stream, settings.consumer),
        lambda c: c.cluster is not None and len(c.cluster.replicas or []) == 2,
        timeout=60, interval=0.5, ignore=NATS_ERRORS, what="the consumer R3",
    )  # fmt: skip
    assert consumer.config.num_replicas == 3


async def _chaos(cluster: NatsCluster, nc, settings: Settings, acked: list[float],
                 meter: StallMeter) -> list[str]:  # fmt: skip
    """Move the consumer's leader gracefully, then kill it -9 (mid-drain), later the
    stream's leader (while publishing); each node is started again after DOWN_S."""
    js = nc.jetstream()
    faults: list[str] = []

    def consumer_info():
        return js.consumer_info(settings.stream, settings.consumer)

    def note(what: str) -> None:
        faults.append(f"{what} at {len(acked)} acked, {meter.count} stored")

    await eventually(lambda: len(acked), lambda n: n >= BACKLOG + (N - BACKLOG) // 6,
                     timeout=120, what="a sixth published")  # fmt: skip
    # Graceful: its waiting pull requests end with 409 Leadership Change.
    leader = await _leader(consumer_info, "consumer")
    stepdown = f"$JS.API.CONSUMER.LEADER.STEPDOWN.{settings.stream}.{settings.consumer}"
    await eventually(lambda: nc.request(stepdown, b"", timeout=5), timeout=60, interval=0.5,
                     ignore=NATS_ERRORS, what="the consumer's leader steps down")  # fmt: skip
    note(f"consumer leader {leader} stepped down")
    await asyncio.sleep(2)
    for what, probe in (("consumer", consumer_info),
                        ("stream", lambda: js.stream_info(settings.stream))):  # fmt: skip
        leader = await _leader(probe, what)
        cluster.kill(cluster.node(leader))
        note(f"{what} leader {leader} killed")
        await asyncio.sleep(DOWN_S)
        cluster.start(cluster.node(leader))
        await asyncio.sleep(2)
    return faults


async def _chains_verify(db_url: str) -> None:
    app = await asyncpg.connect(db_url, server_settings={"role": "auditlog_app"})
    try:
        for tenant in TENANTS:
            async with app.transaction():
                await app.execute("SELECT set_config('audit.tenant_id', $1, true)", tenant)
                report = await verify_tenant(app, tenant)
            assert report.ok and report.events == N // len(TENANTS), report
    finally:
        await app.close()


async def test_r3_streams_ride_out_leader_kills(db_url: str, settings_factory,
                                                tmp_path: Path) -> None:  # fmt: skip
    began = time.monotonic()
    cluster = NatsCluster(tmp_path / "nats")
    cluster.start()
    settings = settings_factory(db_url, nats_url=cluster.url, state_dir=str(tmp_path / "state"))
    load_signer(settings)  # one signing key for both workers' checkpointers
    nc = await connect(settings.nats_url, "cluster-publisher")  # the URL list
    js = nc.jetstream()
    env = pipeline_env(settings, AUDIT_ACK_WAIT_S=str(ACK_WAIT_S), AUDIT_STREAM_REPLICAS="3",
                       AUDIT_LOG_LEVEL="WARNING", AUDIT_STREAM_MAX_BYTES=str(64 << 20),
                       AUDIT_DLQ_MAX_BYTES=str(16 << 20), AUDIT_CHECKPOINT_INTERVAL_S="1",
                       AUDIT_BATCH_MAX_EVENTS="1000")  # fmt: skip
    workers: list[WorkerProcess] = []
    admin = await asyncpg.connect(db_url)
    acked: list[float] = []
    try:
        await cluster.jetstream_ready(nc)
        await eventually(lambda: ensure_stream(nc, settings), lambda _: True, timeout=60,
                         interval=0.5, ignore=NATS_ERRORS, what="R1 streams made")  # fmt: skip
        assert (await js.stream_info(settings.stream)).config.num_replicas == 1
        await publish_acked(nc, settings.subject, _events(0, BACKLOG), acked)
        workers = [WorkerProcess(env, tmp_path / f"worker-{i}.log") for i in range(2)]
        await _raised_in_place(js, settings)  # by the workers' start
        print(f"\nstreams and consumer R3, copies current, {time.monotonic() - began:.1f} s in")

        async def count() -> int:
            assert not gone(workers), gone(workers)
            return int(await admin.fetchval("SELECT count(*) FROM audit.events"))

        meter = StallMeter(count, lambda: len(acked))
        stored_before: list[float] = []

        async def publish() -> list[str]:
            publisher = publish_acked(nc, settings.subject, _events(BACKLOG, N - TAIL), acked,
                                      RATE)  # fmt: skip
            faults, _ = await asyncio.gather(_chaos(cluster, nc, settings, acked, meter),
                                             publisher)  # fmt: skip
            stored_before.extend(w.stored() for w in workers)
            await publish_acked(nc, settings.subject, _events(N - TAIL, N), acked, RATE)
            return faults

        task = asyncio.create_task(publish())
        await eventually(meter.sample, lambda n: n >= N and task.done(), timeout=180,
                         interval=0.1, what=f"all {N} stored")  # fmt: skip
        faults = await task
        publishing = longest_gap(acked[BACKLOG : N - TAIL])  # while the faults happened
        print("\n".join(faults))
        print(f"all {N} stored {time.monotonic() - began:.1f} s in; longest stall: storing "
              f"{meter.longest:.2f} s, publishing {publishing:.2f} s "
              f"(bound {STALL_BOUND_S:.0f} s)")  # fmt: skip
        assert len(faults) == 3 and len(acked) == N
        await drained(settings, nc, timeout=120)
        assert await admin.fetchval("SELECT count(*) FROM audit.events") == N
        twice = await admin.fetchval("SELECT count(*) FROM (SELECT 1 FROM audit.events"
                                     " GROUP BY tenant_id, id HAVING count(*) > 1) d")  # fmt: skip
        assert twice == 0
        assert meter.longest <= STALL_BOUND_S, f"nothing stored for {meter.longest:.1f} s"
        assert publishing <= STALL_BOUND_S, f"no publish acknowledged for {publishing:.1f} s"
        for w, stored in zip(workers, stored_before, strict=True):
            assert not w.why_gone() and w.restarts() == 0, w.why_gone() or w.tail()
            assert w.stored() > stored, f"no longer pulling after the faults: {w.tail()}"
        await _chains_verify(db_url)
        # A process asking fewer copies leaves them be.
        await ensure_stream(nc, settings.replace(stream_replicas=1))
        assert (await js.stream_info(settings.stream)).config.num_replicas == 3
        assert (await js.consumer_info(settings.stream, settings.consumer)).config.num_replicas == 3
    finally:
        for w in workers:
            w.stop()
        await admin.close()
        await nc.close()
        cluster.stop()


async def test_a_single_server_refuses_replicas(nats_url: str, settings_factory) -> None:
    """Replicas asked of a server that is not clustered are a configuration error, for a
    new stream and for an existing one alike (no retry can help). The connection is made
    through a list whose other node is down (it starts all the same)."""
    settings = settings_factory("postgresql://unused@127.0.0.1/x", stream_replicas=3)
    down = f"nats://127.0.0.1:{free_port()}"
    nc = await asyncio.wait_for(connect(f"{down},{nats_url}", "replicas-refused"), 30)
    try:
        with pytest.raises(ConfigError) as new:
            await ensure_stream(nc, settings)
        assert new.value.setting == "AUDIT_STREAM_REPLICAS"
        assert "not clustered" in str(new.value)
        await ensure_stream(nc, settings.replace(stream_replicas=1))
        with pytest.raises(ConfigError) as existing:
            await ensure_stream(nc, settings)
        assert existing.value.setting == "AUDIT_STREAM_REPLICAS"
        assert (await nc.jetstream().stream_info(settings.stream)).config.num_replicas == 1
    finally:
        js = nc.jetstream()
        for stream in (settings.stream, settings.dlq_stream):
            with contextlib.suppress(nats.errors.Error):
                await js.delete_stream(stream)
        await nc.close()
