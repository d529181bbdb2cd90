"""The ``auditlog`` command line: one entry point for every operation.

Settings come from ``AUDIT_*`` environment variables; flags override them.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

from auditlog import cli_api, cli_ops
from infra import logs
from infra.errors import AuditLogError
from infra.settings import Settings, load_settings


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    base: Settings = ctx.obj
    return base.replace(**overrides)


@click.group()
@click.option("--state-dir", type=click.Path(file_okay=False), help="AUDIT_STATE_DIR")
@click.option("--database-url", help="AUDIT_DATABASE_URL (embedded PostgreSQL when unset)")
@click.option("--nats-url", help="AUDIT_NATS_URL (embedded NATS when unset)")
@click.pass_context
def cli(ctx: click.Context, state_dir: str | None, database_url: str | None,
        nats_url: str | None) -> None:  # fmt: skip
    """Audit Log Service: ingest, store and query tamper-evident audit events."""
    try:
        settings = load_settings(state_dir=state_dir, database_url=database_url, nats_url=nats_url)
    except AuditLogError as exc:
        raise click.ClickException(str(exc)) from exc
    logs.configure(settings.log_format, settings.log_level)
    ctx.obj = settings


@cli.command()
@click.option("--http-port", type=int, help="AUDIT_HTTP_PORT (default 8080)")
@click.option("--http-host", help="AUDIT_HTTP_HOST (default 127.0.0.1)")
@click.pass_context
def run(ctx: click.Context, http_port: int | None, http_host: str | None) -> None:
    """Run the service: HTTP API on :8080 plus one pipeline worker.

    Starts embedded PostgreSQL and NATS under the state dir unless AUDIT_DATABASE_URL /
    AUDIT_NATS_URL are set; applies migrations first.
    """
    from auditlog.runtime import run_event_loop, serve, servers

    settings = _settings(ctx, http_port=http_port, http_host=http_host)
    try:
        with servers(settings) as ends:
            run_event_loop(serve(settings, ends, http=True))
    except AuditLogError as exc:
        raise click.ClickException(str(exc)) from exc


@cli.command()
@click.option("--workers", type=int, default=None, help="worker processes (AUDIT_WORKERS)")
@click.pass_context
def pipeline(ctx: click.Context, workers: int | None) -> None:
    """Run pipeline workers only (metrics on AUDIT_METRICS_PORT, +1 per extra worker)."""
    from auditlog.runtime import run_event_loop, serve, servers, spawn_workers

    settings = _settings(ctx, workers=workers)
    try:
        with servers(settings) as ends:
            if settings.workers > 1:
                from auditlog.runtime import prepare_database

                asyncio.run(prepare_database(ends.database_url))
                sys.exit(spawn_workers(settings, ends, settings.workers))
            run_event_loop(serve(settings, ends, http=False))
    except AuditLogError as exc:
        raise click.ClickException(str(exc)) from exc


@cli.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create the database if needed and apply pending SQL migrations."""
    from auditlog.runtime import prepare_database, servers

    settings: Settings = ctx.obj
    try:
        with servers(settings.replace(nats_url=settings.nats_url or "unused")) as ends:
            applied = asyncio.run(prepare_database(ends.database_url))
    except AuditLogError as exc:
        raise click.ClickException(str(exc)) from exc
    if applied:
        click.echo("applied migrations: " + ", ".join(f"{v:03d}" for v in applied))
    else:
        click.echo("database is up to date")


@cli.command()
@click.argument("tenant_id")
@click.pass_context
def verify(ctx: click.Context, tenant_id: str) -> None:
    """Walk TENANT_ID's hash chain and report the first break (exit 1 if broken)."""
    import asyncpg

    from auditlog.endpoints import database_url
    from pipeline.chain import verify_tenant

    settings: Settings = ctx.obj

    async def go(dsn: str) -> Any:
        conn = await asyncpg.connect(dsn, server_settings={"role": "auditlog_app"})
        try:
            return await verify_tenant(conn, tenant_id)
        finally:
            await conn.close()

    try:  # inspection: a running server (AUDIT_DATABASE_URL or embedded), never a new one
        report = asyncio.run(go(database_url(settings)))
    except (AuditLogError, OSError, asyncpg.PostgresError) as exc:
        raise click.ClickException(f"cannot verify: {exc}") from exc
    if report.ok:
        click.echo(f"ok: {report.events} events, chain intact up to seq {report.head_seq}")
        return
    brk = report.first_break
    click.echo(
        f"BROKEN at seq {brk.seq} ({brk.problem}): id={brk.id} "
        f"expected={brk.expected_hash} found={brk.found_hash}"
    )
    sys.exit(1)


cli.add_command(cli_api.events)
cli.add_command(cli_api.stats)
cli.add_command(cli_api.keys)
cli.add_command(cli_ops.dlq)
cli.add_command(cli_ops.partitions)
cli.add_command(cli_ops.publish)
cli.add_command(cli_ops.doctor)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="auditlog")


if __name__ == "__main__":
    main()
