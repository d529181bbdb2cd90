"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json``.

The same document is checked in as ``schemas/openapi.json`` (``python -m
query_api.openapi`` rewrites it; a test fails when it is stale). Event schemas come from
the msgspec Structs, so the API and the pipeline describe one event.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from query_api.filters import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_Q_LEN
from schemas.events import ACTOR_TYPES, CATEGORIES, SEVERITIES, TENANT_ID_PATTERN, json_schema

CHECKED_IN = Path(__file__).resolve().parent.parent / "schemas" / "openapi.json"

_STR = {"type": "string"}
_TS = {"type": "string", "format": "date-time"}


def _param(name: str, schema: dict[str, Any], desc: str, *, explode: bool = False,
           required: bool = False) -> dict[str, Any]:  # fmt: skip
    p: dict[str, Any] = {"name": name, "in": "query", "description": desc, "schema": schema}
    if required:
        p["required"] = True
    if schema.get("type") == "array":
        p["style"], p["explode"] = "form", explode or True
    return p


def _enum_list(values: tuple[str, ...]) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string", "enum": list(values)}, "maxItems": 20}


TENANT = _param(
    "tenant_id",
    {"type": "string", "pattern": TENANT_ID_PATTERN},
    "Tenant to query; required with the admin token, defaults to a key's tenant.",
)
FILTERS = [
    TENANT,
    _param("start_time", _TS, "Inclusive lower bound on occurred_at (RFC 3339)."),
    _param("end_time", _TS, "Exclusive upper bound on occurred_at (RFC 3339)."),
    _param("severities", _enum_list(SEVERITIES), "Any of these severities."),
    _param("categories", _enum_list(CATEGORIES), "Any of these categories."),
    _param("actions", {"type": "array", "maxItems": 20, "items": {
        "type": "string", "pattern": r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*(\.\*)?$",
        "maxLength": 130}}, "Exact action names, or prefixes written as `user.*`."),
    _param("actor_type", {"type": "string", "enum": list(ACTOR_TYPES)}, "Actor type."),
    _param("actor_id", {"type": "string", "minLength": 1, "maxLength": 256}, "Actor id."),
    _param("resource_type", {"type": "string", "minLength": 1, "maxLength": 256},
           "Primary or related resource type."),
    _param("resource_id", {"type": "string", "minLength": 1, "maxLength": 256},
           "Primary or related resource id."),
    _param("q", {"type": "string", "minLength": 1, "maxLength": MAX_Q_LEN},
           "Full-text search over action, description and display names (web search syntax)."),
]  # fmt: skip
PAGING = [
    _param("page_size", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE,
                         "default": DEFAULT_PAGE_SIZE}, "Events per page."),
    _param("page_token", {"type": "string", "maxLength": 200},
           "next_page_token of the previous page; bound to the same tenant and filters."),
    _param("order", {"type": "string", "enum": ["desc", "asc"], "default": "desc"},
           "desc: newest first (occurred_at, then id)."),
]  # fmt: skip


EVENT_INPUT = {"$ref": "#/components/schemas/EventInput"}
WAIT = _param(
    "wait",
    {"type": "boolean", "default": True},
    "true: answer after commit; false: after JetStream's acknowledgement.",
)
IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "schema": {"type": "string", "minLength": 1, "maxLength": 256},
    "description": "Makes retries safe: the same key names the same event.",
}
WRITE_OK = {
    "type": "object",
    "required": ["event_id"],
    "properties": {
        "event_id": {"type": "string", "format": "uuid"},
        "committed": {"type": "boolean"},
    },
}
BATCH_OK = {
    "type": "object",
    "required": ["event_ids", "errors"],
    "properties": {
        "event_ids": {"type": "array", "items": {"type": "string", "format": "uuid"}},
        "uncommitted_event_ids": {"type": "array", "items": {"type": "string"}},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "code", "message", "field"],
                "properties": {
                    "index": {"type": "integer"},
                    "code": _STR,
                    "message": _STR,
                    "field": _STR,
                },
            },
        },
    },
}


def _error_responses(*codes: int) -> dict[str, Any]:
    names = {400: "Invalid argument", 401: "Missing or invalid bearer token",
             403: "Not allowed for this token", 404: "Not found", 413: "Body too large",
             429: "Rate limit of this key exceeded (see Retry-After)",
             503: "Storage unavailable"}  # fmt: skip
    if 401 in codes:  # every authenticated operation is rate limited per tenant key
        codes = tuple(sorted({*codes, 429}))
    out: dict[str, Any] = {
        str(c): {"description": names[c], "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Error"}}}}
        for c in codes
    }  # fmt: skip
    if 429 in codes:
        out["429"]["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before retrying",
                "schema": {"type": "integer"},
            }
        }
    return out


def _event_schema() -> dict[str, Any]:
    ref = {"type": "object", "required": ["type", "id", "display_name"], "properties": {
        "type": _STR, "id": _STR, "display_name": _STR}}  # fmt: skip
    return {
        "type": "object",
        "required": ["id", "tenant_id", "seq", "action", "category", "severity", "actor",
                     "occurred_at", "received_at", "hash"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "tenant_id": _STR,
            "seq": {"type": "integer", "minimum": 1},
            "action": _STR,
            "category": {"type": "string", "enum": list(CATEGORIES)},
            "severity": {"type": "string", "enum": list(SEVERITIES)},
            "actor": {"type": "object", "required": ["type", "id", "display_name"],
                      "properties": {"type": {"type": "string", "enum": list(ACTOR_TYPES)},
                                     "id": _STR, "display_name": _STR}},
            "primary_resource": {"oneOf": [ref, {"type": "null"}]},
            "related_resources": {"type": "array", "items": ref},
            "description": _STR,
            "metadata": {"type": "object"},
            "changes": {"oneOf": [{"type": "object"}, {"type": "null"}]},
            "occurred_at": _TS,
            "received_at": _TS,
            "ip": _STR, "user_agent": _STR, "request_id": _STR, "trace_id": _STR,
            "hash": {"type": "string", "pattern": "^[0-9a-f]{64}$",
                     "description": "hex SHA-256(previous hash || canonical bytes)"},
        },
    }  # fmt: skip


def _input_schemas() -> dict[str, Any]:
    """The input event's JSON Schema from the msgspec Struct, as components ``EventInput``
    and ``In<Name>`` (its nested definitions)."""
    schema = json_schema()
    defs = schema.pop("$defs")
    root = defs.pop("AuditEvent")
    text = json.dumps({"root": root, "defs": defs}).replace("#/$defs/", "#/components/schemas/In")
    parts = json.loads(text)
    return {"EventInput": parts["root"], **{f"In{k}": v for k, v in parts["defs"].items()}}


def _json_ok(schema: dict[str, Any], desc: str = "OK") -> dict[str, Any]:
    return {"description": desc, "content": {"application/json": {"schema": schema}}}


def spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    ref = {"$ref": "#/components/schemas/AuditEvent"}
    key = {"type": "object", "required": ["key_id", "tenant_id", "scopes", "created_at"],
           "properties": {"key_id": _STR, "tenant_id": _STR, "created_at": _TS,
                          "scopes": {"type": "array", "items": {"enum": ["read", "write"]}},
                          "revoked_at": {"oneOf": [_TS, {"type": "null"}]}}}  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {"title": "Audit Log Service", "version": "1.0.0",
                 "description": "Tenant-scoped, tamper-evident audit events."},
        "security": [{"bearer": []}],
        "paths": {
            "/v1/audit/events": {"post": {
                "operationId": "WriteEvent",
                "summary": "Write one event; answers after it is committed (wait=true).",
                "parameters": [WAIT, IDEMPOTENCY],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["event"], "additionalProperties": False,
                    "properties": {"event": {"$ref": "#/components/schemas/EventInput"}}}}}},
                "responses": {
                    "200": _json_ok(WRITE_OK, "Committed"),
                    "202": _json_ok(WRITE_OK, "Durable in JetStream, not yet committed"),
                    **_error_responses(400, 401, 403, 413, 503)}},
                "get": {
                "operationId": "ListEvents", "summary": "One page of a tenant's events.",
                "parameters": FILTERS + PAGING,
                "responses": {"200": _json_ok({
                    "type": "object", "required": ["events", "next_page_token"],
                    "properties": {"events": {"type": "array", "items": ref},
                                   "next_page_token": {"type": "string"}}}),
                    **_error_responses(400, 401, 403, 503)}}},
            "/v1/audit/events:batch": {"post": {
                "operationId": "WriteEvents",
                "summary": "Write up to 1,000 events (4 MiB); per-event results.",
                "parameters": [WAIT],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["events"], "additionalProperties": False,
                    "properties": {"events": {"type": "array", "maxItems": 1000,
                                              "items": EVENT_INPUT}}}}}},
                "responses": {
                    "200": _json_ok(BATCH_OK, "Every accepted event committed"),
                    "202": _json_ok(BATCH_OK, "Some accepted events not yet committed"),
                    **_error_responses(400, 401, 403, 413, 503)}}},
            "/v1/audit/events/{id}": {"get": {
                "operationId": "GetEvent", "summary": "One event by id.",
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "string", "format": "uuid"}}, TENANT],
                "responses": {"200": _json_ok({"type": "object", "required": ["event"],
                                               "properties": {"event": ref}}),
                              **_error_responses(400, 401, 403, 404, 503)}}},
            "/v1/audit/stats": {"get": {
                "operationId": "EventStats",
                "summary": "Counts by severity and category and a histogram (default: 24 h).",
                "parameters": FILTERS,
                "responses": {"200": _json_ok({"$ref": "#/components/schemas/Stats"}),
                              **_error_responses(400, 401, 403, 503)}}},
            "/v1/audit/export": {"get": {
                "operationId": "ExportEvents",
                "summary": "Every matching event, streamed as NDJSON or CSV.",
                "parameters": [*FILTERS, PAGING[2], _param(
                    "format", {"type": "string", "enum": ["ndjson", "csv"],
                               "default": "ndjson"}, "Output format.")],
                "responses": {"200": {"description": "The events", "content": {
                    "application/x-ndjson": {"schema": {"type": "string"}},
                    "text/csv": {"schema": {"type": "string"}}}},
                    **_error_responses(400, 401, 403, 503)}}},
            "/v1/admin/keys": {
                "post": {"operationId": "CreateKey", "summary": "Create a tenant API key.",
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": {"type": "object", "required": ["tenant_id"],
                                        "additionalProperties": False, "properties": {
                                 "tenant_id": {"type": "string", "pattern": TENANT_ID_PATTERN},
                                 "scopes": {"type": "array", "minItems": 1, "maxItems": 2,
                                            "items": {"enum": ["read", "write"]}}}}}}},
                         "responses": {"201": _json_ok({"allOf": [key, {
                             "type": "object", "required": ["token"],
                             "properties": {"token": _STR}}]}, "Created; the token is shown once"),
                             **_error_responses(400, 401, 403, 503)}},
                "get": {"operationId": "ListKeys", "summary": "List keys (without tokens).",
                        "parameters": [TENANT],
                        "responses": {"200": _json_ok({"type": "object", "required": ["keys"],
                            "properties": {"keys": {"type": "array", "items": key}}}),
                            **_error_responses(400, 401, 403, 503)}}},
            "/v1/admin/keys/{key_id}": {"delete": {
                "operationId": "RevokeKey", "summary": "Revoke a key.",
                "parameters": [{"name": "key_id", "in": "path", "required": True,
                                "schema": {"type": "string", "maxLength": 64}}],
                "responses": {"200": _json_ok(key), **_error_responses(401, 403, 404, 503)}}},
            "/healthz": {"get": {"operationId": "Health", "security": [],
                                 "responses": {"200": _json_ok({"type": "object"})}}},
            "/readyz": {"get": {"operationId": "Ready", "security": [], "responses": {
                "200": _json_ok({"type": "object"}), "503": _json_ok({"type": "object"},
                                                                    "Not ready")}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                **_input_schemas(),
                "AuditEvent": _event_schema(),
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message", "field"],
                    "properties": {"code": _STR, "message": _STR, "field": _STR}}}},
                "Stats": {"type": "object", "required": ["total", "by_severity", "by_category",
                                                          "histogram"], "properties": {
                    "tenant_id": _STR, "start_time": _TS, "end_time": _TS,
                    "total": {"type": "integer"},
                    "by_severity": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "by_category": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "histogram": {"type": "object", "properties": {
                        "bucket_seconds": {"type": "integer"},
                        "points": {"type": "array", "items": {"type": "object", "properties": {
                            "start": _TS, "count": {"type": "integer"}}}}}}}},
            },
        },
    }  # fmt: skip


def render() -> str:
    """The checked-in file's exact text."""
    return json.dumps(spec(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    CHECKED_IN.write_text(render())
    print(f"wrote {CHECKED_IN}")
