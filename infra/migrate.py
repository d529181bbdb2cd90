"""Numbered SQL migrations from ``sql/``: idempotent, recorded, safe to run concurrently.

The files ship as package data of the ``sql`` package and are read through
``importlib.resources``, so an installed wheel migrates without the source tree.

``NNN_name.sql`` files are applied in order, each in its own transaction, under a
database-wide advisory lock so two processes running ``auditlog migrate`` at once apply
each migration exactly once. Applied migrations are recorded with a checksum; an edited
migration or a database newer than this code is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import asyncpg

from infra.errors import MigrationError

log = logging.getLogger(__name__)

MIGRATIONS_PACKAGE = "sql"
_LOCK_KEY = 0x6175_6469_746C  # "auditl"
_NAME_RE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_TABLE = "public.auditlog_schema_migrations"


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def shipped_migrations() -> Traversable:
    """The folder of the migrations installed with this code (the ``sql`` package).

    Raises:
        MigrationError: when the package is not installed.
    """
    try:
        return resources.files(MIGRATIONS_PACKAGE)
    except ModuleNotFoundError as exc:
        raise MigrationError(
            0, f"the migrations package {MIGRATIONS_PACKAGE!r} is not installed"
        ) from exc


def load_migrations(sql_dir: Traversable | None = None) -> list[Migration]:
    """Read ``NNN_name.sql`` files in version order (default: :func:`shipped_migrations`).

    ``sql_dir`` is any folder-like object: a ``pathlib.Path`` or an
    ``importlib.resources`` traversable (a wheel's package data, possibly zipped).

    Raises:
        MigrationError: when the folder is missing or two files share a number.
    """
    folder = shipped_migrations() if sql_dir is None else sql_dir
    if not folder.is_dir():
        raise MigrationError(0, f"migrations folder {folder} not found")
    found: dict[int, Migration] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        m = _NAME_RE.match(entry.name)
        if not m or not entry.is_file():
            continue
        version = int(m.group(1))
        if version in found:
            raise MigrationError(version, f"two migrations share number {version:03d}")
        found[version] = Migration(version, m.group(2), entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def applied_versions(conn: asyncpg.Connection) -> dict[int, str]:
    """Map of applied version → checksum (empty on a fresh database)."""
    exists = await conn.fetchval("SELECT to_regclass($1)", _TABLE)
    if exists is None:
        return {}
    rows = await conn.fetch(f"SELECT version, checksum FROM {_TABLE}")
    return {r["version"]: r["checksum"] for r in rows}


async def pending(conn: asyncpg.Connection, migrations: list[Migration]) -> list[Migration]:
    """Migrations not yet applied.

    Raises:
        MigrationError: when an applied migration was edited or is unknown to this code.
    """
    done = await applied_versions(conn)
    known = {m.version for m in migrations}
    newer = sorted(v for v in done if v not in known)
    if newer:
        raise MigrationError(
            newer[-1], "the database has migrations this code does not know; upgrade the code"
        )
    for m in migrations:
        if m.version in done and done[m.version] != m.checksum:
            raise MigrationError(m.version, f"{m.name} was edited after it was applied")
    return [m for m in migrations if m.version not in done]


async def migrate(dsn: str, sql_dir: Traversable | None = None) -> list[int]:
    """Apply pending migrations to the database at ``dsn``.

    Returns:
        The versions applied by this call (empty when already current).

    Raises:
        MigrationError: naming the migration that failed, with PostgreSQL's message.
    """
    migrations = load_migrations(sql_dir)
    conn = await asyncpg.connect(dsn)
    applied: list[int] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_TABLE} ("
            " version int PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for m in await pending(conn, migrations):
            try:
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute("RESET ROLE")  # a migration may SET LOCAL ROLE
                    await conn.execute(
                        f"INSERT INTO {_TABLE} (version, name, checksum) VALUES ($1, $2, $3)",
                        m.version,
                        m.name,
                        m.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(m.version, f"{m.name} failed: {exc}") from exc
            log.info("applied migration %03d_%s", m.version, m.name)
            applied.append(m.version)
        # /readyz (running as the app role) checks that migrations are current.
        await conn.execute(f"GRANT SELECT ON {_TABLE} TO auditlog_app")
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
        finally:
            await conn.close()
    return applied


async def is_current(conn: asyncpg.Connection, sql_dir: Traversable | None = None) -> bool:
    """True when every migration in ``sql_dir`` is applied (for /readyz and doctor)."""
    try:
        return not await pending(conn, load_migrations(sql_dir))
    except MigrationError:
        return False
