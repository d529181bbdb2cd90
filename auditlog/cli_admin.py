"""``auditlog admin-token``: show and rotate the admin bearer tokens, and the start-up
announcement of the first one (a fresh ``make run`` must be usable at once)."""

from __future__ import annotations

import click

from infra.admin_tokens import (
    add_admin_token,
    admin_tokens,
    ensure_admin_token,
    remove_admin_token,
    token_file,
)
from infra.errors import AuditLogError
from infra.settings import Settings


def announce_admin_token(settings: Settings) -> None:
    """Make the first admin token if there is none and say, on stderr, where tokens are.

    A new token is printed in full once, with how to use it; later starts only say where
    it is kept (never the token itself, which would end up in log collectors).

    Raises:
        click.ClickException: the tokens cannot be read or written.
    """
    try:
        new = ensure_admin_token(settings)
        count = len(admin_tokens(settings))
    except (AuditLogError, OSError) as exc:
        raise click.ClickException(f"admin token: {exc}") from exc
    scheme = "https" if settings.tls_cert else "http"
    base = f"{scheme}://{settings.http_host}:{settings.http_port}"
    if new is not None:
        click.echo(
            "\n  First start: an admin token was made and kept in "
            f"{token_file(settings)} (mode 0600).\n"
            f"  Admin token: {new}\n"
            "  Use it as a bearer token, e.g. to create a tenant key:\n"
            f"    curl -X POST {base}/v1/admin/keys -H 'Authorization: Bearer {new}' \\\n"
            '      -d \'{"tenant_id": "7e4e4e93-94ec-45bd-87ce-88ce3f689e3c", '
            '"scopes": ["read", "write"]}\'\n'
            "  Show it again: auditlog admin-token show\n",
            err=True,
        )
    elif settings.admin_token:
        click.echo(f"admin tokens: {count} from AUDIT_ADMIN_TOKEN", err=True)
    else:
        click.echo(
            f"admin tokens: {count} in {token_file(settings)} (auditlog admin-token show)",
            err=True,
        )


@click.group("admin-token")
def admin_token() -> None:
    """Show or rotate the admin bearer tokens (AUDIT_ADMIN_TOKEN, else the state dir's)."""


def _fail(exc: AuditLogError | OSError) -> click.ClickException:
    return click.ClickException(str(exc))


@admin_token.command("show")
@click.pass_context
def show(ctx: click.Context) -> None:
    """Print the valid admin tokens, one per line, newest last."""
    settings: Settings = ctx.obj
    try:
        tokens = admin_tokens(settings)
    except (AuditLogError, OSError) as exc:
        raise _fail(exc) from exc
    if not tokens:
        raise click.ClickException(
            f"no admin token yet: `auditlog run` makes one in {token_file(settings)} "
            "(or set AUDIT_ADMIN_TOKEN)"
        )
    for token in tokens:
        click.echo(token)


@admin_token.command("add")
@click.pass_context
def add(ctx: click.Context) -> None:
    """Add a new admin token beside the existing ones (running services take it within a
    second); print it. Then move clients over and `remove` the old one."""
    try:
        click.echo(add_admin_token(ctx.obj))
    except (AuditLogError, OSError) as exc:
        raise _fail(exc) from exc


@admin_token.command("remove")
@click.argument("prefix")
@click.pass_context
def remove(ctx: click.Context, prefix: str) -> None:
    """Remove the admin token starting with PREFIX (at least 8 characters); the last
    remaining token cannot be removed."""
    try:
        gone = remove_admin_token(ctx.obj, prefix)
    except (AuditLogError, OSError) as exc:
        raise _fail(exc) from exc
    click.echo(f"removed {gone[:12]}...")
