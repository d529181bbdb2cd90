"""Thin HTTP handlers of the read model: parse, authorise, call ``sql``, encode."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from aiohttp import web

from query_api import cursor, sql
from query_api.auth import SCOPES, Principal, hash_token, new_token
from query_api.errors import ApiError, Handler, bad_request, not_found
from query_api.filters import (
    EXPORT_PARAMS,
    LIST_PARAMS,
    STATS_PARAMS,
    parse_event_id,
    parse_query,
    stats_bucket,
)
from query_api.state import ADMISSION, AUTH, METRICS, POOL, SETTINGS, TOKEN_SECRET
from schemas.events import TENANT_ID_PATTERN

log = logging.getLogger(__name__)

_enc = msgspec.json.Encoder()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def principal(request: web.Request) -> Principal:
    """Authenticate the request's bearer token."""
    return await request.app[AUTH].authenticate(request)


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=_enc.encode(body), status=status, content_type="application/json")


async def list_page(app: web.Application, who: Principal, params: Any) -> tuple[list[str], str]:
    """One page for ``who``: (events as JSON texts, next_page_token). Any protocol."""
    who.require("read")
    q = parse_query(params, LIST_PARAMS)
    tenant = who.tenant_for(q.tenant_id)
    secret = app[TOKEN_SECRET]
    fp = cursor.fingerprint(q.fingerprint_parts(tenant))
    after = None
    if q.page_token:
        try:
            after = cursor.decode(q.page_token, fp, secret)
        except cursor.TokenError as exc:
            raise bad_request(str(exc), "page_token") from exc
    async with sql.tenant_tx(app[POOL], tenant) as conn:
        rows = await sql.list_events(conn, q, tenant, after)
    more = len(rows) > q.page_size
    rows = rows[: q.page_size]
    token = ""
    if more:
        last = rows[-1]
        us = (last["occurred_at"] - _EPOCH) // timedelta(microseconds=1)
        token = cursor.encode(cursor.Cursor(us, last["id"]), fp, secret)
    app[METRICS].query_rows.labels("list").inc(len(rows))
    return [r["doc"] for r in rows], token


async def list_events(request: web.Request) -> web.Response:
    """GET /v1/audit/events: one keyset page, newest first unless order=asc."""
    docs, token = await list_page(request.app, await principal(request), request.query)
    body = b'{"events":[' + ",".join(docs).encode() + b'],"next_page_token":'
    return web.Response(body=body + _enc.encode(token) + b"}", content_type="application/json")


async def get_one(app: web.Application, who: Principal, tenant_id: str | None,
                  event_id: str) -> str:  # fmt: skip
    """One event's JSON text for ``who`` (404 also for another tenant's). Any protocol."""
    who.require("read")
    eid = parse_event_id(event_id)
    tenant = who.tenant_for(tenant_id)
    async with sql.tenant_tx(app[POOL], tenant) as conn:
        doc = await sql.get_event(conn, tenant, eid)
    if doc is None:
        raise not_found()
    return doc


async def get_event(request: web.Request) -> web.Response:
    """GET /v1/audit/events/{id}: 404 also for another tenant's event."""
    who = await principal(request)
    for name in request.query:
        if name != "tenant_id":
            raise bad_request(f"unknown parameter {name[:64]!r}", name[:64])
    doc = await get_one(request.app, who, request.query.get("tenant_id"),
                        request.match_info["id"])  # fmt: skip
    return web.Response(body=b'{"event":' + doc.encode() + b"}", content_type="application/json")


async def stats(request: web.Request) -> web.Response:
    """GET /v1/audit/stats: counts by severity and category, and a time histogram."""
    who = await principal(request)
    who.require("read")
    q = parse_query(request.query, STATS_PARAMS)
    tenant = who.tenant_for(q.tenant_id)
    end = q.end_time or datetime.now(UTC)
    start = q.start_time or end - timedelta(hours=24)
    if start >= end:
        raise bad_request("start_time must be before end_time", "start_time")
    bucket = stats_bucket(start, end)
    async with (request.app[ADMISSION].admit(who.key_id, "stats queries"),
                sql.tenant_tx(request.app[POOL], tenant) as conn):  # fmt: skip
        result = await sql.stats(conn, q, tenant, start, end, bucket)
    hist = result.pop("histogram")
    return _json(
        {
            "tenant_id": tenant,
            "start_time": start,
            "end_time": end,
            **result,
            "histogram": {
                "bucket_seconds": int(bucket.total_seconds()),
                "points": [{"start": k, "count": v} for k, v in sorted(hist.items())],
            },
        }
    )


async def export(request: web.Request) -> web.StreamResponse:
    """GET /v1/audit/export?format=ndjson|csv: every matching event, streamed by COPY.

    Admitted up to AUDIT_HEAVY_READ_CONCURRENCY at once (AUDIT_HEAVY_READ_PER_KEY per key;
    beyond: 429 with Retry-After) and paced at AUDIT_EXPORT_ROWS_PER_S, so exports never
    take every core from ingestion. No limit on the whole stream's duration: it fails
    only when PostgreSQL sends nothing for AUDIT_EXPORT_IDLE_TIMEOUT_S. A failure after
    the first byte ends the response in a way no client can take for a complete file:
    NDJSON gets a last line ``{"error": {...}}``, and the chunked response is aborted
    (no final chunk).
    """
    who = await principal(request)
    who.require("read")
    q = parse_query(request.query, EXPORT_PARAMS)
    tenant = who.tenant_for(q.tenant_id)
    query, params = sql.export_query(q, tenant)
    ctype = "text/csv" if q.format == "csv" else "application/x-ndjson"
    resp = web.StreamResponse(
        headers={
            "Content-Type": f"{ctype}; charset=utf-8",
            "Content-Disposition": f'attachment; filename="audit-{tenant}.{q.format}"',
        }
    )
    settings = request.app[SETTINGS]
    async with (request.app[ADMISSION].admit(who.key_id, "exports"),
                sql.tenant_tx(request.app[POOL], tenant) as conn):  # fmt: skip
        await resp.prepare(request)
        sink = ExportSink(resp, settings.export_rows_per_s)
        if q.format == "csv":
            options: dict[str, Any] = {"format": "csv", "header": True}
        else:
            # CSV framing with a quote and delimiter that never occur in JSON text:
            # each row is the event's JSON, verbatim, on its own line.
            options = {"format": "csv", "delimiter": "\x02", "quote": "\x01"}
        copy = asyncio.ensure_future(conn.copy_from_query(
            query, *params, output=sink.write, timeout=_NO_TOTAL_LIMIT_S, **options))  # fmt: skip
        try:
            await sink.watch(copy, settings.export_idle_timeout_s)
        except Exception as exc:
            log.warning("export for %s failed after %d rows: %r", tenant, sink.rows, exc)
            if q.format != "csv":
                with contextlib.suppress(Exception):
                    await resp.write(_export_error(sink.rows))
            # Abort: no terminating chunk, so the client sees an incomplete transfer.
            if request.transport is not None:
                request.transport.abort()
            return resp
    await resp.write_eof()
    return resp


_NO_TOTAL_LIMIT_S = 7 * 24 * 3600.0  # asyncpg's command_timeout must not cut a long export


def _export_error(rows: int) -> bytes:
    doc = {"error": {"code": "export_failed", "message": f"the export failed after {rows} "
                     "rows; this file is incomplete", "rows": rows}}  # fmt: skip
    return b"\n" + msgspec.json.encode(doc) + b"\n"


class ExportSink:
    """Where COPY's chunks go: written to the client, paced, and watched for idleness.

    Args:
        resp: the prepared streaming response.
        rows_per_s: pace (0 = as fast as the client reads).
    """

    def __init__(self, resp: web.StreamResponse, rows_per_s: int) -> None:
        self.resp = resp
        self.rows_per_s = rows_per_s
        self.rows = 0
        self._started = time.monotonic()
        self._idle_since: float | None = time.monotonic()  # None while writing

    async def write(self, chunk: bytes) -> None:
        """COPY's output callback (PostgreSQL waits while it runs: back-pressure)."""
        self._idle_since = None
        try:
            await self.resp.write(chunk)
            self.rows += chunk.count(b"\n")
            if self.rows_per_s:
                ahead = self.rows / self.rows_per_s - (time.monotonic() - self._started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        finally:
            self._idle_since = time.monotonic()

    async def watch(self, copy: asyncio.Future[Any], idle_timeout: float) -> None:
        """Wait for ``copy``; cancel it when PostgreSQL sends nothing for ``idle_timeout``
        (time spent writing to a slow client does not count).

        Raises:
            TimeoutError: PostgreSQL was idle too long; or what the COPY raised.
        """
        while True:
            done, _ = await asyncio.wait({copy}, timeout=min(1.0, idle_timeout))
            if done:
                copy.result()
                return
            idle = self._idle_since
            if idle is not None and time.monotonic() - idle > idle_timeout:
                copy.cancel()
                with contextlib.suppress(BaseException):
                    await copy
                raise TimeoutError(f"PostgreSQL sent nothing for {idle_timeout:g} s")


class KeyRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """POST /v1/admin/keys body."""

    tenant_id: Annotated[str, msgspec.Meta(pattern=TENANT_ID_PATTERN)]
    scopes: Annotated[list[str], msgspec.Meta(min_length=1, max_length=2)] = msgspec.field(
        default_factory=lambda: ["read"]
    )


_key_dec = msgspec.json.Decoder(KeyRequest)


async def _admin(request: web.Request) -> None:
    if not (await principal(request)).is_admin:
        raise ApiError(403, "permission_denied", "only the admin token manages keys")


async def create_key(request: web.Request) -> web.Response:
    """POST /v1/admin/keys: a new tenant key; the token is shown only here."""
    await _admin(request)
    try:
        body = _key_dec.decode(await request.read())
    except msgspec.ValidationError as exc:
        raise bad_request(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise bad_request(f"malformed JSON: {exc}") from exc
    scopes = sorted(set(body.scopes))
    if not set(scopes) <= set(SCOPES):
        raise bad_request("scopes may be 'read' and 'write'", "scopes")
    key_id, token = new_token()
    async with request.app[POOL].acquire() as conn:
        created = await conn.fetchval(
            "INSERT INTO audit.api_keys (key_id, tenant_id, scopes, token_hash)"
            " VALUES ($1, $2, $3, $4) RETURNING created_at",
            key_id, body.tenant_id, scopes, hash_token(token),
        )  # fmt: skip
    return _json(
        {"key_id": key_id, "token": token, "tenant_id": body.tenant_id, "scopes": scopes,
         "created_at": created},
        status=201,
    )  # fmt: skip


async def list_keys(request: web.Request) -> web.Response:
    """GET /v1/admin/keys[?tenant_id=]: keys without their tokens."""
    await _admin(request)
    for name in request.query:
        if name != "tenant_id":
            raise bad_request(f"unknown parameter {name[:64]!r}", name[:64])
    tenant = request.query.get("tenant_id")
    async with request.app[POOL].acquire() as conn:
        rows = await conn.fetch(
            "SELECT key_id, tenant_id, scopes, created_at, revoked_at FROM audit.api_keys"
            " WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY created_at",
            tenant,
        )
    return _json({"keys": [dict(r) for r in rows]})


async def revoke_key(request: web.Request) -> web.Response:
    """DELETE /v1/admin/keys/{key_id}: revoke (idempotent); 404 when unknown."""
    await _admin(request)
    key_id = request.match_info["key_id"]
    async with request.app[POOL].acquire() as conn:
        row = await conn.fetchrow(
            "UPDATE audit.api_keys SET revoked_at = coalesce(revoked_at, now())"
            " WHERE key_id = $1 RETURNING key_id, revoked_at",
            key_id[:64],
        )
    if row is None:
        raise not_found("key")
    request.app[AUTH].forget(key_id)
    return _json(dict(row))


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request duration by route template, method and status."""
    started = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        request.app[METRICS].http_seconds.labels(name, request.method, str(status)).observe(
            time.perf_counter() - started
        )


def add_routes(app: web.Application) -> None:
    """Register the read model's routes."""
    r = app.router
    r.add_get("/v1/audit/events", list_events)
    r.add_get("/v1/audit/events/{id}", get_event)
    r.add_get("/v1/audit/stats", stats)
    r.add_get("/v1/audit/export", export)
    r.add_post("/v1/admin/keys", create_key)
    r.add_get("/v1/admin/keys", list_keys)
    r.add_delete("/v1/admin/keys/{key_id}", revoke_key)
