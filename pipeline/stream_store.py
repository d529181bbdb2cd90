"""Streams out, in PostgreSQL: the streams and their cursors (``audit.streams``), recent
attempts, the events a stream reads, and the per-stream lease.

Events are read in a read-only, repeatable-read transaction that sets ``audit.tenant_id``
to the stream's tenant: row-level security confines the read to that tenant whatever the
query says, and the chain head read in the same snapshot tells whether seqs are missing.
A tenant's seqs commit in order (each flush holds the tenant's chain-head lock until it
commits), so reading ``seq > cursor`` in seq order never skips an event still in flight.

The lease: a session-level advisory lock per stream, held on one connection of the
process (:class:`Leases`). It goes when the process or its connection does (``kill
-9``), so another process takes the stream over within a supervisor tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from infra.db import APP_ROLE
from pipeline.stream_format import Gap, Row

_COLUMNS = ("stream_id, tenant_id, kind, description, destination, filters, secrets,"
            " secret_rotated_at, last_seq, last_delivered_at, state, paused_reason,"
            " paused_until, failures, failing_since, last_error, last_error_at,"
            " created_at")  # fmt: skip
MAX_PER_TENANT = 20
ATTEMPTS_KEPT = 100


@dataclass(frozen=True)
class Stream:
    """One row of ``audit.streams``."""

    stream_id: str
    tenant_id: str
    kind: str
    description: str
    destination: dict[str, Any]
    filters: dict[str, list[str]]
    secrets: bytes
    secret_rotated_at: datetime | None
    last_seq: int
    last_delivered_at: datetime | None
    state: str
    paused_reason: str | None
    paused_until: datetime | None
    failures: int
    failing_since: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    created_at: datetime


def _stream(row: asyncpg.Record | None) -> Stream | None:
    if row is None:
        return None
    values = dict(row)
    values["destination"] = json.loads(values["destination"])
    values["filters"] = json.loads(values["filters"])
    values["secrets"] = bytes(values["secrets"])
    return Stream(**values)


# -- the admin API's operations ---------------------------------------------------------------
async def insert(conn: asyncpg.Connection, stream_id: str, tenant_id: str, kind: str,
                 description: str, destination: dict[str, Any], filters: dict[str, Any],
                 secrets: bytes, start: str) -> Stream | None:  # fmt: skip
    """A new stream whose cursor is the tenant's head (``start="now"``) or 0; None when the
    tenant already has :data:`MAX_PER_TENANT` streams."""
    async with conn.transaction():
        # One creation per tenant at a time, so the count below holds.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('auditlog.streams.' || $1))",
                           tenant_id)  # fmt: skip
        count = await conn.fetchval("SELECT count(*) FROM audit.streams WHERE tenant_id = $1",
                                    tenant_id)  # fmt: skip
        if count >= MAX_PER_TENANT:
            return None
        head = 0
        if start == "now":
            head = await conn.fetchval("SELECT last_seq FROM audit.chain_heads WHERE"
                                       " tenant_id = $1", tenant_id) or 0  # fmt: skip
        row = await conn.fetchrow(
            "INSERT INTO audit.streams (stream_id, tenant_id, kind, description, destination,"
            " filters, secrets, last_seq) VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8)"
            f" RETURNING {_COLUMNS}",
            stream_id, tenant_id, kind, description, json.dumps(destination),
            json.dumps(filters), secrets, head,
        )  # fmt: skip
    return _stream(row)


async def list_for(conn: asyncpg.Connection, tenant_id: str) -> list[Stream]:
    """The tenant's streams, oldest first."""
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM audit.streams WHERE tenant_id = $1"
                            " ORDER BY created_at, stream_id", tenant_id)  # fmt: skip
    return [s for s in map(_stream, rows) if s is not None]


async def get(conn: asyncpg.Connection, tenant_id: str, stream_id: str) -> Stream | None:
    """The tenant's stream (None: none such, or another tenant's)."""
    return _stream(await conn.fetchrow(f"SELECT {_COLUMNS} FROM audit.streams WHERE"
                                       " tenant_id = $1 AND stream_id = $2",
                                       tenant_id, stream_id))  # fmt: skip


async def delete(conn: asyncpg.Connection, tenant_id: str, stream_id: str) -> Stream | None:
    """Delete the stream (its attempts go with it); the deleted row, or None."""
    return _stream(await conn.fetchrow(f"DELETE FROM audit.streams WHERE tenant_id = $1 AND"
                                       f" stream_id = $2 RETURNING {_COLUMNS}",
                                       tenant_id, stream_id))  # fmt: skip


async def resume(conn: asyncpg.Connection, tenant_id: str, stream_id: str) -> Stream | None:
    """Make the stream active again, its failure count reset (idempotent)."""
    return _stream(await conn.fetchrow(
        "UPDATE audit.streams SET state = 'active', paused_reason = NULL, paused_until = NULL,"
        " failures = 0, failing_since = NULL WHERE tenant_id = $1 AND stream_id = $2"
        f" RETURNING {_COLUMNS}", tenant_id, stream_id))  # fmt: skip


async def set_secrets(conn: asyncpg.Connection, tenant_id: str, stream_id: str,
                      blob: bytes) -> Stream | None:  # fmt: skip
    """Store newly sealed secrets (a rotation)."""
    return _stream(await conn.fetchrow(
        "UPDATE audit.streams SET secrets = $3, secret_rotated_at = now() WHERE tenant_id = $1"
        f" AND stream_id = $2 RETURNING {_COLUMNS}", tenant_id, stream_id, blob))  # fmt: skip


async def attempts(conn: asyncpg.Connection, stream_id: str,
                   limit: int = 20) -> list[asyncpg.Record]:  # fmt: skip
    """The stream's latest attempts, newest first."""
    return await conn.fetch(
        "SELECT attempted_at, first_seq, last_seq, records, ok, status, error, duration_ms"
        " FROM audit.stream_attempts WHERE stream_id = $1 ORDER BY id DESC LIMIT $2",
        stream_id, limit)  # fmt: skip


async def lag_events(conn: asyncpg.Connection, tenant_id: str, last_seq: int) -> int:
    """How many of the tenant's seqs lie beyond ``last_seq``."""
    head = await conn.fetchval("SELECT last_seq FROM audit.chain_heads WHERE tenant_id = $1",
                               tenant_id)  # fmt: skip
    return max(0, (head or 0) - last_seq)


async def status_summary(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Streams that are paused or failing, for /readyz (any tenant; ids and reasons)."""
    return await conn.fetch(
        "SELECT stream_id, tenant_id, state, paused_reason, failures, last_error FROM"
        " audit.streams WHERE state = 'paused' OR failures > 0 ORDER BY stream_id LIMIT 20"
    )


# -- the delivery agent's -------------------------------------------------------------------
async def deliverable(conn: asyncpg.Connection) -> tuple[list[str], int]:
    """(streams to deliver now: active ones, and paused ones whose cool-down has passed;
    how many streams are paused)."""
    rows = await conn.fetch("SELECT stream_id, state = 'active' OR paused_until <= now() AS due"
                            " FROM audit.streams ORDER BY stream_id")  # fmt: skip
    return [r["stream_id"] for r in rows if r["due"]], sum(1 for r in rows if not r["due"])


async def load(conn: asyncpg.Connection, stream_id: str) -> Stream | None:
    """The stream as it is now (None once deleted)."""
    return _stream(await conn.fetchrow(f"SELECT {_COLUMNS} FROM audit.streams WHERE"
                                       " stream_id = $1", stream_id))  # fmt: skip


async def wake(conn: asyncpg.Connection, stream_id: str) -> bool:
    """End a cool-down that has passed (the stream is active again); True if it did."""
    done = await conn.execute(
        "UPDATE audit.streams SET state = 'active', paused_reason = NULL, paused_until = NULL,"
        " failures = 0, failing_since = NULL WHERE stream_id = $1 AND state = 'paused' AND"
        " paused_until <= now()", stream_id)  # fmt: skip
    return done == "UPDATE 1"


async def advance(conn: asyncpg.Connection, stream_id: str, old: int, new: int) -> bool:
    """Move the cursor from ``old`` to ``new`` after a delivery the receiver took; False
    when it is no longer at ``old`` (deleted, or moved by someone else: stop)."""
    done = await conn.execute(
        "UPDATE audit.streams SET last_seq = $3, last_delivered_at = now(), failures = 0,"
        " failing_since = NULL WHERE stream_id = $1 AND last_seq = $2",
        stream_id, old, new)  # fmt: skip
    return done == "UPDATE 1"


async def failed(conn: asyncpg.Connection, stream_id: str, error: str,
                 pause_reason: str | None, cooldown_s: float) -> int:  # fmt: skip
    """Count a failed attempt; with ``pause_reason``, pause the stream (until an operator
    resumes it, or for ``cooldown_s`` when > 0). Returns the consecutive failures."""
    return await conn.fetchval(
        "UPDATE audit.streams SET failures = failures + 1,"
        " failing_since = coalesce(failing_since, now()), last_error = $2,"
        " last_error_at = now(),"
        " state = CASE WHEN $3::text IS NULL THEN state ELSE 'paused' END,"
        " paused_reason = coalesce($3, paused_reason),"
        " paused_until = CASE WHEN $3::text IS NULL THEN paused_until WHEN $4 > 0"
        "   THEN now() + make_interval(secs => $4) END"
        " WHERE stream_id = $1 RETURNING failures",
        stream_id, error[:1000], pause_reason and pause_reason[:1000], cooldown_s,
    ) or 0  # fmt: skip


async def record_attempt(conn: asyncpg.Connection, stream_id: str, first: int, last: int,
                         records: int, ok: bool, status: int | None, error: str,
                         seconds: float, prune: bool = False) -> None:  # fmt: skip
    """Note one attempt (and, with ``prune``, drop all but the latest
    :data:`ATTEMPTS_KEPT`)."""
    with contextlib.suppress(asyncpg.ForeignKeyViolationError):  # deleted meanwhile
        await conn.execute(
            "INSERT INTO audit.stream_attempts (stream_id, first_seq, last_seq, records, ok,"
            " status, error, duration_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            stream_id, first, last, records, ok, status, error[:1000] or None,
            int(seconds * 1000),
        )  # fmt: skip
    if prune:
        await conn.execute(
            "DELETE FROM audit.stream_attempts WHERE stream_id = $1 AND id < (SELECT id FROM"
            " audit.stream_attempts WHERE stream_id = $1 ORDER BY id DESC OFFSET $2 LIMIT 1)",
            stream_id, ATTEMPTS_KEPT)  # fmt: skip


@contextlib.asynccontextmanager
async def tenant_snapshot(pool: asyncpg.Pool,
                          tenant_id: str) -> AsyncIterator[asyncpg.Connection]:  # fmt: skip
    """A read-only repeatable-read transaction confined to ``tenant_id`` by row-level
    security (every stored event visible: no retention window is set)."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                        readonly=True):  # fmt: skip
        await conn.execute("SELECT set_config('audit.tenant_id', $1, true)", tenant_id)
        yield conn


async def read_after(conn: asyncpg.Connection, tenant_id: str, after: int,
                     limit: int) -> tuple[list[Row], int]:  # fmt: skip
    """(up to ``limit`` of the tenant's events with seq > ``after``, in seq order; the
    tenant's head seq), in the snapshot of :func:`tenant_snapshot`."""
    rows = await conn.fetch(
        "SELECT e.seq, e.id::text AS id, e.occurred_at, e.received_at, e.severity, e.category,"
        " e.action, audit.event_json(e)::text AS doc FROM audit.events e"
        " WHERE e.tenant_id = $1 AND e.seq > $2 ORDER BY e.seq LIMIT $3",
        tenant_id, after, limit)  # fmt: skip
    head = await conn.fetchval("SELECT last_seq FROM audit.chain_heads WHERE tenant_id = $1",
                               tenant_id)  # fmt: skip
    return [Row(**dict(r)) for r in rows], int(head or 0)


async def gaps_between(conn: asyncpg.Connection, tenant_id: str, after: int,
                       before: int) -> list[Gap]:  # fmt: skip
    """Retention's signed gaps of the tenant that overlap seqs ``after+1 .. before-1``."""
    rows = await conn.fetch(
        "SELECT first_seq, last_seq, partition, dropped_at, note FROM audit.retention_gaps"
        " WHERE tenant_id = $1 AND last_seq > $2 AND first_seq < $3 ORDER BY first_seq",
        tenant_id, after, before)  # fmt: skip
    return [Gap(**dict(r)) for r in rows]


# -- leases ----------------------------------------------------------------------------------
def lease_key(stream_id: str) -> int:
    """The stream's advisory lock key (64 bits of a hash, as a signed bigint)."""
    digest = hashlib.sha256(b"auditlog.stream\x00" + stream_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Leases:
    """Per-stream leases of this process, held on one connection of its own.

    Args:
        dsn: the runtime login's DSN.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.dsn, server_settings={
                "role": APP_ROLE, "application_name": "auditlog streams"})  # fmt: skip
        return self._conn

    async def take(self, stream_id: str) -> bool:
        """Try to take the stream's lease (False: another process holds it)."""
        async with self._lock:
            conn = await self._connection()
            return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)",
                                            lease_key(stream_id)))  # fmt: skip

    async def release(self, stream_id: str) -> None:
        """Give the stream's lease back (nothing when the connection is gone: so is it)."""
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                with contextlib.suppress(asyncpg.PostgresError, OSError):
                    await self._conn.execute("SELECT pg_advisory_unlock($1)",
                                             lease_key(stream_id))  # fmt: skip

    async def alive(self) -> bool:
        """Whether the connection holding the leases still answers (if it does, every
        lease taken on it is still held)."""
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                return False
            try:
                await self._conn.fetchval("SELECT 1", timeout=5)
            except (asyncpg.PostgresError, OSError, TimeoutError):
                return False
            return True

    async def close(self) -> None:
        """Close the connection: every lease it held goes with it."""
        async with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    await self._conn.close(timeout=5)
                self._conn = None
