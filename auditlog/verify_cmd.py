"""``auditlog verify``: connect (never starting servers), verify, print, and pick the exit
code (0 intact, 1 tampered, 3 cannot check; click keeps 2 for usage errors)."""

from __future__ import annotations

import asyncio
import sys

import asyncpg
import click
import msgspec

from auditlog.endpoints import database_url, nats_url
from infra.errors import AuditLogError
from infra.settings import Settings
from infra.signing import trusted_verifiers
from ledger.verify import LogReport, Witness, read_witness, verify_log
from pipeline.source_nats import connect


async def _witness(settings: Settings, tenant_id: str) -> Witness:
    try:
        nc = await asyncio.wait_for(connect(nats_url(settings), "auditlog-verify", settings), 10)
    except (AuditLogError, OSError, TimeoutError) as exc:
        return Witness(unavailable=f"NATS: {exc}")
    except Exception as exc:
        return Witness(unavailable=f"NATS: {type(exc).__name__}: {exc}")
    try:
        return await read_witness(nc, settings, tenant_id)
    finally:
        await nc.close()


async def _verify(settings: Settings, tenant_id: str, keys: list[str],
                  no_witness: bool) -> LogReport:  # fmt: skip
    verifiers = trusted_verifiers(settings, keys)
    witness = Witness(None) if no_witness else await _witness(settings, tenant_id)
    conn = await asyncpg.connect(database_url(settings), timeout=10,
                                 server_settings={"role": "auditlog_app"})  # fmt: skip
    try:
        return await verify_log(conn, settings, tenant_id, verifiers, witness)
    finally:
        await conn.close()


def describe(report: LogReport) -> str:
    """The report in words, one line per finding."""
    b = report.first_break
    if report.status == "tampered" and b is not None:
        return f"TAMPERED at seq {b.seq} ({b.kind}): {b.detail}"
    seen = (f"{report.events} events, chain intact up to seq {report.head_seq}; "
            f"{report.checkpoints} signed checkpoint(s) verified"
            + (f" (latest at {report.latest_checkpoint})" if report.checkpoints else "")
            + (f"; witness copy at {report.witnessed_size} matches"
               if report.witnessed_size is not None else ""))  # fmt: skip
    if report.status == "unverifiable":
        return "CANNOT CHECK: " + "; ".join(report.cannot_check) + f"\n(so far: {seen})"
    return f"ok: {seen}"


def run_verify(settings: Settings, tenant_id: str, as_json: bool, keys: list[str],
               no_witness: bool) -> int:  # fmt: skip
    """Run the command; returns its exit code."""
    try:
        report = asyncio.run(_verify(settings, tenant_id, keys, no_witness))
    except ValueError as exc:  # a malformed --public-key
        raise click.UsageError(f"--public-key: {exc}") from exc
    except (AuditLogError, OSError, asyncpg.PostgresError, TimeoutError) as exc:
        click.echo(f"CANNOT CHECK: {type(exc).__name__}: {exc}", err=True)
        return 3
    if as_json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    else:
        click.echo(describe(report))
    return report.exit_code
