"""Thin HTTP handlers of the read model: parse, authorise, call ``sql``, encode."""

from __future__ import annotations

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
from query_api.state import AUTH, METRICS, POOL, TOKEN_SECRET
from schemas.events import TENANT_ID_PATTERN

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
    async with sql.tenant_tx(request.app[POOL], tenant) as conn:
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
    """GET /v1/audit/export?format=ndjson|csv: every matching event, streamed by COPY."""
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
    async with sql.tenant_tx(request.app[POOL], tenant) as conn:
        await resp.prepare(request)
        if q.format == "csv":
            await conn.copy_from_query(query, *params, output=resp.write, format="csv",
                                       header=True)  # fmt: skip
        else:
            # CSV framing with a quote and delimiter that never occur in JSON text:
            # each row is the event's JSON, verbatim, on its own line.
            await conn.copy_from_query(query, *params, output=resp.write, format="csv",
                                       delimiter="\x02", quote="\x01")  # fmt: skip
    await resp.write_eof()
    return resp


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
