"""CLI commands that talk to NATS and PostgreSQL directly: dlq, partitions, publish, doctor."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import click
import nats
from nats.js.errors import NotFoundError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from auditlog.endpoints import api_ssl, api_url, database_url, nats_url
from infra.errors import AuditLogError
from infra.migrate import is_current
from infra.settings import Settings, nats_servers
from pipeline.dlq import is_truncated, replay_headers, replay_subject
from pipeline.source_nats import nats_options
from pipeline.synthetic import synthetic_events, tenant_ids

README_EVENT = {
    "tenant_id": "7e4e4e93-94ec-45bd-87ce-88ce3f689e3c",
    "action": "user.login",
    "category": "CATEGORY_AUTH",
    "severity": "SEVERITY_INFO",
    "actor": {"type": "ACTOR_TYPE_USER", "id": "user-123", "display_name": "Jane Doe"},
    "primary_resource": {"type": "user", "id": "user-123"},
    "description": "Successful portal login",
    "metadata": {"ip": "192.0.2.10"},
}


async def _nats(settings: Settings) -> Any:
    """A short-lived client that fails fast (inspection must not hang on a dead server)."""
    url = nats_url(settings)
    try:
        return await asyncio.wait_for(
            nats.connect(nats_servers(url), allow_reconnect=False, connect_timeout=3,
                         max_reconnect_attempts=0, **nats_options(settings)),
            timeout=5)  # fmt: skip
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise ConnectionError(f"NATS at {url} unreachable ({type(exc).__name__})") from exc


def _run(ctx: click.Context, coro_fn: Any, *args: Any) -> Any:
    settings: Settings = ctx.obj
    try:
        return asyncio.run(coro_fn(settings, *args))
    except AuditLogError as exc:
        raise click.ClickException(str(exc)) from exc
    except (OSError, nats.errors.NoServersError) as exc:
        raise click.ClickException(f"cannot connect: {exc}") from exc


# -- dead letters --------------------------------------------------------------------------
@click.group()
def dlq() -> None:
    """Inspect and replay dead letters (stream AUDIT_DLQ)."""


async def _dlq_messages(settings: Settings, seqs: tuple[int, ...] = ()) -> list[Any]:
    nc = await _nats(settings)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(settings.dlq_stream)
        except NotFoundError:
            return []
        wanted = seqs or range(info.state.first_seq, info.state.last_seq + 1)
        out = []
        for seq in wanted:
            try:
                out.append(await js.get_msg(settings.dlq_stream, seq))
            except NotFoundError:
                if seqs:
                    raise click.ClickException(f"no dead letter with sequence {seq}") from None
        return out
    finally:
        await nc.close()


@dlq.command("list")
@click.pass_context
def dlq_list(ctx: click.Context) -> None:
    """One line per dead letter: sequence, time, reason, field, message."""
    msgs = _run(ctx, _dlq_messages)
    table = Table("seq", "time", "reason", "stage", "field", "message")
    for m in msgs:
        h = m.headers or {}
        table.add_row(str(m.seq), h.get("Audit-Dlq-Time", ""), h.get("Audit-Dlq-Reason", ""),
                      h.get("Audit-Dlq-Stage", ""), h.get("Audit-Dlq-Field", ""),
                      h.get("Audit-Dlq-Message", "")[:80])  # fmt: skip
    Console().print(table)
    click.echo(f"{len(msgs)} dead letter(s)")


@dlq.command("show")
@click.argument("seq", type=int)
@click.pass_context
def dlq_show(ctx: click.Context, seq: int) -> None:
    """Headers and original bytes of dead letter SEQ."""
    (m,) = _run(ctx, _dlq_messages, (seq,))
    for k, v in sorted((m.headers or {}).items()):
        click.echo(f"{k}: {v}")
    click.echo("")
    click.echo(m.data.decode(errors="replace"))


async def _replay(settings: Settings, seqs: tuple[int, ...], fixed: bytes | None,
                  keep: bool) -> int:  # fmt: skip
    msgs = await _dlq_messages(settings, seqs)
    nc = await _nats(settings)
    try:
        js = nc.jetstream()
        for m in msgs:
            dead_headers = m.headers or {}
            if fixed is None and is_truncated(dead_headers):
                raise click.ClickException(
                    f"dead letter {m.seq} holds a trimmed body (originally "
                    f"{dead_headers.get('Audit-Dlq-Original-Size')} bytes): replay it with "
                    "--fixed-file"
                )
            headers = replay_headers(dead_headers, settings.dlq_stream, m.seq)
            await js.publish(replay_subject(dead_headers, settings.subject),
                             fixed if fixed is not None else m.data, headers=headers)  # fmt: skip
            if not keep:
                await js.delete_msg(settings.dlq_stream, m.seq)
        return len(msgs)
    finally:
        await nc.close()


@dlq.command("replay")
@click.argument("seqs", type=int, nargs=-1)
@click.option("--all", "all_", is_flag=True, help="replay every dead letter")
@click.option(
    "--fixed-file",
    type=click.Path(exists=True, dir_okay=False),
    help="publish this file's bytes instead (a corrected event); one SEQ only",
)
@click.option("--keep", is_flag=True, help="keep the dead letters after replaying")
@click.pass_context
def dlq_replay(ctx: click.Context, seqs: tuple[int, ...], all_: bool, fixed_file: str | None,
               keep: bool) -> None:  # fmt: skip
    """Re-publish dead letters (unchanged, or fixed) to the event subject."""
    if not seqs and not all_:
        raise click.UsageError("give SEQ... or --all")
    if fixed_file and len(seqs) != 1:
        raise click.UsageError("--fixed-file replays exactly one SEQ")
    fixed = Path(fixed_file).read_bytes() if fixed_file else None
    n = _run(ctx, _replay, () if all_ else seqs, fixed, keep)
    click.echo(f"replayed {n} dead letter(s)" + ("" if keep else " and removed them"))


# -- partitions ----------------------------------------------------------------------------
@click.group()
def partitions() -> None:
    """List and create monthly partitions of audit.events."""


async def _partitions(settings: Settings, ahead: int | None) -> list[Any]:
    conn = await asyncpg.connect(database_url(settings), timeout=10)
    try:
        if ahead is not None:
            await conn.execute(
                "SELECT audit.ensure_partition(now() + make_interval(months => m))"
                " FROM generate_series(0, $1) AS m",
                ahead,
            )
        return await conn.fetch(
            "SELECT p.name, p.bounds, p.bytes, c.reltuples::bigint AS rows"
            " FROM audit.partitions p JOIN pg_class c ON c.relname = p.name"
            " JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'audit'"
            " ORDER BY p.name"
        )
    finally:
        await conn.close()


def _print_partitions(rows: list[Any]) -> None:
    table = Table("partition", "bounds", "size", "rows (est.)")
    for r in rows:
        table.add_row(r["name"], r["bounds"], f"{r['bytes'] / 1e6:.1f} MB", str(max(r["rows"], 0)))
    Console().print(table)


@partitions.command("list")
@click.pass_context
def partitions_list(ctx: click.Context) -> None:
    """Every month partition with its bounds and size."""
    _print_partitions(_run(ctx, _partitions, None))


@partitions.command("ensure")
@click.option("--months-ahead", type=click.IntRange(0, 120), default=3, show_default=True)
@click.pass_context
def partitions_ensure(ctx: click.Context, months_ahead: int) -> None:
    """Create this month's partition and the next N (idempotent)."""
    _print_partitions(_run(ctx, _partitions, months_ahead))


# -- publish -------------------------------------------------------------------------------
async def _publish(settings: Settings, count: int, rate: float, synthetic: bool,
                   tenants: int) -> float:  # fmt: skip
    payloads = (
        synthetic_events(count, tenant_ids(tenants), seed=int(time.time()))
        if synthetic
        else (json.dumps(README_EVENT).encode() for _ in range(count))
    )
    nc = await _nats(settings)
    js = nc.jetstream()
    started = time.monotonic()
    pending: list[Any] = []
    columns = (TextColumn("publishing"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns) as progress:
        task = progress.add_task("publish", total=count)
        for i, data in enumerate(payloads):
            if rate:
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            pending.append(asyncio.ensure_future(js.publish(settings.subject, data)))
            if len(pending) >= 256:
                await asyncio.gather(*pending)
                progress.advance(task, len(pending))
                pending = []
        await asyncio.gather(*pending)
        progress.advance(task, len(pending))
    elapsed = time.monotonic() - started
    await nc.close()
    return elapsed


@click.command()
@click.option("--count", type=click.IntRange(1), default=1, show_default=True)
@click.option("--rate", type=float, default=0.0, help="events per second (0: as fast as acked)")
@click.option("--synthetic", is_flag=True, help="varied ~600-byte events instead of the example")
@click.option("--tenants", type=click.IntRange(1), default=10, show_default=True)
@click.pass_context
def publish(ctx: click.Context, count: int, rate: float, synthetic: bool, tenants: int) -> None:
    """Publish the README's example event (or synthetic ones) to the event subject."""
    elapsed = _run(ctx, _publish, count, rate, synthetic, tenants)
    click.echo(
        f"published {count} event(s) in {elapsed:.2f}s ({count / max(elapsed, 1e-9):,.0f}/s)"
    )


# -- doctor --------------------------------------------------------------------------------
async def _doctor(settings: Settings) -> list[tuple[str, bool, str]]:
    checks: list[tuple[str, bool, str]] = []
    try:
        conn = await asyncpg.connect(database_url(settings), timeout=5)
        try:
            version = await conn.fetchval("SHOW server_version")
            checks.append(("postgresql", True, f"PostgreSQL {version}"))
            current = await is_current(conn)
            checks.append(("migrations", current, "current" if current else
                           "pending: run `auditlog migrate`"))  # fmt: skip
            parts = await conn.fetchval("SELECT count(*) FROM audit.partitions") if current else 0
            checks.append(("partitions", bool(parts), f"{parts} month partition(s)"))
        finally:
            await conn.close()
    except (AuditLogError, OSError, asyncpg.PostgresError) as exc:
        checks.append(("postgresql", False, str(exc)))
    try:
        nc = await _nats(settings)
        try:
            checks.append(("nats", True, f"nats-server {nc._server_info.get('version', '?')}"))
            js = nc.jetstream()
            try:
                info = await js.consumer_info(settings.stream, settings.consumer)
                state = f"{info.num_pending} pending, {info.num_ack_pending} unacked"
                checks.append(("consumer", True, f"{settings.stream}/{settings.consumer}: {state}"))
            except NotFoundError:
                checks.append(("consumer", False, f"{settings.stream}/{settings.consumer} missing"
                               " (the pipeline creates it at start)"))  # fmt: skip
            try:
                dlq_info = await js.stream_info(settings.dlq_stream)
                checks.append(("dead letters", True, f"{dlq_info.state.messages} in "
                               f"{settings.dlq_stream}"))  # fmt: skip
            except NotFoundError:
                checks.append(("dead letters", True, "none (stream not created yet)"))
        finally:
            await nc.close()
    except (AuditLogError, OSError, nats.errors.Error) as exc:
        checks.append(("nats", False, str(exc) or type(exc).__name__))
    checks.append(await asyncio.to_thread(_check_http, api_url(settings)))
    return checks


def _check_http(base: str) -> tuple[str, bool, str]:
    try:
        context = api_ssl(base)
    except AuditLogError as exc:
        return ("http api", False, str(exc))
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=5, context=context) as r:
            return ("http api", True, f"{base} ready ({r.status})")
    except urllib.error.HTTPError as exc:
        return ("http api", False, f"{base} not ready: {exc.read().decode(errors='replace')}")
    except OSError as exc:
        return ("http api", False, f"{base}: {exc}")


@click.command()
@click.pass_context
def doctor(ctx: click.Context) -> None:
    """Check connectivity, versions, migrations, stream and consumer; exit 1 if unhealthy."""
    checks = _run(ctx, _doctor)
    table = Table("check", "ok", "detail")
    for name, ok, detail in checks:
        table.add_row(name, "[green]yes[/]" if ok else "[red]NO[/]", detail)
    Console().print(table)
    bad = [name for name, ok, _ in checks if not ok]
    if bad:
        click.echo(f"verdict: UNHEALTHY ({', '.join(bad)})")
        raise SystemExit(1)
    click.echo("verdict: healthy")
