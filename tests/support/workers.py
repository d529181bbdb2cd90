"""``auditlog pipeline`` worker processes for fault tests, and measuring their stalls.

:class:`WorkerProcess` runs one worker with a settings' names in its environment, its log
in a file (a pipe could fill up and block it) and its ``/metrics`` on a port of its own.
:class:`StallMeter` samples the stored count and keeps the longest time nothing was
stored while acknowledged events waited; :func:`publish_acked` publishes, retrying each
event (its ``Nats-Msg-Id`` kept) until every one is acknowledged.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats.errors
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families

from auditlog.embedded import free_port
from infra.settings import Settings

NATS_ERRORS = (nats.errors.Error, OSError, TimeoutError)
_NAMES = ("database_url", "nats_url", "stream", "subject", "consumer", "dlq_stream",
          "dlq_subject", "commit_subject", "checkpoint_stream", "checkpoint_subject",
          "state_dir")  # fmt: skip


def pipeline_env(settings: Settings, **extra: str) -> dict[str, str]:
    """This environment without ``AUDIT_*``, then ``settings``' servers, names and state
    dir, then ``extra`` (``AUDIT_...=value``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    for field in _NAMES:
        env["AUDIT_" + field.upper()] = str(getattr(settings, field))
    env.update(extra)
    return env


class WorkerProcess:
    """One ``auditlog pipeline`` process (one worker), started at once.

    Args:
        env: its environment (:func:`pipeline_env`); ``AUDIT_METRICS_PORT`` is set here.
        log: where its stdout and stderr go.
    """

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "auditlog.cli", "pipeline"],
                env=dict(env, AUDIT_METRICS_PORT=str(self.port)), stdout=out, stderr=out,
                start_new_session=True,
            )  # fmt: skip

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None

    def tail(self) -> str:
        """The end of its log (for failure messages)."""
        return self.log.read_text(errors="replace")[-4000:]

    def metric(self, name: str, **labels: str) -> float:
        """Sample ``name`` (with these labels) of its ``/metrics``; 0 when absent."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0

    def stored(self) -> float:
        """Events it committed (``auditlog_events_stored_total``)."""
        return self.metric("auditlog_events_stored_total", source="nats")

    def restarts(self) -> float:
        """Times its worker failed and was restarted in-process."""
        return self.metric("auditlog_internal_errors_total", stage="worker")

    def why_gone(self) -> str:
        """'' while it runs; else its exit status and the end of its log, whole (an
        assertion message that pytest does not shorten)."""
        code = self.proc.poll()
        if code is None:
            return ""
        return f"worker {self.log.name} exited with {code}; its log ends:\n{self.tail()}"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a minute."""
        if self.alive():
            self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class StallMeter:
    """The longest time without a new stored row while acknowledged events waited
    unstored (time with nothing to store is no stall).

    Args:
        count: reads how many events are stored (errors propagate: the caller decides).
        acked: how many events are acknowledged to producers by now.
    """

    def __init__(self, count: Callable[[], Awaitable[int]], acked: Callable[[], int]) -> None:
        self._count = count
        self._acked = acked
        self.count = 0
        self.last_change = time.monotonic()
        self.longest = 0.0

    async def sample(self) -> int:
        """Read the count and update the longest stall; returns the count."""
        waiting = self._acked()  # before the count: what was acknowledged by now
        count = await self._count()
        now = time.monotonic()
        if count != self.count:
            self.longest = max(self.longest, now - self.last_change)
            self.count, self.last_change = count, now
        elif count >= waiting:
            self.last_change = now
        return count


def gone(workers: list[WorkerProcess]) -> str:
    """'' while every worker runs; else why each gone one ended (:meth:`WorkerProcess.why_gone`)."""
    return "\n".join(filter(None, (w.why_gone() for w in workers)))


def longest_gap(times: list[float]) -> float:
    """The longest interval between successive ``times``."""
    return max((b - a for a, b in itertools.pairwise(sorted(times))), default=0.0)


async def publish_acked(nc: Client, subject: str, events: list[tuple[bytes, dict[str, str]]],
                        acked: list[float], rate: float | None = None) -> None:  # fmt: skip
    """Publish ``events`` (payload, headers with a ``Nats-Msg-Id``), paced at ``rate``/s
    when given, each retried until JetStream acknowledges it (an election or an outage
    refuses or loses some; the id keeps a retry from being stored twice). ``acked`` gets
    the time of each acknowledgement."""
    js = nc.jetstream()
    slots = asyncio.Semaphore(64)
    started = time.monotonic()

    async def one(data: bytes, headers: dict[str, str]) -> None:
        async with slots:
            while True:
                try:
                    await js.publish(subject, data, headers=headers, timeout=2)
                    acked.append(time.monotonic())
                    return
                except NATS_ERRORS:
                    await asyncio.sleep(0.2)

    tasks = []
    for i, (data, headers) in enumerate(events):
        if rate:
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
        tasks.append(asyncio.create_task(one(data, headers)))
    await asyncio.gather(*tasks)
