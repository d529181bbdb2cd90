"""``auditlog retention plan|apply``: what retention would drop, and dropping it, with the
owner's credentials (AUDIT_DATABASE_OWNER_URL, else AUDIT_DATABASE_URL, else the embedded
server's superuser). ``apply`` holds the retention lease, as the service's job does, so it
never runs beside another runner."""

from __future__ import annotations

import asyncio

import asyncpg
import click
from rich.console import Console
from rich.table import Table

from auditlog.endpoints import owner_url
from infra.errors import AuditLogError
from infra.settings import Settings
from infra.signing import load_signer
from ledger import retention


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
    """Print the plan; with ``apply``, drop every due month (oldest first), under the
    retention lease (refused, naming the holder, while another runner has it)."""
    try:
        dsn = owner_url(settings)
        if not apply:
            months = asyncio.run(_plan(dsn, settings))
            _show(months)
            due = [m for m in months if m.due]
            click.echo(f"{len(due)} partition(s) due; `auditlog retention apply` drops them")
            return
        asyncio.run(_apply(dsn, settings))
    except (AuditLogError, OSError, asyncpg.PostgresError, RuntimeError) as exc:  # ArchiveError too
        raise click.ClickException(str(exc)) from exc


async def _apply(dsn: str, settings: Settings) -> None:
    async with retention.lease(dsn) as holder:
        if holder is not None:
            raise click.ClickException(
                f"another retention runner ({holder}) holds the retention lease; nothing "
                "dropped, try again later"
            )
        months = await _plan(dsn, settings)
        _show(months)
        due = [m for m in months if m.due]
        signer = load_signer(settings, create=False) if due else None
        for m in due:
            assert signer is not None
            if m.archive:
                click.echo(f"archiving {m.name} ({len(m.archive)} tenant(s)) to "
                           f"{settings.retention_archive} ...")  # fmt: skip
            shown = lambda where: click.echo(f"  verified {where}")  # noqa: E731
            removed = await retention.drop(dsn, settings, signer, m, shown)
            click.echo(f"dropped {m.name}: {removed:,} events")
        click.echo(f"{len(due)} partition(s) dropped")
