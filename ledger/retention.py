"""Dropping expired months (run with the owner's credentials, never the runtime role's).

A monthly partition is due when, for every tenant with events in it, the month ended more
than that tenant's retention ago and no legal hold covers the tenant, and every event in
it is covered by a signed checkpoint (its leaves are in the stored tree). Dropping one:

1. for each tenant in it, the runs of consecutive seqs it holds are recorded as signed
   gaps (``audit.retention_gaps``: the hash before the run and the run's last hash), so
   verification and proofs continue across them;
2. the month's claims (``audit.event_ids``) are deleted, in batches (row locks only);
3. the partition is detached ``CONCURRENTLY`` (no lock that blocks ingestion) and dropped,
   then the month's search partition (``audit.search``) likewise.

One runner at a time: a round (:func:`run_job`, ``auditlog retention apply``) holds the
retention lease, a session-level PostgreSQL advisory lock on the database, from its plan
to its last drop; a process that does not get it skips the round.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from infra.errors import ArchiveError
from infra.settings import Settings
from infra.signing import Signer, trusted_keys
from ledger import archive
from ledger.chain import hash_before
from ledger.checkpoints import origin
from schemas import tlog

log = logging.getLogger(__name__)
CLAIM_BATCH = 10_000
LEASE_KEY = 0x6175_6469_7472_6574  # pg advisory lock id of the retention lease ("auditret")


@dataclass
class Month:
    """One partition and what the plan says of it."""

    name: str
    start: datetime
    end: datetime
    events: int
    bytes: int
    tenants: dict[str, int] = field(default_factory=dict)  # tenant -> events in it
    due: bool = False
    why_not: str = ""
    due_at: datetime | None = None  # when it becomes due (None: held, or unknown)
    archive: list[str] = field(default_factory=list)  # tenants archived before the drop


def _bounds(bounds: str) -> tuple[datetime, datetime]:
    # "FOR VALUES FROM ('2026-09-01 00:00:00+00') TO ('2026-10-01 00:00:00+00')"
    parts = bounds.split("'")
    return (datetime.fromisoformat(parts[1]).astimezone(UTC),
            datetime.fromisoformat(parts[3]).astimezone(UTC))  # fmt: skip


async def plan(conn: asyncpg.Connection, settings: Settings,
               now: datetime | None = None) -> list[Month]:  # fmt: skip
    """Every partition, oldest first, with whether it is due and, if not, why."""
    now = now or datetime.now(UTC)
    policies = {r["tenant_id"]: r for r in await conn.fetch(
        "SELECT tenant_id, retention_days, hold_reason, archive"
        " FROM audit.tenant_policies")}  # fmt: skip
    signed = {r["tenant_id"]: r["size"] for r in await conn.fetch(
        "SELECT tenant_id, size FROM audit.merkle_state")}  # fmt: skip
    months = []
    for p in await conn.fetch("SELECT name, bounds, bytes FROM audit.partitions ORDER BY name"):
        start, end = _bounds(p["bounds"])
        rows = await conn.fetch(f"SELECT tenant_id, count(*) AS n, max(seq) AS top"
                                f" FROM audit.{p['name']} GROUP BY tenant_id")  # fmt: skip
        m = Month(p["name"], start, end, sum(r["n"] for r in rows), p["bytes"],
                  {r["tenant_id"]: r["n"] for r in rows})  # fmt: skip
        m.archive = [r["tenant_id"] for r in rows
                     if _archived(policies.get(r["tenant_id"]), settings)]  # fmt: skip
        m.why_not = _blocker(m, rows, policies, signed, settings.retention_days, now)
        if not m.why_not and m.archive and not settings.retention_archive:
            m.why_not = (f"{m.archive[0]} asks for an archive before the drop and"
                         " AUDIT_RETENTION_ARCHIVE names no destination")  # fmt: skip
        m.due = not m.why_not
        m.due_at = _due_at(m, rows, policies, settings.retention_days)
        months.append(m)
    return months


def _archived(policy: asyncpg.Record | None, settings: Settings) -> bool:
    if policy is not None and policy["archive"] is not None:
        return bool(policy["archive"])
    return bool(settings.retention_archive)


def _blocker(m: Month, rows: list[asyncpg.Record], policies: dict[str, asyncpg.Record],
             signed: dict[str, int], default_days: int, now: datetime) -> str:  # fmt: skip
    if m.end > now - timedelta(days=1):
        return "the month has not ended a day ago"
    if not rows and m.end > now - timedelta(days=default_days):
        return f"retention ({default_days} days) has not passed"
    for r in rows:
        p = policies.get(r["tenant_id"])
        if p is not None and p["hold_reason"] is not None:
            return f"legal hold on {r['tenant_id']}: {p['hold_reason']}"
        days = (p["retention_days"] if p is not None else None) or default_days
        if m.end > now - timedelta(days=days):
            return f"{r['tenant_id']}'s retention ({days} days) has not passed"
        if signed.get(r["tenant_id"], 0) < r["top"]:
            return f"{r['tenant_id']}'s events there are not all under a signed checkpoint yet"
    return ""


def _due_at(m: Month, rows: list[asyncpg.Record], policies: dict[str, asyncpg.Record],
            default_days: int) -> datetime | None:  # fmt: skip
    days = [default_days] if not rows else []
    for r in rows:
        p = policies.get(r["tenant_id"])
        if p is not None and p["hold_reason"] is not None:
            return None
        days.append((p["retention_days"] if p is not None else None) or default_days)
    return m.end + timedelta(days=max(days))


def next_due(months: list[Month]) -> datetime | None:
    """When the next month that is not due yet becomes due."""
    waits = [m.due_at for m in months if not m.due and m.due_at is not None]
    return min(waits, default=None)


@contextlib.asynccontextmanager
async def lease(owner_dsn: str) -> AsyncIterator[str | None]:
    """Try to take the retention lease for the block.

    Session-level (a round spans several transactions, and ``DETACH CONCURRENTLY`` runs
    outside any), on a connection of its own: it goes when the block ends or when this
    process's connection does.

    Yields:
        ``None`` when this process holds the lease; else who does, as far as this login
        may see (``pid N (application, host)``), for the message.
    """
    # Named so that a refused runner can say who holds the lease (pg_stat_activity).
    name = f"auditlog retention {socket.gethostname()} pid {os.getpid()}"[:63]
    conn = await asyncpg.connect(owner_dsn, server_settings={"application_name": name})
    try:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEASE_KEY):
            yield await _holder(conn)
            return
        try:
            yield None
        finally:
            with contextlib.suppress(asyncpg.PostgresError, OSError):
                await conn.execute("SELECT pg_advisory_unlock($1)", LEASE_KEY)
    finally:
        await conn.close()


async def _holder(conn: asyncpg.Connection) -> str:
    # A bigint key is held as classid (high 32 bits) and objid (low 32 bits), objsubid 1.
    row = await conn.fetchrow(
        "SELECT l.pid, a.application_name, a.client_addr::text AS addr FROM pg_locks l"
        " LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'"
        " AND l.granted AND l.database = (SELECT oid FROM pg_database"
        " WHERE datname = current_database()) AND l.objsubid = 1"
        " AND l.classid::bigint = $1 AND l.objid::bigint = $2 LIMIT 1",
        LEASE_KEY >> 32, LEASE_KEY & 0xFFFF_FFFF,
    )  # fmt: skip
    if row is None:
        return "another process"
    where = ", ".join(x for x in (row["application_name"], row["addr"]) if x)
    return f"pid {row['pid']}" + (f" ({where})" if where else "")


async def run_job(owner_dsn: str, settings: Settings, signer: Signer,
                  metrics: Any) -> int | None:  # fmt: skip
    """One round of the retention job, under the retention lease (:func:`lease`): plan,
    drop what is due (archived first where the policy says so), update the metrics.

    A month whose archive cannot be written or verified stays (logged, counted in
    ``auditlog_retention_archive_failures_total``) and is tried again next round.

    Returns:
        The months dropped, or ``None`` when another process holds the lease (this round
        is skipped: nothing read, nothing counted).
    """
    async with lease(owner_dsn) as holder:
        if holder is not None:
            log.debug("retention: round skipped, %s holds the retention lease", holder)
            return None
        return await _round(owner_dsn, settings, signer, metrics)


async def _round(owner_dsn: str, settings: Settings, signer: Signer, metrics: Any) -> int:
    conn = await asyncpg.connect(owner_dsn)
    try:
        months = await plan(conn, settings)
    finally:
        await conn.close()
    dropped = 0
    for m in months:
        if m.due:
            try:
                await drop(owner_dsn, settings, signer, m)
            except ArchiveError as exc:
                metrics.retention_archive_failures.inc()
                log.error("retention: %s stays (not dropped): %s", m.name, exc)
                continue
            metrics.retention_dropped.inc()
            metrics.retention_freed.inc(m.bytes)
            dropped += 1
    upcoming = next_due(months)
    metrics.retention_next.set(upcoming.timestamp() if upcoming else 0)
    if not dropped:
        log.info("retention: nothing due (next %s)", upcoming.date() if upcoming else "none")
    return dropped


def _runs(seqs: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for s in seqs:
        if runs and runs[-1][1] == s - 1:
            runs[-1] = (runs[-1][0], s)
        else:
            runs.append((s, s))
    return runs


def gap_text(settings: Settings, tenant: str, first: int, last: int, prev: bytes,
             last_hash: bytes, at: datetime) -> str:  # fmt: skip
    """The signed line of a gap record (``schemas.tlog.gap_text`` for this tenant's log)."""
    return tlog.gap_text(origin(settings, tenant), first, last, prev, last_hash,
                         tlog.utc_stamp(at))  # fmt: skip


async def drop(owner_dsn: str, settings: Settings, signer: Signer, month: Month,
               on_archived: Callable[[str], None] | None = None) -> int:  # fmt: skip
    """Drop one due month (see the module docstring), after archiving ``month.archive``'s
    events and verifying the archives (``ledger.archive``); returns the events removed.

    Raises:
        ArchiveError: an archive could not be written or did not verify: nothing dropped.
    """
    conn = await asyncpg.connect(owner_dsn)
    try:
        if month.archive:
            dest = archive.destination(settings)
            if dest is None:
                raise ArchiveError(f"{month.name}: an archive is required and "
                                   "AUDIT_RETENTION_ARCHIVE names no destination")  # fmt: skip
            keys = trusted_keys(settings, [signer.verifier_key])
            written = await archive.archive_month(conn, settings, month.name, month.archive,
                                                  dest, keys)  # fmt: skip
            for where in written:
                if on_archived is not None:
                    on_archived(where)
        at = datetime.now(UTC).replace(microsecond=0)
        async with conn.transaction():
            for tenant in month.tenants:
                rows = await conn.fetch(f"SELECT seq, hash FROM audit.{month.name} WHERE"
                                        " tenant_id = $1 ORDER BY seq", tenant)  # fmt: skip
                hashes = {r["seq"]: bytes(r["hash"]) for r in rows}
                for first, last in _runs(sorted(hashes)):
                    prev = await hash_before(conn, tenant, first)
                    text = gap_text(settings, tenant, first, last, prev, hashes[last], at)
                    await conn.execute(
                        "INSERT INTO audit.retention_gaps (tenant_id, first_seq, last_seq,"
                        " prev_hash, last_hash, partition, dropped_at, note)"
                        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        tenant, first, last, prev, hashes[last], month.name, at,
                        signer.sign(text),
                    )  # fmt: skip
        while True:  # claims go with their events, a batch per transaction
            async with conn.transaction():
                await conn.execute("SELECT set_config('audit.retention_drop', 'on', true)")
                gone = await conn.execute(
                    "DELETE FROM audit.event_ids WHERE ctid IN (SELECT ctid FROM audit.event_ids"
                    " WHERE occurred_at >= $1 AND occurred_at < $2 LIMIT $3)",
                    month.start, month.end, CLAIM_BATCH,
                )  # fmt: skip
            if gone == "DELETE 0":
                break
        await conn.execute(f"ALTER TABLE audit.events DETACH PARTITION audit.{month.name}"
                           " CONCURRENTLY")  # fmt: skip
        await conn.execute(f"DROP TABLE audit.{month.name}")
        await drop_search_months(conn)
        await conn.execute(
            "INSERT INTO audit.dropped_partitions (name, events, bytes) VALUES ($1, $2, $3)",
            month.name, month.events, month.bytes,
        )  # fmt: skip
        log.info("retention: dropped %s (%d events of %d tenants, %d bytes)", month.name,
                 month.events, len(month.tenants), month.bytes)  # fmt: skip
        return month.events
    finally:
        await conn.close()


async def drop_search_months(conn: asyncpg.Connection) -> list[str]:
    """Detach (``CONCURRENTLY``) and drop every month of ``audit.search`` whose events
    partition is gone: the one just dropped, and any a failed round left behind. Events
    first, then their search documents: no indexed event is ever unfindable meanwhile, and
    the indexer finds no event of a dropped month to index again.

    Returns:
        The search partitions dropped.
    """
    names = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'audit.search'::regclass AND to_regclass("
        " 'audit.events' || substr(c.relname, length('search') + 1)) IS NULL ORDER BY 1"
    )
    for r in names:
        await conn.execute(f"ALTER TABLE audit.search DETACH PARTITION audit.{r['relname']}"
                           " CONCURRENTLY")  # fmt: skip
        await conn.execute(f"DROP TABLE audit.{r['relname']}")
    return [r["relname"] for r in names]
