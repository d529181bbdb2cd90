"""PostgreSQL connection helpers: the app-role pool and database bootstrap."""

from __future__ import annotations

from typing import Any
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


class TimedPool:
    """A pool whose ``acquire()`` gives up after ``timeout`` seconds (``TimeoutError``).

    The API's handlers acquire through it, so a saturated pool answers 503 quickly
    instead of queueing requests without bound. Everything else is the wrapped pool's.
    """

    def __init__(self, pool: asyncpg.Pool, timeout: float) -> None:
        self._pool = pool
        self.timeout = timeout

    def acquire(self) -> Any:
        """The pool's acquire context with this pool's timeout."""
        return self._pool.acquire(timeout=self.timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


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
