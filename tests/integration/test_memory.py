"""Memory is bounded by bytes: a worker fed messages at the size limit stays under its bound.

The worker runs as its own process (``auditlog pipeline``) so its peak RSS (VmHWM) is its
own. Messages are preloaded into the stream, half valid events of ~50 KiB, half invalid
messages at the stream's size limit (dead letters), far more bytes than the budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from auditlog.embedded import free_port
from pipeline.source_nats import EVENT_MAX_MSG_SIZE, connect, ensure_stream
from tests.support.events import README_EVENT
from tests.support.service import admin_count, publish_all
from tests.support.waits import eventually

pytestmark = pytest.mark.integration

BUDGET = 16 * 1024 * 1024
# The bound this test holds the worker to: interpreter, libraries and pools (~110 MiB
# measured idle) plus a few budgets' worth of decoded and prepared copies.
RSS_BOUND_MIB = 110 + 6 * BUDGET // (1024 * 1024)
MESSAGES = 1600  # ~105 MiB in all, 6.5 budgets


def big_valid(i: int) -> bytes:
    doc = json.loads(README_EVENT)
    doc["tenant_id"] = f"t-mem-{i % 5}"
    doc["description"] = "d" * 4000
    doc["metadata"] = {"blob": "m" * 15_000, "i": i}
    doc["changes"] = {"old_value": {"v": "o" * 14_000}, "new_value": {"v": "n" * 14_000},
                      "changed_fields": ["v"]}  # fmt: skip
    return json.dumps(doc).encode()


def at_limit(i: int) -> bytes:
    return b'{"i": %d, "x": "' % i + b"y" * (EVENT_MAX_MSG_SIZE - 1024) + b'"}'


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def test_worker_rss_stays_bounded_at_the_size_limit(db_url, settings_factory) -> None:
    settings = settings_factory(db_url, max_inflight_bytes=BUDGET, dlq_max_bytes=256 << 20)
    nc = await connect(settings.nats_url, "mem-publisher")
    try:
        await ensure_stream(nc, settings)
        payloads = [big_valid(i) if i % 2 else at_limit(i) for i in range(MESSAGES)]
        assert max(map(len, payloads)) > EVENT_MAX_MSG_SIZE - 2048
        await publish_all(nc, settings.subject, payloads)
        env = dict(os.environ, AUDIT_METRICS_PORT=str(free_port()), AUDIT_LOG_LEVEL="WARNING")
        fields = (
            "database_url",
            "nats_url",
            "stream",
            "subject",
            "consumer",
            "dlq_stream",
            "dlq_subject",
            "max_inflight_bytes",
            "stream_max_bytes",
            "dlq_max_bytes",
        )
        for field in fields:  # fmt: skip
            env["AUDIT_" + field.upper()] = str(getattr(settings, field))
        proc = subprocess.Popen([sys.executable, "-m", "auditlog.cli", "pipeline"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        js = nc.jetstream()
        peak = 0.0

        async def backlog() -> tuple[int, int]:  # sampling the worker's RSS meanwhile
            nonlocal peak
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            peak = max(peak, peak_rss_mib(proc.pid))
            info = await js.consumer_info(settings.stream, settings.consumer)
            return info.num_pending, info.num_ack_pending

        try:
            await eventually(backlog, lambda b: b == (0, 0), timeout=180,
                             what="the backlog drained: (pending, ack pending)")  # fmt: skip
            peak = max(peak, peak_rss_mib(proc.pid))
        finally:
            proc.terminate()
            proc.wait(60)
        dlq = await js.stream_info(settings.dlq_stream)
    finally:
        await nc.close()
    assert await admin_count(db_url) == MESSAGES // 2
    assert dlq.state.messages == MESSAGES // 2
    print(f"worker peak RSS {peak:.0f} MiB (bound {RSS_BOUND_MIB} MiB, budget {BUDGET >> 20} MiB)")
    assert 0 < peak < RSS_BOUND_MIB
