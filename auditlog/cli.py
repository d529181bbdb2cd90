"""The ``auditlog`` command line: one entry point for every operation.

Settings come from ``AUDIT_*`` environment variables; flags override them.
"""

from __future__ import annotations

import asyncio
import faulthandler
import sys
from pathlib import Path
from typing import Any

import click

from auditlog import cli_admin, cli_api, cli_ops, cli_streams, cli_viewer
from infra import logs
from infra.errors import AuditLogError
from infra.settings import Settings, load_settings


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    base: Settings = ctx.obj
    return base.replace(**overrides)


@click.group()
@click.option("--state-dir", type=click.Path(file_okay=False), help="AUDIT_STATE_DIR")
@click.option(
    "--database-url",
    help="AUDIT_DATABASE_URL (embedded PostgreSQL when unset, and AUDIT_DATABASE_OWNER_URL too)",
)
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
    # A fatal signal (a crash in a C extension, SIGABRT) still leaves the Python traceback
    # of every thread on stderr, where the process's log goes: never a silent exit.
    if not faulthandler.is_enabled():
        faulthandler.enable()
    ctx.obj = settings


@cli.command()
@click.option("--http-port", type=int, help="AUDIT_HTTP_PORT (default 8080)")
@click.option("--http-host", help="AUDIT_HTTP_HOST (default 127.0.0.1)")
@click.pass_context
def run(ctx: click.Context, http_port: int | None, http_host: str | None) -> None:
    """Run the service: HTTP API on :8080 plus one pipeline worker.

    Starts embedded PostgreSQL and NATS under the state dir unless AUDIT_DATABASE_URL /
    AUDIT_NATS_URL are set; applies migrations first where it holds the owner's credentials
    (README: Database credentials), else waits until they are applied.
    """
    from auditlog.runtime import run_event_loop, serve, servers

    settings = _settings(ctx, http_port=http_port, http_host=http_host)
    cli_admin.announce_admin_token(settings)
    try:
        with servers(settings) as ends:
            run_event_loop(serve(settings, ends, http=True))
    except AuditLogError as exc:
        raise click.ClickException(str(exc)) from exc


@cli.command()
@click.option("--http-port", type=int, help="AUDIT_HTTP_PORT (default 8080)")
@click.option("--http-host", help="AUDIT_HTTP_HOST (default 127.0.0.1)")
@click.pass_context
def api(ctx: click.Context, http_port: int | None, http_host: str | None) -> None:
    """Run the HTTP and gRPC API only, without a pipeline worker.

    For scaling API replicas and `auditlog pipeline` workers apart (each its own
    process, so each its own core): writes are answered once a worker elsewhere commits
    them. Applies migrations first, like `run`.
    """
    from auditlog.runtime import run_event_loop, serve, servers

    settings = _settings(ctx, http_port=http_port, http_host=http_host)
    cli_admin.announce_admin_token(settings)
    try:
        with servers(settings) as ends:
            run_event_loop(serve(settings, ends, http=True, ingest=False))
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
                from auditlog.runtime import worker_endpoints

                # Migrated (or waited for) here; the workers get the runtime login only.
                workers_ends = worker_endpoints(settings, ends)
                sys.exit(spawn_workers(settings, workers_ends, settings.workers))
            run_event_loop(serve(settings, ends, http=False))
    except AuditLogError as exc:
        raise click.ClickException(str(exc)) from exc


@cli.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create the database if needed and apply pending SQL migrations.

    Uses AUDIT_DATABASE_OWNER_URL when set (and then also provisions the runtime login),
    else AUDIT_DATABASE_URL.
    """
    from auditlog.credentials import migrate_with_owner
    from auditlog.runtime import servers
    from infra.settings import redact_url

    settings: Settings = ctx.obj
    try:
        with servers(settings.replace(nats_url=settings.nats_url or "unused")) as ends:
            owner = ends.owner_url or ends.database_url
            applied, runtime = asyncio.run(migrate_with_owner(settings, owner, ends.database_url))
    except AuditLogError as exc:
        raise click.ClickException(str(exc)) from exc
    if applied:
        click.echo("applied migrations: " + ", ".join(f"{v:03d}" for v in applied))
    else:
        click.echo("database is up to date")
    if runtime:
        click.echo(f"runtime login: {redact_url(runtime)}")


@cli.command()
@click.argument("tenant_id")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    metavar="VERIFIER_KEY",
    help="also trust this verifier key (name+hash+key; repeatable)",
)
@click.option(
    "--keys-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="also trust the verifier keys in FILE (one per line)",
)
@click.option(
    "--no-witness",
    is_flag=True,
    help="do not compare with the witness stream's copy of the checkpoints",
)
@click.pass_context
def verify(ctx: click.Context, tenant_id: str, as_json: bool, public_keys: tuple[str, ...],
           keys_file: Path | None, no_witness: bool) -> None:  # fmt: skip
    """Verify TENANT_ID's log: hash chain, signed checkpoints, witness copy.

    Signatures are checked against the service's own keys (its state dir: the signing key
    and every key it signed with) and --public-key / --keys-file; never against keys
    stored in the database. Exit 0 intact, 1 tampered (the first bad seq and the kind of
    break are named), 3 cannot check (why is printed), 2 usage error.
    """
    from auditlog.bundle_cmd import pinned_keys
    from auditlog.verify_cmd import run_verify

    settings: Settings = ctx.obj
    keys = pinned_keys(public_keys, keys_file)
    code = run_verify(settings, tenant_id, as_json, keys, no_witness)
    sys.exit(code)


@cli.command("export-bundle")
@click.argument("tenant_id")
@click.option(
    "--from", "from_seq", type=click.IntRange(1), default=1, show_default=True, help="first seq"
)
@click.option(
    "--to",
    "to_seq",
    type=click.IntRange(1),
    default=None,
    help="last seq (default: the latest signed checkpoint)",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.pass_context
def export_bundle(ctx: click.Context, tenant_id: str, from_seq: int, to_seq: int | None,
                  output: Path) -> None:  # fmt: skip
    """Write TENANT_ID's events (canonical form), checkpoints and public keys to one file."""
    from auditlog.bundle_cmd import export_bundle as run

    run(ctx.obj, tenant_id, from_seq, to_seq, output)


@cli.command("verify-bundle")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    metavar="VERIFIER_KEY",
    help="trust this verifier key (name+hash+key; repeatable), got from the operator",
)
@click.option(
    "--keys-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="trust the verifier keys in FILE (one per line; e.g. <state dir>/verifier-keys)",
)
@click.option(
    "--trust-bundle-keys",
    is_flag=True,
    help="trust the keys the bundle names itself (not an independent check; said so)",
)
@click.option(
    "--allow-unsigned-tail",
    is_flag=True,
    help="events after the last signed checkpoint (only chained) do not make it exit 3",
)
@click.option("--json", "as_json", is_flag=True)
def verify_bundle(file: Path, public_keys: tuple[str, ...], keys_file: Path | None,
                  trust_bundle_keys: bool, allow_unsigned_tail: bool,
                  as_json: bool) -> None:  # fmt: skip
    """Check an auditor bundle offline against keys you pinned.

    Exit 0 intact, 1 tampered (also: signed by a key you did not pin), 3 cannot check (also:
    no key pinned; the bundle's key ids are named). The bundle's own keys count only with
    --trust-bundle-keys, and the output says so. Events after the last signed checkpoint
    are only chained (the bundle's writer could have written them): exit 3 unless
    --allow-unsigned-tail.
    """
    from auditlog.bundle_cmd import verify_bundle as run

    code = run(file, list(public_keys), as_json, keys_file=keys_file,
               trust_bundle_keys=trust_bundle_keys,
               allow_unsigned_tail=allow_unsigned_tail)  # fmt: skip
    sys.exit(code)


@cli.command("signing-key")
@click.pass_context
def signing_key(ctx: click.Context) -> None:
    """Print the checkpoint signing key's verifier key (what auditors trust)."""
    from infra.signing import load_signer

    try:
        click.echo(load_signer(ctx.obj, create=False).verifier_key)
    except AuditLogError as exc:
        raise click.ClickException(str(exc)) from exc


@cli.group("retention")
def retention_group() -> None:
    """Drop months whose retention has passed for every tenant in them (owner credentials)."""


@retention_group.command("plan")
@click.pass_context
def retention_plan(ctx: click.Context) -> None:
    """Show every partition, whether it is due, and what holds it back."""
    from auditlog.retention_cmd import run

    run(ctx.obj, apply=False)


@retention_group.command("apply")
@click.pass_context
def retention_apply(ctx: click.Context) -> None:
    """Drop the due partitions: signed gap records first, then claims, then the month."""
    from auditlog.retention_cmd import run

    run(ctx.obj, apply=True)


cli.add_command(cli_admin.admin_token)
cli.add_command(cli_api.events)
cli.add_command(cli_api.stats)
cli.add_command(cli_api.keys)
cli.add_command(cli_api.tenants)
cli.add_command(cli_ops.dlq)
cli.add_command(cli_ops.partitions)
cli.add_command(cli_ops.publish)
cli.add_command(cli_ops.doctor)
cli.add_command(cli_viewer.viewer_token)
cli.add_command(cli_streams.streams)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="auditlog")


if __name__ == "__main__":
    main()
