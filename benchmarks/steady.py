"""Scenario *steady*: publishers at a fixed offered rate while the pipeline runs.

Publishes ~600-byte events over 1,000 tenants at ``--rate`` events/s for ``--seconds``
(paced every 5 ms, JetStream acks collected asynchronously), with one pipeline worker
process running. Measures the achieved commit rate over the offered window, consumer lag
(pending + unacked, sampled every 0.25 s), end-to-end latency per event and the worker's
peak RSS, plus its resident size every ``--rss-every`` seconds (``rss_series``) and the
growth of that per minute after the first fifth of the run (``rss_mib_per_min``: a leak
shows there in a long run).

How commits are observed: each event is published the way the write API publishes one
(``query_api.writes``): on its tenant's subject ``<subject>.<tenant token>``, with its id
as ``Audit-Idempotency-Key`` and ``<tenant>:<id>`` as ``Nats-Msg-Id``. The header opts
the event into the worker's commit notices (``pipeline.worker.waited_for``: the worker
announces only events a writer can wait for), so latency is publish → the notice naming
the event on the commit subject (JetStream, validation, chain, COPY, commit, ack), as a
waiting writer sees it. Events without the header are stored just the same but never
announced; if no notice arrives the scenario says which figures it could not measure
and exits with status 3 instead of reporting zeros.

    python -m benchmarks.steady --rate 5000 --seconds 30
    python -m benchmarks.steady --rate 10000 --seconds 600 --rss-every 5   # a soak
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from array import array
from typing import Any

import nats
from nats.js import JetStreamContext

from benchmarks.common import (
    bench_servers,
    bench_settings,
    emit,
    fresh_database,
    latency_summary,
    slope_per_minute,
    start_pipeline,
    stored_rows,
    synthetic_events,
    tenant_ids,
    wait_ready,
    worker_rss_kib,
)
from infra.settings import Settings
from pipeline.commits import decode_keys
from pipeline.source_nats import ensure_stream
from schemas.ids import IDEMPOTENCY_HEADER, msg_id_for, tenant_subject

TICK = 0.005
POOL = 100_000  # distinct event bodies; a longer run reuses them under new ids
_MARK = "00000000-0000-4000-8000-00000000beef"
_LOW62 = (1 << 62) - 1

# What the scenario exists for: missing any of these fails it (benchmarks.common.emit).
FIGURES = {
    "steady.achieved_per_s": "no commit observed while publishing (commit notices missing?)",
    "steady.committed_seen": "no commit notice named an offered event",
    "steady.latency_ms.p50": "no end-to-end latency sample",
    "steady.latency_ms.p99": "no end-to-end latency sample",
    "steady.lag_series": "consumer lag never sampled",
    "steady.peak_rss_mib": "worker RSS never read",
}


class Offered:
    """The offered events, made on demand: event ``i`` has the id ``UUID(int=i + 1,
    version=4)`` (the low 62 bits keep ``i + 1``, so a notice maps back to ``i`` without
    a table) and the body of template ``i % POOL``."""

    def __init__(self, n: int, seed: int = 3) -> None:
        self.n = n
        self.templates: list[tuple[bytes, bytes, str]] = []
        for raw in synthetic_events(min(n, POOL), tenant_ids(1000), seed=seed):
            doc = json.loads(raw)
            doc["id"] = _MARK
            head, tail = json.dumps(doc, separators=(",", ":")).encode().split(_MARK.encode())
            self.templates.append((head, tail, doc["tenant_id"]))

    def message(self, i: int, subject: str) -> tuple[str, bytes, dict[str, str]]:
        """(subject, payload, headers) of event ``i``, as the write API would publish it."""
        head, tail, tenant = self.templates[i % len(self.templates)]
        eid = str(uuid.UUID(int=i + 1, version=4))
        headers = {"Nats-Msg-Id": msg_id_for(tenant, eid), IDEMPOTENCY_HEADER: eid}
        return tenant_subject(subject, tenant), head + eid.encode() + tail, headers

    def index(self, eid: uuid.UUID) -> int | None:
        """The ``i`` of an offered event's id, None for any other id."""
        i = (eid.int & _LOW62) - 1
        return i if 0 <= i < self.n and eid == uuid.UUID(int=i + 1, version=4) else None


class Probe:
    """Publish times, commit notices and JetStream acks of one run."""

    def __init__(self, offered: Offered) -> None:
        self.offered = offered
        self.sent_at = array("d", bytes(8 * offered.n))  # 0.0: not sent, or already seen
        self.latency_ms = array("d")
        self.remaining = offered.n
        self.publishing = True
        self.in_window = 0  # commits seen while publishing
        self.acks = 0
        self.last_notice = time.perf_counter()

    async def on_commit(self, msg: nats.aio.msg.Msg) -> None:
        now = self.last_notice = time.perf_counter()
        for _tenant, eid in decode_keys(msg.data).ok:
            i = self.offered.index(eid)
            if i is None or not self.sent_at[i]:
                continue  # not ours, or a repeated notice (a redelivery)
            self.latency_ms.append((now - self.sent_at[i]) * 1000)
            self.sent_at[i] = 0.0
            self.remaining -= 1
            if self.publishing:
                self.in_window += 1

    async def on_ack(self, msg: nats.aio.msg.Msg) -> None:
        self.acks += 1


class Sampler:
    """Consumer lag every 0.25 s, the worker's resident size every ``rss_every`` s."""

    def __init__(self, js: JetStreamContext, settings: Settings, pid: int, t0: float,
                 rss_every: float) -> None:  # fmt: skip
        self.js, self.settings, self.pid, self.t0 = js, settings, pid, t0
        self.rss_every = rss_every
        self.lag: list[tuple[float, int]] = []
        self.rss: list[tuple[float, float]] = []
        self.peak_kib = 0

    async def run(self) -> None:
        next_rss = self.t0
        while True:
            now = time.perf_counter()
            with contextlib.suppress(Exception):
                info = await self.js.consumer_info(self.settings.stream, self.settings.consumer)
                self.lag.append((round(now - self.t0, 2),
                                 info.num_pending + info.num_ack_pending))  # fmt: skip
            self.peak_kib = max(self.peak_kib, worker_rss_kib(self.pid))
            if now >= next_rss:
                rss = worker_rss_kib(self.pid, "VmRSS")
                if rss:
                    self.rss.append((round(now - self.t0, 1), round(rss / 1024, 1)))
                next_rss += self.rss_every
            await asyncio.sleep(0.25)


async def offer(nc: nats.NATS, subject: str, offered: Offered, probe: Probe, inbox: str,
                rate: int, t0: float) -> float:  # fmt: skip
    """Publish every offered event at ``rate``/s from ``t0``; returns seconds taken."""
    i, n = 0, offered.n
    next_report = t0 + 5
    while i < n:
        now = time.perf_counter()
        due = min(n, int((now - t0) * rate) + 1)
        while i < due:
            subj, payload, headers = offered.message(i, subject)
            probe.sent_at[i] = time.perf_counter()
            await nc.publish(subj, payload, reply=f"{inbox}.{i}", headers=headers)
            i += 1
        if now >= next_report:
            print(f"  steady: offered {i:,}/{n:,}, committed {len(probe.latency_ms):,}",
                  file=sys.stderr, flush=True)  # fmt: skip
            next_report += 5
        await asyncio.sleep(TICK)
    t_pub = time.perf_counter() - t0
    probe.publishing = False
    return t_pub


async def settle(probe: Probe, sampler: Sampler, limit: float = 120.0, quiet: float = 5.0) -> None:
    """Wait until every offered event's notice came, or nothing is left in the stream and
    no notice came for ``quiet`` s (notices lost: waiting longer measures nothing), or
    ``limit`` s."""
    deadline = time.perf_counter() + limit
    probe.last_notice = max(probe.last_notice, time.perf_counter())
    while probe.remaining and time.perf_counter() < deadline:
        drained = bool(sampler.lag) and sampler.lag[-1][1] == 0
        if drained and time.perf_counter() - probe.last_notice > quiet:
            return
        await asyncio.sleep(0.1)


async def run(server: str, nurl: str, rate: int, seconds: float,
              rss_every: float = 1.0) -> dict[str, Any]:  # fmt: skip
    offered = Offered(int(rate * seconds))
    dsn = await fresh_database(server, "bench_steady")
    settings = bench_settings(dsn, nurl, f"S{os.getpid()}")
    nc = await nats.connect(nurl, pending_size=64 * 1024 * 1024)
    js = nc.jetstream()
    for s in (settings.stream, settings.dlq_stream):
        with contextlib.suppress(Exception):
            await js.delete_stream(s)
    await ensure_stream(nc, settings)
    probe = Probe(offered)
    await nc.subscribe(settings.commit_subject, cb=probe.on_commit)
    inbox = nc.new_inbox()
    await nc.subscribe(inbox + ".*", cb=probe.on_ack)
    proc, ready = start_pipeline(settings, 1)
    try:
        await wait_ready(ready)  # the worker has bound its consumer: offer load now
        t0 = time.perf_counter()
        sampler = Sampler(js, settings, proc.pid, t0, rss_every)
        sampling = asyncio.create_task(sampler.run())
        t_pub = await offer(nc, settings.subject, offered, probe, inbox, rate, t0)
        await settle(probe, sampler)
        sampling.cancel()
    finally:
        proc.terminate()
        proc.wait(60)
        await nc.close()
    return summary(rate, t_pub, probe, sampler, await stored_rows(dsn))


def summary(rate: int, t_pub: float, probe: Probe, sampler: Sampler, rows: int) -> dict[str, Any]:
    """The scenario's figures (achieved rate: commits seen while publishing / that time)."""
    n = probe.offered.n
    fit_from = t_pub / 5  # the first fifth is warm-up: caches, pools, partitions
    growth = slope_per_minute([(t, v) for t, v in sampler.rss if fit_from <= t <= t_pub])
    return {
        "offered_per_s": rate,
        "published_per_s": n / t_pub,
        "achieved_per_s": probe.in_window / t_pub,
        "events": n,
        "rows": rows,
        "jetstream_acks": probe.acks,
        "committed_seen": len(probe.latency_ms),
        "commits_observed_by": f"commit notices ({IDEMPOTENCY_HEADER} on every event)",
        "latency_ms": latency_summary(list(probe.latency_ms)),
        "max_lag": max((v for _, v in sampler.lag), default=0),
        "lag_series": sampler.lag,
        "peak_rss_mib": sampler.peak_kib / 1024,
        "rss_series": sampler.rss,
        "rss_mib_per_min": growth,
        "rss_fit_from_s": round(fit_from, 1),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rate", type=int, default=5000, help="offered events/s")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rss-every", type=float, default=1.0,
                    help="seconds between samples of the worker's resident size")  # fmt: skip
    args = ap.parse_args()
    with bench_servers() as (server, nurl):
        out = await run(server, nurl, args.rate, args.seconds, args.rss_every)
    emit({"steady": out}, FIGURES)


if __name__ == "__main__":
    asyncio.run(main())
