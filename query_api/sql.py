"""All SQL of the API (reads, keys, write-claim lookups), in one place. Every value is a
bind parameter.

Queries run inside :func:`tenant_tx`: a read-only transaction with ``audit.tenant_id``
set, so PostgreSQL row-level security confines them to that tenant whatever the WHERE
clause says. The explicit ``tenant_id = $1`` is still there: it is what lets the primary
key ``(tenant_id, occurred_at, id)`` serve newest-first keyset pages.

Text search (``q``) matches what ``audit.search_text(...) @@ websearch_to_tsquery('simple',
q)`` matches, by one of two plans, both exact:

- *walk*: the newest candidates (the other filters, in page order), at most
  :data:`WALK_PER_ROW` per row asked, tested with that expression; when the page fills
  there, it is the answer (common words: a few hundred rows, as before);
- *keys*: ``audit.search_keys(q)``, the tenant's matching events from the search index
  (``sql/009_search_index.sql``) plus its not-yet-indexed tail, joined to the events in
  page order. Rare words cost what they match, not the tenant's size (under row-level
  security no GIN index can serve ``@@`` directly: it is not leakproof).

While a tenant's unindexed tail is longer than the walk (a backfill after the upgrade, an
indexer far behind), pages come from the expression alone, as before the search table.
Stats and exports always take the keys.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from asyncpg import Connection

from query_api.cursor import Cursor
from query_api.filters import EventQuery

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SEARCH_COLUMNS = ("action", "description", "actor_display_name", "resource_display_name")
SEARCH_EXPR = f"audit.search_text({', '.join(SEARCH_COLUMNS)})"  # what `q` matches
# A page of n rows first walks up to WALK_PER_ROW * (n + 1) newest candidates: matches
# rarer than 1 in WALK_PER_ROW go through the search index instead.
WALK_PER_ROW = 20
CSV_COLUMNS = (
    "id", "tenant_id", "seq", "occurred_at", "received_at", "action", "category",
    "severity", "actor_type", "actor_id", "actor_display_name", "resource_type",
    "resource_id", "resource_display_name", "description", "ip", "user_agent",
    "request_id", "trace_id", "metadata", "changes", "related_resources", "hash",
)  # fmt: skip


@contextlib.asynccontextmanager
async def tenant_tx(pool: asyncpg.Pool, tenant_id: str,
                    visible_from: datetime | None = None) -> AsyncIterator[Connection]:  # fmt: skip
    """A pooled connection in a read-only transaction scoped to ``tenant_id`` by RLS, which
    also hides the tenant's events that occurred before ``visible_from`` (retention)."""
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute(
            "SELECT set_config('audit.tenant_id', $1, true),"
            " set_config('audit.visible_from', $2, true)",
            tenant_id, visible_from.isoformat() if visible_from else "",
        )  # fmt: skip
        yield conn


class Where:
    """Accumulates conditions and their bind parameters."""

    def __init__(self, tenant_id: str) -> None:
        self.params: list[Any] = [tenant_id]
        self.conds: list[str] = ["tenant_id = $1"]
        self.search: str | None = None  # the tsquery of `q`, matched by the FROM clause

    def source(self, keys_order: str = "", keys_cond: str = "") -> str:
        """The FROM clause: the events (alias ``e``), joined to the keys that ``q``
        matches when it is given (in ``keys_order``, e.g. ``DESC``, where order matters;
        ``keys_cond`` on their ``k_at``/``k_id`` narrows them first)."""
        if self.search is None:
            return "audit.events e"
        where = f" WHERE {keys_cond}" if keys_cond else ""
        order = f" ORDER BY k_at {keys_order}, k_id {keys_order}" if keys_order else ""
        return (f"(SELECT k_at, k_id FROM audit.search_keys({self.search}) AS k(k_at, k_id)"
                f"{where}{order}) k JOIN audit.events e ON e.occurred_at = k.k_at"
                " AND e.id = k.k_id")  # fmt: skip

    def bind(self, value: Any) -> str:
        """Add a parameter; return its placeholder."""
        self.params.append(value)
        return f"${len(self.params)}"

    def add(self, cond: str) -> None:
        """Add a condition (ANDed)."""
        self.conds.append(cond)

    @property
    def sql(self) -> str:
        """The WHERE clause body."""
        return " AND ".join(self.conds)


def build_where(q: EventQuery, tenant_id: str) -> Where:
    """Conditions for every filter of ``q`` (not the page cursor)."""
    w = Where(tenant_id)
    if q.start_time:
        w.add(f"occurred_at >= {w.bind(q.start_time)}")
    if q.end_time:
        w.add(f"occurred_at < {w.bind(q.end_time)}")
    if q.severities:
        w.add(f"severity = ANY({w.bind(list(q.severities))}::text[])")
    if q.categories:
        w.add(f"category = ANY({w.bind(list(q.categories))}::text[])")
    if q.actions or q.action_prefixes:
        alts = []
        if q.actions:
            alts.append(f"action = ANY({w.bind(list(q.actions))}::text[])")
        alts.extend(f"starts_with(action, {w.bind(p)})" for p in q.action_prefixes)
        w.add("(" + " OR ".join(alts) + ")")
    if q.actor_type:
        w.add(f"actor_type = {w.bind(q.actor_type)}")
    if q.actor_id:
        w.add(f"actor_id = {w.bind(q.actor_id)}")
    if q.resource_type or q.resource_id:
        primary, related = [], {}
        if q.resource_type:
            primary.append(f"resource_type = {w.bind(q.resource_type)}")
            related["type"] = q.resource_type
        if q.resource_id:
            primary.append(f"resource_id = {w.bind(q.resource_id)}")
            related["id"] = q.resource_id
        contains = w.bind(json.dumps([related]))
        w.add(f"(({' AND '.join(primary)}) OR related_resources @> {contains}::jsonb)")
    if q.q:
        w.search = f"websearch_to_tsquery('simple', {w.bind(q.q)})"
    return w


async def list_events(
    conn: asyncpg.Connection, q: EventQuery, tenant_id: str, after: Cursor | None
) -> list[asyncpg.Record]:
    """One page (``page_size + 1`` rows, to know whether more follow), keyset-paginated.

    Each record has ``doc`` (the event's JSON text), ``occurred_at`` and ``id``. With
    ``q.after_seq`` the page is the events after that seq in seq (commit) order instead;
    the caller pages by passing the last seq it saw.
    """
    w = build_where(q, tenant_id)
    desc = q.order == "desc"
    direction = "DESC" if desc else "ASC"
    if q.after_seq is not None:  # commit order: the tenant's chain position
        w.add(f"seq > {w.bind(q.after_seq)}")
        return await conn.fetch(
            "SELECT audit.event_json(e)::text AS doc, occurred_at, id, seq"
            f" FROM {w.source()} WHERE {w.sql} ORDER BY seq {direction}"
            f" LIMIT {w.bind(q.page_size + 1)}",
            *w.params,
        )
    keys_cond = ""
    if after is not None:
        op = "<" if desc else ">"
        ts = w.bind(EPOCH + timedelta(microseconds=after.occurred_us))
        key = f"({ts}::timestamptz, {w.bind(after.event_id)}::uuid)"
        w.add(f"(occurred_at, id) {op} {key}")
        keys_cond = f"(k_at, k_id) {op} {key}"
    limit = w.bind(q.page_size + 1)
    if w.search is not None:
        rows = await _walk(conn, w, direction, limit, q.page_size)
        if rows is not None:
            return rows
    sql = (
        "SELECT audit.event_json(e)::text AS doc, occurred_at, id"
        f" FROM {w.source(direction, keys_cond)} WHERE {w.sql}"
        f" ORDER BY occurred_at {direction}, id {direction} LIMIT {limit}"
    )
    return await conn.fetch(sql, *w.params)


_TAIL = (
    "SELECT h.last_seq - coalesce(p.indexed_seq, 0) FROM audit.chain_heads h"
    " LEFT JOIN audit.search_progress p ON p.tenant_id = h.tenant_id WHERE h.tenant_id = $1"
)


async def _walk(conn: asyncpg.Connection, w: Where, direction: str, limit: str,
                page_size: int) -> list[asyncpg.Record] | None:  # fmt: skip
    """The page (``page_size + 1`` rows at most) from the newest candidates in page order
    (every filter but ``q``) tested with :data:`SEARCH_EXPR`, or None when the walk's
    budget (:data:`WALK_PER_ROW` candidates per row asked) ran out first: then the index
    answers.

    Unless the tenant's unindexed tail is longer than that budget (a backfill, or an
    indexer far behind): the index's answer would test the whole tail with the same
    expression anyway, so the expression alone answers, unbounded, with the plan from
    before the search table.
    """
    budget = WALK_PER_ROW * (page_size + 1)
    # The candidates carry their row (``e``): a join back to the events for the page's
    # JSON measured slower, planning its partitions twice. ``n`` numbers the candidates;
    # the last one comes back even when it does not match, to say the budget ran out.
    rows = await conn.fetch(
        "SELECT audit.event_json(c.e)::text AS doc, c.occurred_at, c.id, c.hit, c.n FROM ("
        f" SELECT cand.e, occurred_at, id, {SEARCH_EXPR} @@ {w.search} AS hit,"
        f" row_number() OVER (ORDER BY occurred_at {direction}, id {direction}) AS n FROM ("
        f" SELECT e, occurred_at, id, {', '.join(SEARCH_COLUMNS)} FROM audit.events e"
        f" WHERE {w.sql} ORDER BY occurred_at {direction}, id {direction} LIMIT {budget}"
        f") cand) c WHERE hit OR n = {budget}"
        f" ORDER BY c.occurred_at {direction}, c.id {direction} LIMIT {limit} + 1",
        *w.params,
    )
    hits = [r for r in rows if r["hit"]]
    if len(hits) > page_size or not any(r["n"] == budget for r in rows):
        return hits[: page_size + 1]  # a full page, or every candidate was tested
    if (await conn.fetchval(_TAIL, w.params[0]) or 0) > budget:
        return await conn.fetch(
            "SELECT audit.event_json(e)::text AS doc, occurred_at, id FROM audit.events e"
            f" WHERE {w.sql} AND {SEARCH_EXPR} @@ {w.search}"
            f" ORDER BY occurred_at {direction}, id {direction} LIMIT {limit}",
            *w.params,
        )
    return None


async def get_event(conn: asyncpg.Connection, tenant_id: str, event_id: Any) -> str | None:
    """The event's JSON text, or None (also for another tenant's event, via RLS)."""
    return await conn.fetchval(
        "SELECT audit.event_json(e)::text FROM audit.events e"
        " JOIN audit.event_ids i ON i.tenant_id = e.tenant_id AND i.id = e.id"
        "  AND i.occurred_at = e.occurred_at"
        " WHERE i.tenant_id = $1 AND i.id = $2 AND e.tenant_id = $1",
        tenant_id,
        event_id,
    )


async def stats(
    conn: asyncpg.Connection, q: EventQuery, tenant_id: str, start: datetime, end: datetime,
    bucket: timedelta,
) -> dict[str, Any]:  # fmt: skip
    """Counts by severity and category and a histogram over [start, end)."""
    w = build_where(q, tenant_id)
    if not q.start_time:
        w.add(f"occurred_at >= {w.bind(start)}")
    if not q.end_time:
        w.add(f"occurred_at < {w.bind(end)}")
    origin = w.bind(start)
    width = w.bind(bucket)
    rows = await conn.fetch(
        "SELECT grouping(severity) AS gs, grouping(category) AS gc,"
        f" grouping(date_bin({width}, occurred_at, {origin})) AS gb,"
        f" severity, category, date_bin({width}, occurred_at, {origin}) AS bucket,"
        " count(*) AS n"
        f" FROM {w.source()} WHERE {w.sql}"
        f" GROUP BY GROUPING SETS ((severity), (category), (date_bin({width}, occurred_at,"
        f" {origin})), ())",
        *w.params,
    )
    by_sev: dict[str, int] = {}
    by_cat: dict[str, int] = {}
    hist: dict[datetime, int] = {}
    total = 0
    for r in rows:
        if not r["gs"]:
            by_sev[r["severity"]] = r["n"]
        elif not r["gc"]:
            by_cat[r["category"]] = r["n"]
        elif not r["gb"]:
            hist[r["bucket"]] = r["n"]
        else:
            total = r["n"]
    return {"total": total, "by_severity": by_sev, "by_category": by_cat, "histogram": hist}


def export_query(q: EventQuery, tenant_id: str) -> tuple[str, list[Any]]:
    """SELECT for an export in ``q.format`` (one text column per row for ndjson)."""
    w = build_where(q, tenant_id)
    direction = "DESC" if q.order == "desc" else "ASC"
    if q.format == "csv":
        cols = ", ".join(
            f"audit.ts_json({c}) AS {c}" if c in ("occurred_at", "received_at")
            else "encode(hash, 'hex') AS hash" if c == "hash" else c
            for c in CSV_COLUMNS
        )  # fmt: skip
    else:
        cols = "audit.event_json(e)::text"
    sql = (
        f"SELECT {cols} FROM {w.source(direction)} WHERE {w.sql}"
        f" ORDER BY occurred_at {direction}, id {direction}"
    )
    return sql, w.params


# -- API keys --------------------------------------------------------------------------------
_KEY_COLUMNS = "key_id, tenant_id, scopes, created_at, revoked_at, expires_at, last_used_at"


async def active_key(conn: asyncpg.Connection, key_id: str) -> asyncpg.Record | None:
    """The unrevoked, unexpired key ``key_id``: (tenant_id, scopes, token_hash,
    expires_at), or None."""
    return await conn.fetchrow(
        "SELECT tenant_id, scopes, token_hash, expires_at FROM audit.api_keys"
        " WHERE key_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
        key_id,
    )


async def insert_key(conn: asyncpg.Connection, key_id: str, tenant_id: str, scopes: list[str],
                     token_hash: bytes, expires_at: datetime | None) -> dict[str, Any]:  # fmt: skip
    """Store a new key; returns its public columns."""
    row = await conn.fetchrow(
        "INSERT INTO audit.api_keys (key_id, tenant_id, scopes, token_hash, expires_at)"
        f" VALUES ($1, $2, $3, $4, $5) RETURNING {_KEY_COLUMNS}",
        key_id, tenant_id, scopes, token_hash, expires_at,
    )  # fmt: skip
    return dict(row)


async def list_keys(conn: asyncpg.Connection, tenant_id: str | None) -> list[dict[str, Any]]:
    """Keys (public columns), oldest first; of one tenant when ``tenant_id`` is given."""
    rows = await conn.fetch(
        f"SELECT {_KEY_COLUMNS} FROM audit.api_keys"
        " WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY created_at, key_id",
        tenant_id,
    )
    return [dict(r) for r in rows]


async def revoke_key(conn: asyncpg.Connection, key_id: str) -> dict[str, Any] | None:
    """Revoke ``key_id`` (idempotent: the first revocation time stays); None when unknown."""
    row = await conn.fetchrow(
        "UPDATE audit.api_keys SET revoked_at = coalesce(revoked_at, now())"
        f" WHERE key_id = $1 RETURNING {_KEY_COLUMNS}",
        key_id,
    )
    return dict(row) if row is not None else None


# -- writes ------------------------------------------------------------------------------------
async def claimed(conn: asyncpg.Connection, keys: list[tuple[str, Any]]) -> set[tuple[str, Any]]:
    """Which (tenant_id, event id) ``keys`` are already stored (claimed in audit.event_ids)."""
    rows = await conn.fetch(
        "SELECT i.tenant_id, i.id FROM audit.event_ids i"
        " JOIN unnest($1::text[], $2::uuid[]) AS k(tenant_id, id)"
        " ON i.tenant_id = k.tenant_id AND i.id = k.id",
        [k[0] for k in keys], [k[1] for k in keys],
    )  # fmt: skip
    return {(r["tenant_id"], r["id"]) for r in rows}


# -- tenant policies ---------------------------------------------------------------------------
_POLICY = "tenant_id, retention_days, hold_reason, hold_set_by, hold_set_at, archive"


async def get_policy(conn: asyncpg.Connection, tenant_id: str) -> dict[str, Any] | None:
    """The tenant's policy row, or None (global retention, no hold)."""
    row = await conn.fetchrow(f"SELECT {_POLICY} FROM audit.tenant_policies"
                              " WHERE tenant_id = $1", tenant_id)  # fmt: skip
    return dict(row) if row else None


async def set_retention(conn: asyncpg.Connection, tenant_id: str, days: int | None,
                        archive: bool | None) -> dict[str, Any]:  # fmt: skip
    """Set (or with None clear) a tenant's retention and archive overrides."""
    row = await conn.fetchrow(
        "INSERT INTO audit.tenant_policies (tenant_id, retention_days, archive)"
        " VALUES ($1, $2, $3) ON CONFLICT (tenant_id) DO UPDATE SET retention_days = $2,"
        f" archive = $3, updated_at = now() RETURNING {_POLICY}", tenant_id, days, archive,
    )  # fmt: skip
    return dict(row)


async def set_hold(conn: asyncpg.Connection, tenant_id: str, reason: str | None,
                   by: str | None) -> dict[str, Any]:  # fmt: skip
    """Place (``reason``) or release (None) a tenant's legal hold."""
    row = await conn.fetchrow(
        "INSERT INTO audit.tenant_policies (tenant_id, hold_reason, hold_set_by, hold_set_at)"
        " VALUES ($1, $2, $3, CASE WHEN $2::text IS NULL THEN NULL ELSE now() END)"
        " ON CONFLICT (tenant_id) DO UPDATE SET hold_reason = $2, hold_set_by = $3,"
        " hold_set_at = CASE WHEN $2::text IS NULL THEN NULL ELSE now() END, updated_at = now()"
        f" RETURNING {_POLICY}", tenant_id, reason, by,
    )  # fmt: skip
    return dict(row)


async def touch_key(conn: asyncpg.Connection, key_id: str) -> None:
    """Record that a key was just used."""
    await conn.execute("UPDATE audit.api_keys SET last_used_at = now() WHERE key_id = $1",
                       key_id)  # fmt: skip
