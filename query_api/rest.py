"""The REST adapter: aiohttp handlers that parse a request, call :class:`AuditService`,
and encode its answer as the API's JSON (``query_api.contract`` types) or its
:class:`ApiError` as ``{"error": {...}}``."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
from aiohttp import web

from query_api import contract
from query_api.auth import Principal
from query_api.errors import ApiError, bad_request
from query_api.export import error_line
from query_api.service import AuditService, check_tenant, only_params
from query_api.state import METRICS, SERVICE
from query_api.writes import MAX_BATCH_BYTES
from schemas.events import MAX_DEPTH

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_enc = msgspec.json.Encoder()


def error_response(exc: ApiError) -> web.Response:
    """The JSON response for an API error (401 adds ``WWW-Authenticate``)."""
    body = contract.ErrorBody(contract.ErrorDetail(exc.code, exc.message, exc.field))
    headers = dict(exc.headers)
    if exc.status == 503:
        headers.setdefault("Retry-After", "1")
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="auditlog"'
    return web.Response(body=_enc.encode(body), status=exc.status,
                        content_type="application/json", headers=headers)  # fmt: skip


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=_enc.encode(body), status=status, content_type="application/json")


def _service(request: web.Request) -> AuditService:
    return request.app[SERVICE]


async def principal(request: web.Request) -> Principal:
    """Authenticate the request's bearer token (401/429 as ApiError)."""
    return await _service(request).authenticate(request.headers.get("Authorization", ""))


def _decode(data: bytes, decoder: Any, what: str) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        path = str(exc).rpartition("- at `$.")[2].rstrip("`")
        field = path.split("[", 1)[0] if "- at `$." in str(exc) else ""
        raise bad_request(f"body must be {what}: {exc}", field) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"malformed JSON: {exc}") from exc
    except RecursionError as exc:  # msgspec stops cleanly at Python's recursion limit
        raise ApiError(400, "too_deep", "the body is nested too deeply; an event may be "
                       f"nested at most {MAX_DEPTH} levels") from exc  # fmt: skip


def _wait_param(request: web.Request) -> bool:
    only_params(request.query, contract.param_names(contract.WriteParams))
    value = request.query.get("wait", "true").lower()
    if value not in ("true", "false", "1", "0"):
        raise bad_request("wait must be true or false", "wait")
    return value in ("true", "1")


def _tenant_param(request: web.Request, params: type[msgspec.Struct]) -> str | None:
    """``tenant_id`` when given; an empty or malformed value is an error, not "none"."""
    only_params(request.query, contract.param_names(params))
    tenant = request.query.get("tenant_id")
    return check_tenant(tenant) if tenant is not None else None


# -- reads -----------------------------------------------------------------------------------
async def list_events(request: web.Request) -> web.Response:
    """GET /v1/audit/events: one keyset page, newest first unless order=asc."""
    page = await _service(request).list_page(await principal(request), request.query)
    body = b'{"events":[' + ",".join(page.events).encode() + b'],"next_page_token":'
    return web.Response(body=body + _enc.encode(page.next_page_token) + b"}",
                        content_type="application/json")  # fmt: skip


async def get_event(request: web.Request) -> web.Response:
    """GET /v1/audit/events/{id}: 404 also for another tenant's event."""
    who = await principal(request)
    doc = await _service(request).get_one(who, _tenant_param(request, contract.EventParams),
                                          request.match_info["id"])  # fmt: skip
    return web.Response(body=b'{"event":' + doc.encode() + b"}", content_type="application/json")


async def stats(request: web.Request) -> web.Response:
    """GET /v1/audit/stats: counts by severity and category, and a time histogram."""
    result = await _service(request).stats(await principal(request), request.query)
    return _json(result)


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
    service = _service(request)
    who = await principal(request)
    plan = service.export_plan(who, request.query)
    ctype = "text/csv" if plan.format == "csv" else "application/x-ndjson"
    resp = web.StreamResponse(headers={
        "Content-Type": f"{ctype}; charset=utf-8",
        "Content-Disposition": f'attachment; filename="audit-{plan.tenant_id}.{plan.format}"',
    })  # fmt: skip
    async with service.exporting(who, plan) as job:
        await resp.prepare(request)
        try:
            await job.run(resp.write)
        except Exception as exc:
            log.warning("export for %s failed after %d rows: %r", plan.tenant_id, job.rows, exc)
            if plan.format != "csv":
                with contextlib.suppress(Exception):
                    await resp.write(error_line(job.rows))
            # Abort: no terminating chunk, so the client sees an incomplete transfer.
            if request.transport is not None:
                request.transport.abort()
            return resp
    await resp.write_eof()
    return resp


async def verify(request: web.Request) -> web.Response:
    """GET /v1/audit/verify?tenant_id=: the tenant's log verified (as `auditlog verify`)."""
    who = await principal(request)
    report = await _service(request).verify(who, _tenant_param(request, contract.VerifyParams))
    return _json(report)


async def event_proof(request: web.Request) -> web.Response:
    """GET /v1/audit/events/{id}/proof: the event's inclusion proof under a checkpoint."""
    who = await principal(request)
    tenant = _tenant_param(request, contract.EventParams)
    return _json(await _service(request).proof(who, tenant, request.match_info["id"]))


async def consistency(request: web.Request) -> web.Response:
    """GET /v1/audit/consistency?tenant_id=&from=&to=: two checkpoints, the log only grew."""
    who = await principal(request)
    return _json(await _service(request).consistency(who, request.query))


async def public_key(request: web.Request) -> web.Response:
    """GET /v1/audit/public-key: the checkpoint signing key (no authentication)."""
    only_params(request.query, frozenset())
    return _json(await _service(request).public_keys())


# -- writes ----------------------------------------------------------------------------------
_one = msgspec.json.Decoder(contract.WriteEventBody)
_JSON_KINDS = {b"[": "an array", b'"': "a string", b"n": "null", b"t": "a boolean",
               b"f": "a boolean"}  # fmt: skip
_many = msgspec.json.Decoder(contract.WriteEventsBody)


async def write_event(request: web.Request) -> web.Response:
    """POST /v1/audit/events: ``{"event": {...}}`` → ``{"event_id": ...}`` after commit."""
    who = await principal(request)
    wait = _wait_param(request)
    body = _decode(await request.read(), _one, '{"event": {...}}')
    event_id, committed = await _service(request).write_one(
        who, bytes(body.event), request.headers.get("Idempotency-Key"), wait)  # fmt: skip
    if not committed:  # durable in JetStream, not (yet) known to be queryable
        return _json(contract.WriteResult(event_id, committed=False), status=202)
    return _json(contract.WriteResult(event_id))


async def write_events(request: web.Request) -> web.Response:
    """POST /v1/audit/events:batch: per-event results; valid events stored, invalid named."""
    who = await principal(request)
    wait = _wait_param(request)
    data = await request.read()
    if len(data) > MAX_BATCH_BYTES:
        raise ApiError(413, "too_large", f"a batch is at most {MAX_BATCH_BYTES} bytes")
    body = _decode(data, _many, '{"events": [...]}')
    raws = [bytes(r) for r in body.events]
    # An item that is not an object is a malformed batch, not an invalid event: the whole
    # batch is refused before anything is published (objects breaking event rules are
    # answered per event instead).
    for i, raw in enumerate(raws):
        if raw[:1] != b"{":
            kind = _JSON_KINDS.get(raw[:1], "a number")
            raise bad_request(f"events[{i}] must be an object (one event), not {kind}",
                              f"events.{i}")  # fmt: skip
    answer = await _service(request).write_many(who, raws, wait)
    status = 202 if (not wait or answer.uncommitted_event_ids) else 200
    return _json(answer, status=status)


# -- API keys ------------------------------------------------------------------------------
_key_dec = msgspec.json.Decoder(contract.KeyRequest)


async def create_key(request: web.Request) -> web.Response:
    """POST /v1/admin/keys: a new tenant key; the token is shown only here."""
    who = await principal(request)
    only_params(request.query, frozenset())
    body = _decode(await request.read(), _key_dec, '{"tenant_id": ..., "scopes": [...]}')
    created = await _service(request).create_key(who, body.tenant_id, body.scopes,
                                                 body.expires_at)  # fmt: skip
    return _json(created, status=201)


async def list_keys(request: web.Request) -> web.Response:
    """GET /v1/admin/keys[?tenant_id=]: keys without their tokens."""
    who = await principal(request)
    return _json(
        await _service(request).list_keys(who, _tenant_param(request, contract.KeyListParams))
    )


async def revoke_key(request: web.Request) -> web.Response:
    """DELETE /v1/admin/keys/{key_id}: revoke (idempotent); 404 when unknown."""
    who = await principal(request)
    only_params(request.query, frozenset())
    return _json(await _service(request).revoke_key(who, request.match_info["key_id"]))


# -- viewer tokens ---------------------------------------------------------------------------
async def create_viewer_token(request: web.Request) -> web.Response:
    """POST /v1/viewer-tokens: a short-lived read-only token for the viewer page."""
    who = await principal(request)
    only_params(request.query, frozenset())
    body = _decode(await request.read(), _viewer_body,
                   '{"tenant_id": ..., "ttl_s": N, "filters": {...}}')  # fmt: skip
    return _json(await _service(request).create_viewer_token(who, body), status=201)


# -- tenant policies -------------------------------------------------------------------------
class _WholeNumbers:
    """A decoder for bodies with integers that takes 400.0 as 400, as JSON Schema does."""

    def __init__(self, kind: type[msgspec.Struct]) -> None:
        self.kind = kind

    def decode(self, data: bytes) -> Any:
        raw = msgspec.json.decode(data)
        if isinstance(raw, dict):
            raw = {k: int(v) if isinstance(v, float) and v.is_integer() else v
                   for k, v in raw.items()}  # fmt: skip
        return msgspec.convert(raw, self.kind)


_retention_body = _WholeNumbers(contract.RetentionBody)
_viewer_body = _WholeNumbers(contract.ViewerTokenRequest)
_hold_dec = msgspec.json.Decoder(contract.HoldBody)


async def get_retention(request: web.Request) -> web.Response:
    """GET /v1/admin/tenants/{tenant_id}/retention: retention and legal hold as they apply."""
    who = await principal(request)
    only_params(request.query, frozenset())
    return _json(await _service(request).policy(who, request.match_info["tenant_id"]))


async def put_retention(request: web.Request) -> web.Response:
    """PUT /v1/admin/tenants/{tenant_id}/retention: ``{"retention_days": N | null,
    "archive": bool | null}``."""
    who = await principal(request)
    only_params(request.query, frozenset())
    body = _decode(await request.read(), _retention_body,
                   '{"retention_days": N or null, "archive": true, false or null}')  # fmt: skip
    policy = await _service(request).set_retention(who, request.match_info["tenant_id"],
                                                   body.retention_days, body.archive)  # fmt: skip
    return _json(policy)


async def put_hold(request: web.Request) -> web.Response:
    """PUT /v1/admin/tenants/{tenant_id}/legal-hold: ``{"reason": "..."}``."""
    who = await principal(request)
    only_params(request.query, frozenset())
    body = _decode(await request.read(), _hold_dec, '{"reason": "..."}')
    return _json(await _service(request).set_hold(who, request.match_info["tenant_id"],
                                                  body.reason))  # fmt: skip


async def delete_hold(request: web.Request) -> web.Response:
    """DELETE /v1/admin/tenants/{tenant_id}/legal-hold: release it (explicitly)."""
    who = await principal(request)
    only_params(request.query, frozenset())
    return _json(await _service(request).set_hold(who, request.match_info["tenant_id"], None))


# -- middlewares -----------------------------------------------------------------------------
@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the JSON error shape; never leak internals."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except web.HTTPRequestEntityTooLarge:
        return error_response(ApiError(413, "too_large", "request body too large"))
    except web.HTTPMethodNotAllowed as exc:
        allow = ", ".join(sorted(exc.allowed_methods))
        why = f"{request.method} not allowed; use {allow}"
        return error_response(ApiError(405, "method_not_allowed", why, headers={"Allow": allow}))
    except web.HTTPException as exc:
        if exc.status == 404:
            return error_response(ApiError(404, "not_found", f"no route for {request.path}"))
        raise
    except (OSError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
            asyncpg.TooManyConnectionsError) as exc:  # fmt: skip
        log.warning("storage unavailable: %r", exc)
        return error_response(ApiError(503, "unavailable", "storage is unavailable or busy; "
                                       "retry later", headers={"Retry-After": "1"}))  # fmt: skip
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(ApiError(500, "internal", "internal error"))


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
    """Register the API's REST routes."""
    r = app.router
    r.add_get("/v1/audit/events", list_events)
    r.add_post("/v1/audit/events", write_event)
    r.add_post("/v1/audit/events:batch", write_events)
    r.add_get("/v1/audit/events/{id}", get_event)
    r.add_get("/v1/audit/stats", stats)
    r.add_get("/v1/audit/export", export)
    r.add_get("/v1/audit/verify", verify)
    r.add_get("/v1/audit/events/{id}/proof", event_proof)
    r.add_get("/v1/audit/consistency", consistency)
    r.add_get("/v1/audit/public-key", public_key)
    r.add_post("/v1/admin/keys", create_key)
    r.add_get("/v1/admin/keys", list_keys)
    r.add_delete("/v1/admin/keys/{key_id}", revoke_key)
    r.add_post("/v1/viewer-tokens", create_viewer_token)
    r.add_get("/v1/admin/tenants/{tenant_id}/retention", get_retention)
    r.add_put("/v1/admin/tenants/{tenant_id}/retention", put_retention)
    r.add_put("/v1/admin/tenants/{tenant_id}/legal-hold", put_hold)
    r.add_delete("/v1/admin/tenants/{tenant_id}/legal-hold", delete_hold)
