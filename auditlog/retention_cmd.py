"""``auditlog retention plan|apply``: what retention would drop, and dropping it, with the
owner's credentials (AUDIT_DATABASE_URL, or the embedded server's superuser)."""

from __future__ import annotations

import asyncio

import asyncpg
import click
from rich.console import Console
from rich.table import Table

from auditlog.endpoints import database_url
from infra.errors import AuditLogError
from infra.settings import Settings
from infra.signing import load_signer
from pipeline import retention


async def _plan(dsn: str, settings: Settings) -> list[retention.Month]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await retention.plan(conn, settings)
    finally:
        await conn.close()


def _show(months: list[retention.Month]) -> None:
    table = Table("partition", "events", "tenants", "bytes", "archived first", "due", "why not")
    for m in months:
        table.add_row(m.name, f"{m.events:,}", str(len(m.tenants)), f"{m.bytes:,}",
                      f"{len(m.archive)} tenant(s)" if m.archive else "-",
                      "yes" if m.due else "no", m.why_not)  # fmt: skip
    Console().print(table)


def run(settings: Settings, apply: bool) -> None:
    """Print the plan; with ``apply``, drop every due month (oldest first)."""
    try:
        dsn = database_url(settings)
        months = asyncio.run(_plan(dsn, settings))
        _show(months)
        due = [m for m in months if m.due]
        if not apply:
            click.echo(f"{len(due)} partition(s) due; `auditlog retention apply` drops them")
            return
        signer = load_signer(settings, create=False) if due else None
        for m in due:
            assert signer is not None
            if m.archive:
                click.echo(f"archiving {m.name} ({len(m.archive)} tenant(s)) to "
                           f"{settings.retention_archive} ...")  # fmt: skip
            shown = lambda where: click.echo(f"  verified {where}")  # noqa: E731
            removed = asyncio.run(retention.drop(dsn, settings, signer, m, shown))
            click.echo(f"dropped {m.name}: {removed:,} events")
        click.echo(f"{len(due)} partition(s) dropped")
    except (AuditLogError, OSError, asyncpg.PostgresError, RuntimeError) as exc:  # ArchiveError too
        raise click.ClickException(str(exc)) from exc
