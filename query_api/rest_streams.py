"""The REST adapter of streams out (``query_api.streams``): admin-token routes under
``/v1/admin/tenants/{tenant_id}/streams``."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from pipeline.stream_rules import AddressPolicy, DestinationError, check_url
from query_api import contract
from query_api.errors import bad_request
from query_api.rest import _decode, _json, principal
from query_api.service import only_params
from query_api.state import STREAMS

_create = msgspec.json.Decoder(contract.StreamRequest)
_rotate = msgspec.json.Decoder(contract.RotateSecretRequest)
_URL_FIELDS = ("destination.url", "destination.endpoint")
_STREAM = "{stream_id:st_[0-9a-f]{16}}"


def _explain_url(data: bytes, field: str) -> str:
    """Why a destination URL the schema refused is refused, in words."""
    try:
        doc = msgspec.json.decode(data)
        value = doc["destination"][field.rsplit(".", 1)[1]]
    except (msgspec.DecodeError, KeyError, TypeError):
        value = None
    if isinstance(value, str):
        try:
            check_url(value, AddressPolicy(), field)
        except DestinationError as exc:
            return f"{field}: {exc}"
    return (f"{field} must be an https:// URL: host names of letters, digits, '-' and '.', "
            "an optional port (1-65535), then a path and query of URL characters")  # fmt: skip


def _decode_request(data: bytes) -> contract.StreamRequest:
    try:
        return _decode(data, _create, '{"destination": {"kind": ..., ...}, "filters": {...}}')
    except Exception as exc:
        field = getattr(exc, "field", "")
        if field in _URL_FIELDS:
            raise bad_request(_explain_url(data, field), field) from exc
        raise


async def create_stream(request: web.Request) -> web.Response:
    """POST /v1/admin/tenants/{tenant_id}/streams: a new stream (201); a webhook's signing
    secret is in this answer only. Never waits on the destination."""
    who = await principal(request)
    only_params(request.query, frozenset())
    body = _decode_request(await request.read())
    made = await request.app[STREAMS].create(who, request.match_info["tenant_id"], body)
    return _json(made, status=201)


async def list_streams(request: web.Request) -> web.Response:
    """GET /v1/admin/tenants/{tenant_id}/streams."""
    who = await principal(request)
    only_params(request.query, frozenset())
    return _json(await request.app[STREAMS].list(who, request.match_info["tenant_id"]))


def _ids(request: web.Request) -> tuple[str, str]:
    only_params(request.query, frozenset())
    return request.match_info["tenant_id"], request.match_info["stream_id"]


async def get_stream(request: web.Request) -> web.Response:
    """GET .../streams/{stream_id}: the stream and its latest attempts."""
    who = await principal(request)
    return _json(await request.app[STREAMS].get(who, *_ids(request)))


async def delete_stream(request: web.Request) -> web.Response:
    """DELETE .../streams/{stream_id}."""
    who = await principal(request)
    return _json(await request.app[STREAMS].delete(who, *_ids(request)))


async def resume_stream(request: web.Request) -> web.Response:
    """POST .../streams/{stream_id}:resume (any body is ignored)."""
    who = await principal(request)
    return _json(await request.app[STREAMS].resume(who, *_ids(request)))


async def rotate_secret(request: web.Request) -> web.Response:
    """POST .../streams/{stream_id}:rotate-secret ``{"secret": ..., "overlap_s": N}``."""
    who = await principal(request)
    tenant, stream_id = _ids(request)
    data = await request.read()
    body: Any = _decode(data or b"{}", _rotate, '{"secret": ..., "overlap_s": N}')
    return _json(await request.app[STREAMS].rotate(who, tenant, stream_id, body))


def add_stream_routes(app: web.Application) -> None:
    """Register the streams routes."""
    base = "/v1/admin/tenants/{tenant_id}/streams"
    r = app.router
    r.add_post(base, create_stream)
    r.add_get(base, list_streams)
    r.add_get(f"{base}/{_STREAM}", get_stream)
    r.add_delete(f"{base}/{_STREAM}", delete_stream)
    r.add_post(f"{base}/{_STREAM}:resume", resume_stream)
    r.add_post(f"{base}/{_STREAM}:rotate-secret", rotate_secret)
