"""``auditlog export-bundle`` and ``auditlog verify-bundle``: write an auditor bundle from
the database; check one with nothing but the file and the keys you pinned.

``verify-bundle`` trusts only keys given on its command line (``--public-key``,
``--keys-file``), never the bundle's own ``public_keys`` unless ``--trust-bundle-keys``
says so, and never the state dir's keys implicitly: the answer must not depend on the
directory it runs in (a bundle could come with a ``.auditlog`` of its own). On the
service's host, ``--keys-file <state dir>/verifier-keys`` pins every key it signed with.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import click
import msgspec

from auditlog.endpoints import database_url
from infra.errors import AuditLogError
from infra.settings import Settings
from infra.signing import read_keys_file
from ledger.checkpoints import origin
from ledger.proofs import build_bundle
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


def pinned_keys(keys: Sequence[str], keys_file: Path | None) -> list[str]:
    """The verifier keys the user chose: ``--public-key`` values and ``--keys-file``'s."""
    pinned = list(keys)
    if keys_file is not None:
        try:
            pinned += read_keys_file(keys_file)
        except (OSError, ValueError) as exc:
            raise click.BadParameter(str(exc), param_hint="--keys-file") from exc
    return pinned


_HOW_TO_PIN = """\
  Pin the operator's verifier key, got from them rather than from the bundle (they print it
  with `auditlog signing-key`):
    --public-key <name>+<hash>+<key>   (repeatable)
    --keys-file FILE                   (one verifier key per line; on the service's host,
                                        <state dir>/verifier-keys holds every key it used)
  --trust-bundle-keys checks against the bundle's own keys instead: not an independent check."""


def verify_bundle(path: Path, keys: list[str], as_json: bool, *, keys_file: Path | None = None,
                  trust_bundle_keys: bool = False,
                  allow_unsigned_tail: bool = False) -> int:  # fmt: skip
    """Check a bundle file (plain or gzipped); returns the exit code (0 intact, 1 tampered,
    3 cannot check: without a pinned key too, unless ``trust_bundle_keys``)."""
    keys = pinned_keys(keys, keys_file)
    if keys and trust_bundle_keys:
        raise click.UsageError("--trust-bundle-keys cannot be combined with pinned keys")
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":  # gzipped (retention archives are)
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        click.echo(f"CANNOT CHECK: {exc}", err=True)
        return 3
    try:
        report = bundle.verify(data, keys, _progress("checked"),  # type: ignore[arg-type]
                               trust_bundle_keys=trust_bundle_keys,
                               allow_unsigned_tail=allow_unsigned_tail)  # fmt: skip
    except ValueError as exc:
        raise click.UsageError(f"--public-key: {exc}") from exc
    if as_json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
        return report.exit_code
    own = report.trusted == bundle.TRUST_BUNDLE
    if own:
        click.echo(f"WARNING: trusting the keys the bundle names itself "
                   f"({', '.join(report.key_ids) or 'none'}), not a key you pinned: anyone "
                   "can rewrite, re-chain and re-sign a bundle; compare those key ids with "
                   "the operator's")  # fmt: skip
    if report.status == "intact":
        click.echo(("ok (by the bundle's own keys, not independent): " if own else "ok: ")
                   + f"{report.events:,} events of {report.tenant_id}, chained and covered "
                   f"by {report.checkpoints} signed checkpoint(s) up to seq "
                   f"{report.signed_up_to}")  # fmt: skip
        if report.unsigned:
            click.echo(f"WARNING: the last {report.unsigned} event(s) are only chained, not "
                       "signed: NOT verified (--allow-unsigned-tail)")  # fmt: skip
    elif report.status == "tampered":
        click.echo(f"TAMPERED: {report.first_break}")
    else:
        click.echo(f"CANNOT CHECK: {report.cannot_check}")
        if report.trusted == bundle.TRUST_NONE:
            click.echo(_HOW_TO_PIN)
    return report.exit_code
