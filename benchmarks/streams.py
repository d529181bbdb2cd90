"""Scenario *streams*: streams out (pipeline/streams.py) delivering to a local HTTPS
webhook receiver (its own process, TLS with a certificate made here, answering 200 at
once).

1. **delivery rate**: ``--per-stream`` events of one tenant stored, then one webhook
   stream from the beginning: events/s until its cursor reaches the head; then 10
   tenants' streams at once (aggregate and slowest);
2. **drain with streams**: ``auditlog pipeline`` (1 worker) drains ``--events`` events
   of ``--tenants`` tenants preloaded in JetStream, once with no stream and once with 10
   webhook streams on 10 of the tenants delivering while it drains (fresh database and
   stream each time): drain events/s of each, and how long after the drain the streams
   caught up.

    python -m benchmarks.streams --events 100000 --per-stream 20000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import nats

from benchmarks.common import (
    bench_servers,
    bench_settings,
    emit,
    fast_publish,
    fresh_database,
    start_pipeline,
    synthetic_events,
    tenant_ids,
)
from infra.db import create_pool
from infra.nats_streams import ensure_stream
from infra.settings import Settings
from pipeline import stream_store
from pipeline.flush import PartitionCache, write_batch
from pipeline.stages import Message, Valid, process
from pipeline.stream_secrets import SecretBox
from pipeline.streams import StreamAgent

FIGURES = {
    "delivery.one_stream_events_per_s": "one stream delivered nothing in time",
    "delivery.ten_streams_events_per_s": "ten streams delivered nothing in time",
    "drain.none.events_per_s": "the drain without streams was not timed",
    "drain.ten_streams.events_per_s": "the drain with 10 streams was not timed",
}
KEY = "6b" * 32
STREAMS = 10


# -- the receiver (its own process) -----------------------------------------------------------
def _certificate(root: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost/127.0.0.1 (the CA the agent trusts)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))  # fmt: skip
    cert_path, key_path = root / "cert.pem", root / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


def serve_receiver(port: int, cert: str, key: str) -> None:
    """Answer every POST with 200 at once (what the fastest receiver does)."""
    import ssl

    from aiohttp import web

    async def take(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/{tail:.*}", take)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    web.run_app(app, host="127.0.0.1", port=port, ssl_context=ctx, print=None, access_log=None)


@contextlib.contextmanager
def receiver(root: Path) -> Any:
    """(URL, CA file) of a receiver process, stopped afterwards."""
    from auditlog.embedded import free_port

    cert, key = _certificate(root)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.streams", "--serve-receiver",
                             str(port), str(cert), str(key)])  # fmt: skip
    try:
        import socket

        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.1)
        yield f"https://localhost:{port}/hook", str(cert)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


# -- helpers ----------------------------------------------------------------------------------
def _env(ca: str) -> dict[str, str]:
    return {"AUDIT_STREAMS_ALLOW_PRIVATE": "127.0.0.0/8,::1/128", "AUDIT_STREAMS_CA_FILE": ca,
            "AUDIT_STREAMS_SECRET_KEY": KEY}  # fmt: skip


async def _preload(dsn: str, payloads: list[bytes]) -> None:
    """Store ``payloads`` as the pipeline does (5,000 a transaction)."""
    now = dt.datetime.now(dt.UTC)
    items = [out.prepared for p in payloads
             if isinstance(out := process(Message(data=p), now), Valid)]  # fmt: skip
    pool = await create_pool(dsn, max_size=1)
    try:
        await PartitionCache().ensure(pool, [p.event for p in items])
        async with pool.acquire() as conn:
            for i in range(0, len(items), 5000):
                await write_batch(conn, items[i : i + 5000])
    finally:
        await pool.close()


async def _make_streams(dsn: str, tenants: list[str], url: str, start: str) -> list[str]:
    box = SecretBox(bytes.fromhex(KEY))
    conn = await asyncpg.connect(dsn)
    ids = []
    try:
        for i, tenant in enumerate(tenants):
            sid = f"st_{i:016x}"
            sealed = box.seal(sid, {"signing": [{"secret": f"whsec_bench_{i}", "until": None}]})
            await stream_store.insert(conn, sid, tenant, "webhook", "bench", {"url": url}, {},
                                      sealed, start)  # fmt: skip
            ids.append(sid)
    finally:
        await conn.close()
    return ids


async def _behind(conn: asyncpg.Connection) -> list[int]:
    rows = await conn.fetch("SELECT h.last_seq - s.last_seq AS behind FROM audit.streams s"
                            " JOIN audit.chain_heads h USING (tenant_id)")  # fmt: skip
    return [r["behind"] for r in rows]


async def _caught_up(conn: asyncpg.Connection) -> None:
    """Return once every stream's cursor is at its tenant's head."""
    while True:
        if max(await _behind(conn), default=0) <= 0:
            return
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _agent(settings: Settings) -> AsyncIterator[StreamAgent]:
    agent = StreamAgent(settings, settings.database_url, None, tick_s=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def _timed_delivery(dsn: str, n_streams: int) -> dict[str, float]:
    """Seconds until every stream's cursor reached its tenant's head (one agent, this
    process, as one `auditlog` process delivers); events/s over all streams."""
    conn = await asyncpg.connect(dsn)
    try:
        total = sum(await _behind(conn))
        started = time.perf_counter()
        await _caught_up(conn)
        seconds = time.perf_counter() - started
    finally:
        await conn.close()
    return {"streams": n_streams, "events": total, "seconds": round(seconds, 3),
            "events_per_s": round(total / seconds) if seconds else 0}  # fmt: skip


# -- 1. delivery rate -----------------------------------------------------------------------
async def delivery(server: str, url: str, ca: str, per_stream: int) -> dict[str, Any]:
    tenants = tenant_ids(STREAMS)
    dsn = await fresh_database(server, "bench_streams_delivery")
    payloads = [p for t in tenants for p in synthetic_events(per_stream, [t], seed=len(t))]
    await _preload(dsn, payloads)
    settings = Settings(database_url=dsn, streams_allow_private="127.0.0.0/8",
                        streams_ca_file=ca, streams_secret_key=KEY, streams_poll_ms=50)  # fmt: skip
    out: dict[str, Any] = {"batch_max_events": settings.streams_batch_max_events}
    await _make_streams(dsn, tenants[:1], url, "beginning")
    async with _agent(settings):
        one = await _timed_delivery(dsn, 1)
    out["one_stream"] = one
    out["one_stream_events_per_s"] = one["events_per_s"]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM audit.streams")
    finally:
        await conn.close()
    await _make_streams(dsn, tenants, url, "beginning")
    async with _agent(settings):
        ten = await _timed_delivery(dsn, STREAMS)
    out["ten_streams"] = ten
    out["ten_streams_events_per_s"] = ten["events_per_s"]
    out["ten_streams_per_stream_events_per_s"] = round(ten["events_per_s"] / STREAMS)
    return out


# -- 2. the drain with and without streams ------------------------------------------------------
async def drain(server: str, nurl: str, url: str, ca: str, payloads: list[bytes],
                tenants: list[str], streams: int) -> dict[str, Any]:  # fmt: skip
    dsn = await fresh_database(server, f"bench_streams_drain_{streams}")
    tag = f"S{os.getpid()}_{streams}"
    settings = bench_settings(dsn, nurl, tag, batch_max_events=5000)
    nc = await nats.connect(nurl)
    js = nc.jetstream()
    for s in (settings.stream, settings.dlq_stream):
        with contextlib.suppress(Exception):
            await js.delete_stream(s)
    await ensure_stream(nc, settings)
    if streams:
        await _make_streams(dsn, tenants[:streams], url, "now")
    await fast_publish(nurl, settings.subject, payloads)
    proc, _ = start_pipeline(settings, 1, AUDIT_CHECKPOINT_INTERVAL_S="0", **_env(ca))
    total = len(payloads)
    t_first = t_end = caught = None
    conn = await asyncpg.connect(dsn)
    try:
        while t_end is None:
            info = await js.consumer_info(settings.stream, settings.consumer)
            now = time.perf_counter()
            if t_first is None and info.num_pending < total:
                t_first = now
            if info.num_pending == 0 and info.num_ack_pending == 0:
                t_end = now
            if proc.poll() is not None:
                raise RuntimeError("pipeline exited early")
            await asyncio.sleep(0.05)
        behind_at_end = sum(await _behind(conn)) if streams else 0
        if streams:
            await _caught_up(conn)
        caught = time.perf_counter() - t_end
    finally:
        await conn.close()
        proc.terminate()
        proc.wait(60)
        await nc.close()
    assert t_first is not None
    seconds = t_end - t_first
    return {"streams": streams, "events": total, "seconds": round(seconds, 3),
            "events_per_s": round(total / seconds) if seconds else 0,
            "streams_behind_at_drain_end": behind_at_end,
            "streams_caught_up_s_after_drain": round(caught, 3) if streams else None}  # fmt: skip


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=100_000, help="events drained per run")
    ap.add_argument("--tenants", type=int, default=100, help="tenants of the drained events")
    ap.add_argument("--per-stream", type=int, default=20_000, help="events per delivery stream")
    ap.add_argument("--serve-receiver", nargs=3, metavar=("PORT", "CERT", "KEY"),
                    help=argparse.SUPPRESS)  # fmt: skip
    args = ap.parse_args()
    if args.serve_receiver:
        port, cert, key = args.serve_receiver
        serve_receiver(int(port), cert, key)
    else:
        asyncio.run(main(args))


async def main(args: argparse.Namespace) -> None:
    tenants = tenant_ids(args.tenants)
    payloads = list(synthetic_events(args.events, tenants))
    out: dict[str, Any] = {"tenants": args.tenants, "streamed_tenants": STREAMS}
    with (tempfile.TemporaryDirectory() as tmp, bench_servers() as (server, nurl),
          receiver(Path(tmp)) as (url, ca)):  # fmt: skip
        out["delivery"] = await delivery(server, url, ca, args.per_stream)
        print(f"  delivery: {json.dumps(out['delivery'])}", file=sys.stderr, flush=True)
        out["drain"] = {
            "none": await drain(server, nurl, url, ca, payloads, tenants, 0),
            "ten_streams": await drain(server, nurl, url, ca, payloads, tenants, STREAMS),
        }
    d = out["drain"]
    if d["none"]["events_per_s"]:
        d["ten_streams_over_none"] = round(d["ten_streams"]["events_per_s"]
                                           / d["none"]["events_per_s"], 3)  # fmt: skip
    emit(out, FIGURES)


if __name__ == "__main__":
    cli()
