"""Which PostgreSQL credentials a process holds, and what it does with them at start.

- ``AUDIT_DATABASE_OWNER_URL`` set: the owner's. The process creates the database when
  missing, applies migrations, provisions the runtime login and may run retention; its
  pools log in as the runtime login: ``AUDIT_DATABASE_URL``, else ``<database>_runtime``
  on the owner URL's hosts with ``AUDIT_RUNTIME_PASSWORD``.
- Only ``AUDIT_DATABASE_URL``: what that login may do decides (a query:
  :func:`infra.db.can_migrate`). A login with owner rights is the owner, as above
  (single-URL deployments keep working; a warning says how to split the credentials). The
  runtime login applies nothing and runs no retention: the process waits until the
  migrations are current.
- Neither: the embedded PostgreSQL's superuser is the owner.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from infra import dsn as dsns
from infra.db import can_migrate, ensure_database, ensure_runtime_role, runtime_role
from infra.errors import ConfigError, SchemaNotCurrent
from infra.migrate import load_migrations, migrate, pending
from infra.settings import Settings, redact_url

log = logging.getLogger(__name__)

# ``runtime.until_up`` bound to the process's stop event: (what, attempt, setting) -> result.
Waiter = Callable[[str, Callable[[], Awaitable[Any]], str], Awaitable[Any]]


@dataclass(frozen=True)
class Credentials:
    """The DSNs a process uses once its database is ready.

    Attributes:
        runtime: the runtime login's DSN; every pool logs in with it.
        owner: the owner's DSN, ``""`` when the process holds none (then it neither
            migrates nor runs retention).
    """

    runtime: str
    owner: str = ""


def runtime_password(settings: Settings) -> str:
    """AUDIT_RUNTIME_PASSWORD, else one generated once and kept in the state dir (0600)."""
    if settings.runtime_password:
        return settings.runtime_password
    path = Path(settings.state_dir) / "runtime-password"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


async def provision(settings: Settings, owner: str, runtime: str = "") -> str:
    """Make (or update) the runtime login with the owner's DSN; return the login's DSN.

    ``runtime`` (AUDIT_DATABASE_URL), when set, is the login: ``<database>_runtime`` with a
    password is given that password; any other login is the operator's to manage and is
    left alone. Unset: ``<database>_runtime`` with AUDIT_RUNTIME_PASSWORD (else the state
    dir's), on the owner URL's hosts with its options.
    """
    if runtime:
        given = dsns.parse(runtime)
        if given.user == runtime_role(owner) and given.password:
            await ensure_runtime_role(owner, given.password)
        return runtime
    return await ensure_runtime_role(owner, runtime_password(settings))


async def create_and_migrate(owner: str) -> list[int]:
    """Create the owner DSN's database when missing and apply pending migrations."""
    await ensure_database(owner)
    return await migrate(owner)


async def migrations_current(dsn: str) -> None:
    """Return once ``dsn``'s database holds every migration of this code.

    Raises:
        SchemaNotCurrent: some are pending (waiting helps).
        MigrationError: the database knows migrations this code does not, or one was edited.
    """
    conn = await asyncpg.connect(dsn)
    try:
        left = await pending(conn, load_migrations())
    finally:
        await conn.close()
    if left:
        raise SchemaNotCurrent(len(left))


async def prepare(settings: Settings, owner: str, runtime: str, wait: Waiter) -> Credentials:
    """Ready the database for this process as its credentials allow (module docstring).

    Args:
        owner: the owner's DSN (AUDIT_DATABASE_OWNER_URL or the embedded server's), or "".
        runtime: AUDIT_DATABASE_URL, or "" (derived from ``owner``).
        wait: retries each step while PostgreSQL is away or migrations are pending.
    """
    var = "AUDIT_DATABASE_OWNER_URL" if settings.database_owner_url else "AUDIT_DATABASE_URL"
    single = not owner
    if single:
        if not await wait("postgresql", lambda: can_migrate(runtime), var):
            await wait("postgresql schema", lambda: migrations_current(runtime), var)
            log.info("database: runtime login %s only; this process applies no migrations"
                     " and runs no retention", dsns.parse(runtime).user)  # fmt: skip
            return Credentials(runtime)
        owner, runtime = runtime, ""
    await wait("postgresql", lambda: create_and_migrate(owner), var)
    runtime = await wait("postgresql", lambda: provision(settings, owner, runtime), var)
    if single:
        log.warning(
            "database: AUDIT_DATABASE_URL's login %s holds owner rights, so this process "
            "migrates and may run retention with them (its pools log in as %s). Least "
            "privilege: set AUDIT_DATABASE_OWNER_URL to these credentials only where "
            "migrations and retention run, and AUDIT_DATABASE_URL=%s everywhere else "
            "(README, Database credentials)",
            dsns.parse(owner).user, dsns.parse(runtime).user, redact_url(runtime),
        )  # fmt: skip
    return Credentials(runtime, owner)


async def migrate_with_owner(settings: Settings, owner: str, runtime: str) -> tuple[list[int], str]:
    """``auditlog migrate``: create ``owner``'s database when missing and apply pending
    migrations; with AUDIT_DATABASE_OWNER_URL set, also provision the runtime login, so
    that processes given only AUDIT_DATABASE_URL can start.

    Returns:
        The versions applied, and the runtime login's DSN ("" when not provisioned).

    Raises:
        ConfigError: only a runtime login is configured.
        MigrationError: a migration failed, or the database is newer than this code.
    """
    if not settings.database_owner_url and not await can_migrate(owner):
        raise ConfigError("AUDIT_DATABASE_OWNER_URL", "AUDIT_DATABASE_URL is a runtime login, "
                          "which cannot migrate: give the owner's credentials here")  # fmt: skip
    applied = await create_and_migrate(owner)
    if not settings.database_owner_url:
        return applied, ""
    return applied, await provision(settings, owner, runtime)
