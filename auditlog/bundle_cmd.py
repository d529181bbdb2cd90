"""``auditlog export-bundle`` and ``auditlog verify-bundle``: write an auditor bundle from
the database; check one with nothing but the file (and the keys you trust)."""

from __future__ import annotations

import asyncio
import gzip
import os
import sys
import time
import zlib
from pathlib import Path

import asyncpg
import click
import msgspec

from auditlog.endpoints import database_url
from infra.errors import AuditLogError
from infra.settings import Settings
from pipeline.checkpoints import origin
from pipeline.proofs import build_bundle
from schemas import bundle


def _progress(what: str) -> object:
    started = time.monotonic()

    def show(n: int) -> None:
        click.echo(f"  {what} {n:,} events ({time.monotonic() - started:.1f} s)", err=True)

    return show


async def _export(settings: Settings, tenant_id: str, from_seq: int,
                  to_seq: int | None) -> bundle.Bundle:  # fmt: skip
    conn = await asyncpg.connect(database_url(settings), timeout=10,
                                 server_settings={"role": "auditlog_app"})  # fmt: skip
    try:
        async with conn.transaction(readonly=True, isolation="repeatable_read"):
            await conn.execute("SELECT set_config('audit.tenant_id', $1, true)", tenant_id)
            return await build_bundle(conn, tenant_id, origin(settings, tenant_id), from_seq,
                                      to_seq, _progress("read"))  # type: ignore[arg-type]  # fmt: skip
    finally:
        await conn.close()


def export_bundle(settings: Settings, tenant_id: str, from_seq: int, to_seq: int | None,
                  out: Path) -> None:  # fmt: skip
    """Write the bundle to ``out`` (atomically: a temporary file renamed)."""
    try:
        b = asyncio.run(_export(settings, tenant_id, from_seq, to_seq))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    except (AuditLogError, OSError, asyncpg.PostgresError) as exc:
        raise click.ClickException(f"cannot read the log: {exc}") from exc
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(bundle.encode(b))
    os.replace(tmp, out)
    m = b.manifest
    click.echo(f"wrote {out}: {m.events:,} events of {m.tenant_id} (seq {m.from_seq}-"
               f"{m.to_seq}), {len(b.checkpoints)} signed checkpoint(s), "
               f"{len(b.public_keys)} public key(s)")  # fmt: skip


def verify_bundle(path: Path, keys: list[str], as_json: bool) -> int:
    """Check a bundle file (plain or gzipped); returns the exit code (0 intact, 1 tampered,
    3 cannot check)."""
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":  # gzipped (retention archives are)
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        click.echo(f"CANNOT CHECK: {exc}", err=True)
        return 3
    try:
        report = bundle.verify(data, keys, _progress("checked"))  # type: ignore[arg-type]
    except ValueError as exc:
        raise click.UsageError(f"--public-key: {exc}") from exc
    if as_json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    elif report.status == "intact":
        click.echo(f"ok: {report.events:,} events of {report.tenant_id}, chained and covered "
                   f"by {report.checkpoints} signed checkpoint(s) up to seq "
                   f"{report.signed_up_to}")  # fmt: skip
    elif report.status == "tampered":
        click.echo(f"TAMPERED: {report.first_break}")
    else:
        click.echo(f"CANNOT CHECK: {report.cannot_check}")
    return report.exit_code
