"""Tenants' retention and legal holds: what the read API may show, cached briefly.

A tenant's events stay readable for its retention (its override, else
``AUDIT_RETENTION_DAYS``) counted back from now by ``occurred_at``; older ones are hidden
from every read path at once (the read transaction sets ``audit.visible_from`` and the
row-level security policy applies it). A legal hold shows everything while it stands.
Changes take effect in this process at once, in other API replicas within
:data:`CACHE_SECONDS`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from query_api import contract, sql

CACHE_SECONDS = 5.0


class Policies:
    """Reads and changes ``audit.tenant_policies``.

    Args:
        pool: app-role pool.
        default_days: ``AUDIT_RETENTION_DAYS``.
        archiving: whether ``AUDIT_RETENTION_ARCHIVE`` names a destination.
    """

    def __init__(self, pool: asyncpg.Pool, default_days: int, archiving: bool = False) -> None:
        self.pool = pool
        self.default_days = default_days
        self.archiving = archiving  # AUDIT_RETENTION_ARCHIVE names a destination
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}

    async def _row(self, tenant_id: str) -> dict[str, Any] | None:
        now = time.monotonic()
        hit = self._cache.get(tenant_id)
        if hit and hit[0] > now:
            return hit[1]
        async with self.pool.acquire() as conn:
            row = await sql.get_policy(conn, tenant_id)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[tenant_id] = (now + CACHE_SECONDS, row)
        return row

    def _view(self, tenant_id: str, row: dict[str, Any] | None) -> contract.TenantPolicy:
        override = row["retention_days"] if row else None
        days = override or self.default_days
        hold = None
        if row and row["hold_reason"] is not None:
            hold = contract.LegalHold(row["hold_reason"], row["hold_set_by"] or "",
                                      row["hold_set_at"])  # fmt: skip
        visible = None if hold else datetime.now(UTC) - timedelta(days=days)
        archive = row["archive"] if row else None
        return contract.TenantPolicy(tenant_id=tenant_id, retention_days=override,
                                     effective_retention_days=days, visible_from=visible,
                                     legal_hold=hold, archive=archive,
                                     archive_before_drop=self.archiving if archive is None
                                     else archive)  # fmt: skip

    async def get(self, tenant_id: str) -> contract.TenantPolicy:
        """The tenant's policy as it applies now."""
        return self._view(tenant_id, await self._row(tenant_id))

    async def visible_from(self, tenant_id: str) -> datetime | None:
        """The oldest ``occurred_at`` reads may show (None: all, under a legal hold)."""
        return (await self.get(tenant_id)).visible_from

    async def set_retention(self, tenant_id: str, days: int | None,
                            archive: bool | None = None) -> contract.TenantPolicy:  # fmt: skip
        """Override the tenant's retention and archiving (None: back to the global ones)."""
        async with self.pool.acquire() as conn:
            row = await sql.set_retention(conn, tenant_id, days, archive)
        self._cache.pop(tenant_id, None)
        return self._view(tenant_id, row)

    async def set_hold(self, tenant_id: str, reason: str | None,
                       by: str | None) -> contract.TenantPolicy:  # fmt: skip
        """Place (``reason``) or release (None) the tenant's legal hold."""
        async with self.pool.acquire() as conn:
            row = await sql.set_hold(conn, tenant_id, reason, by)
        self._cache.pop(tenant_id, None)
        return self._view(tenant_id, row)
