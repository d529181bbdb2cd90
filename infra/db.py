"""PostgreSQL connection helpers: the app-role pool and database bootstrap."""

from __future__ import annotations

from typing import Any

import asyncpg

from infra import dsn as dsns

APP_ROLE = "auditlog_app"


# Server-side TCP keepalives of the service's sessions: idle 30 s, then every 10 s, gone
# after 3 unanswered probes (~60 s in all).
KEEPALIVES = {"tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10",
              "tcp_keepalives_count": "3"}  # fmt: skip


async def create_pool(dsn: str, *, max_size: int = 8, min_size: int = 1) -> asyncpg.Pool:
    """A pool whose sessions run as the app role (INSERT/SELECT only, RLS enforced).

    The role is a startup parameter, so asyncpg's ``RESET ALL`` on release keeps it. So
    are TCP keepalives on the server's side of each session: a client host that vanishes
    (no FIN, no RST) is noticed within about a minute and its session ends, taking its
    row locks and tenant-bucket claims with it, instead of after the kernel's two hours.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings={"role": APP_ROLE, "application_name": "auditlog", **KEEPALIVES},
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
    """``dsn`` pointing at another database on the same server(s)."""
    return dsns.replace(dsn, database=database)


async def ensure_database(dsn: str) -> None:
    """Create the DSN's database when missing (connecting to ``postgres`` to do so)."""
    name = dsns.parse(dsn).database or "postgres"
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


def runtime_role(dsn: str) -> str:
    """The login role the service runs as on ``dsn``'s database: ``<database>_runtime``.

    One per database, so databases sharing a server (tests, staging beside production)
    never share its password.
    """
    name = dsns.parse(dsn).database or "postgres"
    safe = "".join(c if c.isalnum() or c == "_" else "_" for c in name.lower())
    return f"{safe[:50]}_runtime"


async def ensure_runtime_role(owner_dsn: str, password: str) -> str:
    """Make (or update) the runtime login role and return the DSN to log in with.

    The role may log in and is a member of ``auditlog_app`` only: it can insert and read
    as the app, never alter or drop tables, disable triggers, or touch what the app role
    cannot. Run with the migration (owner) credentials, which need CREATEROLE.
    """
    role = runtime_role(owner_dsn)
    conn = await asyncpg.connect(owner_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
        verb = "ALTER" if exists else "CREATE"
        stmt = await conn.fetchval(
            f"SELECT format('{verb} ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
            " NOREPLICATION NOBYPASSRLS INHERIT PASSWORD %L', $1::text, $2::text)",
            role, password,
        )  # fmt: skip
        try:
            await conn.execute(stmt)
        except asyncpg.DuplicateObjectError:  # made meanwhile by another process
            await conn.execute(stmt.replace("CREATE ROLE", "ALTER ROLE", 1))
        await conn.execute(f'GRANT {APP_ROLE} TO "{role}"')
    finally:
        await conn.close()
    # The same hosts, ports and options (target_session_attrs, sslmode, ...) as the owner's.
    return dsns.replace(owner_dsn, user=role, password=password)


async def holds_owner_rights(conn: asyncpg.Connection) -> bool:
    """True when the session's login can do the owner's work: create roles (a superuser,
    or CREATEROLE) or act as the owner of the ``audit`` schema (a member of its owner, or
    of ``auditlog_owner`` before the schema exists). The runtime login
    (:func:`ensure_runtime_role`) can do none of these.
    """
    return bool(
        await conn.fetchval(
            "SELECT r.rolsuper OR r.rolcreaterole OR EXISTS (SELECT 1 FROM pg_roles o"
            " WHERE pg_has_role(o.oid, 'MEMBER') AND (o.rolname = 'auditlog_owner' OR o.oid"
            " = (SELECT nspowner FROM pg_namespace WHERE nspname = 'audit')))"
            " FROM pg_roles r WHERE r.rolname = current_user"
        )
    )


async def can_migrate(dsn: str) -> bool:
    """Whether ``dsn``'s login holds owner rights (:func:`holds_owner_rights`). When its
    database does not exist yet, the login's attributes are read in ``postgres``.
    """
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        conn = await asyncpg.connect(with_database(dsn, "postgres"))
    try:
        return await holds_owner_rights(conn)
    finally:
        await conn.close()
