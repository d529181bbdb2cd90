"""PostgreSQL connection helpers: the app-role pool and database bootstrap."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg

APP_ROLE = "auditlog_app"


async def create_pool(dsn: str, *, max_size: int = 8, min_size: int = 1) -> asyncpg.Pool:
    """A pool whose sessions run as the app role (INSERT/SELECT only, RLS enforced).

    The role is a startup parameter, so asyncpg's ``RESET ALL`` on release keeps it.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings={"role": APP_ROLE, "application_name": "auditlog"},
        command_timeout=60,
    )
    assert pool is not None
    return pool


def with_database(dsn: str, database: str) -> str:
    """``dsn`` pointing at another database on the same server."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


async def ensure_database(dsn: str) -> None:
    """Create the DSN's database when missing (connecting to ``postgres`` to do so)."""
    name = urlsplit(dsn).path.lstrip("/") or "postgres"
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return
    admin = await asyncpg.connect(with_database(dsn, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.DuplicateDatabaseError:
        pass
    finally:
        await admin.close()
