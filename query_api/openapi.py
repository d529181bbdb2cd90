"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json``, generated.

Every schema comes from the types the handlers use: query parameters, request and response
bodies from ``query_api.contract``, the input event from ``schemas.events``. This module
adds only what a type cannot say: paths, methods, summaries and which errors each
operation answers. The same document is checked in as ``schemas/openapi.json``
(``python -m query_api.openapi`` rewrites it; a test fails when it is stale).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ledger import proofs
from ledger.verify import LogReport
from query_api import contract as c
from schemas.events import json_schema

CHECKED_IN = Path(__file__).resolve().parent.parent / "schemas" / "openapi.json"
REF = "#/components/schemas/{name}"
_ERRORS = {400: "Invalid argument", 401: "Missing or invalid bearer token",
           403: "Not allowed for this token", 404: "Not found",
           409: "Conflicts with the current state (see the message)", 413: "Body too large",
           429: "Too many requests (see Retry-After)",
           503: "Storage or event log unavailable (see Retry-After)"}  # fmt: skip


@dataclass(frozen=True)
class Op:
    """One operation: what the contract types cannot say about it."""

    method: str
    path: str
    operation_id: str
    summary: str
    params: type[msgspec.Struct] | None = None
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    body: type[msgspec.Struct] | None = None
    ok: dict[int, tuple[Any, str]] = field(default_factory=dict)
    errors: tuple[int, ...] = (400, 401, 403, 503)
    headers: tuple[dict[str, Any], ...] = ()
    public: bool = False
    links: dict[str, dict[str, Any]] = field(default_factory=dict)  # on the first ok status
    description: str = ""


_UUID = {"type": "string", "format": "uuid"}
_IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header",
                "description": "Makes retries safe: the same key names the same event.",
                "schema": {"type": "string", "minLength": 1,
                           "maxLength": c.MAX_KEY_LEN}}  # fmt: skip
_STREAM = object()  # marks the export's streamed body
_TENANT = {"type": "string", "pattern": c.TENANT_ID_PATTERN}
_PINNED = ("Check the signed note against a verifier key you pinned beforehand, got out of "
           "band (from the operator, or GET /v1/audit/public-key once, then kept), never "
           "against a key from the same answers: whoever could forge the proof could also "
           "change the key the server returns.")  # fmt: skip

_STREAM_PATH = {"tenant_id": _TENANT,
                "stream_id": {"type": "string", "pattern": c.STREAM_ID_PATTERN}}  # fmt: skip
_STREAM_REF = {"tenant_id": "$response.body#/tenant_id", "stream_id": "$response.body#/stream_id"}
_STREAM_LINKS = {"GetCreatedStream": {"operationId": "GetStream", "parameters": _STREAM_REF},
                 "DeleteCreatedStream": {"operationId": "DeleteStream",
                                         "parameters": _STREAM_REF}}  # fmt: skip

OPERATIONS = (
    Op("post", "/v1/audit/events", "WriteEvent",
       "Write one event; answers after it is committed (wait=true).",
       params=c.WriteParams, body=c.WriteEventBody, headers=(_IDEMPOTENCY,),
       ok={200: (c.WriteResult, "Committed"),
           202: (c.WriteResult, "Durable in JetStream, not yet committed")},
       errors=(400, 401, 403, 413, 503),
       links={"GetWrittenEvent": {"operationId": "GetEvent", "parameters": {
           "id": "$response.body#/event_id",
           "tenant_id": "$request.body#/event/tenant_id"}}}),
    Op("get", "/v1/audit/events", "ListEvents", "One page of a tenant's events.",
       params=c.ListParams, ok={200: (c.EventPage, "OK")}),
    Op("post", "/v1/audit/events:batch", "WriteEvents",
       f"Write up to {c.MAX_BATCH_EVENTS:,} events (4 MiB); per-event results.",
       params=c.WriteParams, body=c.WriteEventsBody,
       ok={200: (c.BatchResult, "Every accepted event committed"),
           202: (c.BatchResult, "Some accepted events not yet committed")},
       errors=(400, 401, 403, 413, 503),
       description="Each item is checked as an EventInput on its own: one that breaks a rule "
                   "is answered in errors (index, code, field) and the others are stored. An "
                   "item that is not an object refuses the whole batch (400 naming it; nothing "
                   "is written)."),
    Op("get", "/v1/audit/events/{id}", "GetEvent", "One event by id.",
       params=c.EventParams, path_params={"id": _UUID}, ok={200: (c.OneEvent, "OK")},
       errors=(400, 401, 403, 404, 503)),
    Op("get", "/v1/audit/stats", "EventStats",
       "Counts by severity and category and a histogram (default: the last 24 h).",
       params=c.FilterParams, ok={200: (c.Stats, "OK")}),
    Op("get", "/v1/audit/export", "ExportEvents",
       "Every matching event, streamed as NDJSON or CSV.",
       params=c.ExportParams, ok={200: (_STREAM, "The events")}),
    Op("get", "/v1/audit/verify", "VerifyLog",
       "The tenant's log verified: hash chain, signed checkpoints, witness copy.",
       params=c.VerifyParams, ok={200: (LogReport, "The report (status intact, tampered "
                                                  "or unverifiable)")}),
    Op("get", "/v1/audit/events/{id}/proof", "EventProof",
       "The event's canonical bytes and RFC 6962 inclusion proof under a signed checkpoint.",
       params=c.EventParams, path_params={"id": _UUID},
       ok={200: (proofs.InclusionProof, "The proof")}, errors=(400, 401, 403, 404, 503),
       description="Recompute leaf_hash(SHA-256(prev_hash || canonical)) and verify the "
                   "audit path to the checkpoint's root. " + _PINNED),
    Op("get", "/v1/audit/consistency", "ConsistencyProof",
       "An RFC 6962 consistency proof between two of the tenant's signed checkpoints.",
       params=c.ConsistencyParams, ok={200: (proofs.ConsistencyProof, "The proof")},
       errors=(400, 401, 403, 404, 503),
       description="Verify both signed notes, then the proof between their roots. " + _PINNED),
    Op("get", "/v1/audit/public-key", "PublicKey",
       "The checkpoint signing key (C2SP verifier key) and every key that has signed.",
       public=True, ok={200: (c.PublicKeys, "The keys")}, errors=(400, 503),
       description="For pinning a key once (compare it with the operator's, e.g. `auditlog "
                   "signing-key`), not for checking a proof with: a client checks signatures "
                   "against the key it pinned, never against this answer alone."),
    Op("post", "/v1/admin/keys", "CreateKey", "Create a tenant API key (admin token).",
       body=c.KeyRequest, ok={201: (c.NewKey, "Created; the token is shown only here")},
       links={"RevokeCreatedKey": {"operationId": "RevokeKey", "parameters": {
                  "key_id": "$response.body#/key_id"}},
              "ListTenantKeys": {"operationId": "ListKeys", "parameters": {
                  "tenant_id": "$response.body#/tenant_id"}}}),
    Op("get", "/v1/admin/keys", "ListKeys", "List keys, without tokens (admin token).",
       params=c.KeyListParams, ok={200: (c.KeyList, "OK")}),
    Op("delete", "/v1/admin/keys/{key_id}", "RevokeKey",
       "Revoke a key (idempotent; admin token).",
       path_params={"key_id": {"type": "string", "minLength": 1, "maxLength": 64}},
       ok={200: (c.Key, "The key, revoked")}, errors=(401, 403, 404, 503)),
    Op("post", "/v1/viewer-tokens", "CreateViewerToken",
       "Mint a short-lived, read-only viewer token for one tenant (a key with read scope, "
       "or the admin token).",
       body=c.ViewerTokenRequest, ok={201: (c.ViewerToken, "Minted; listed nowhere")},
       description="For the viewer page (`/ui/#token=...`) or any read. Bound to the tenant, "
                   "read-only, ends at expires_at or when the minting key is revoked; "
                   "its fixed filters narrow every read it makes (a request asking for more "
                   "is a 403, an event outside them a 404). A viewer token cannot mint one."),
    Op("get", "/v1/admin/tenants/{tenant_id}/retention", "GetTenantPolicy",
       "A tenant's retention and legal hold as they apply now (admin token).",
       path_params={"tenant_id": _TENANT}, ok={200: (c.TenantPolicy, "The policy")}),
    Op("put", "/v1/admin/tenants/{tenant_id}/retention", "SetTenantRetention",
       "Override a tenant's retention; null returns it to the global one (admin token).",
       path_params={"tenant_id": _TENANT}, body=c.RetentionBody,
       ok={200: (c.TenantPolicy, "The policy")}),
    Op("put", "/v1/admin/tenants/{tenant_id}/legal-hold", "PlaceLegalHold",
       "Place a legal hold: nothing of the tenant is hidden or dropped (admin token).",
       path_params={"tenant_id": _TENANT}, body=c.HoldBody,
       ok={200: (c.TenantPolicy, "The policy")}),
    Op("delete", "/v1/admin/tenants/{tenant_id}/legal-hold", "ReleaseLegalHold",
       "Release a tenant's legal hold (admin token).",
       path_params={"tenant_id": _TENANT}, ok={200: (c.TenantPolicy, "The policy")}),
    Op("post", "/v1/admin/tenants/{tenant_id}/streams", "CreateStream",
       "Stream the tenant's events out: a webhook, a Splunk HEC or an S3 bucket (admin token).",
       path_params={"tenant_id": _TENANT}, body=c.StreamRequest,
       ok={201: (c.NewStream, "Created; a webhook's signing secret is shown only here")},
       errors=(400, 401, 403, 409, 503), links=_STREAM_LINKS,
       description="Answers at once: the destination is not contacted (deliveries report "
                   "failures in the stream's state). Delivery is at least once, in the "
                   "tenant's seq order, every record carrying its id; secrets are never "
                   "returned. 409 when the tenant has the most streams allowed."),
    Op("get", "/v1/admin/tenants/{tenant_id}/streams", "ListStreams",
       "The tenant's streams and how far each got (admin token).",
       path_params={"tenant_id": _TENANT}, ok={200: (c.StreamList, "OK")}),
    Op("get", "/v1/admin/tenants/{tenant_id}/streams/{stream_id}", "GetStream",
       "One stream with its latest delivery attempts (admin token).",
       path_params=_STREAM_PATH, ok={200: (c.StreamDetail, "OK")},
       errors=(400, 401, 403, 404, 503)),
    Op("delete", "/v1/admin/tenants/{tenant_id}/streams/{stream_id}", "DeleteStream",
       "Delete a stream; its delivery stops within a second (admin token).",
       path_params=_STREAM_PATH, ok={200: (c.Stream, "The stream as it was")},
       errors=(400, 401, 403, 404, 503)),
    Op("post", "/v1/admin/tenants/{tenant_id}/streams/{stream_id}:resume", "ResumeStream",
       "Resume a paused stream now (idempotent; admin token).",
       path_params=_STREAM_PATH, ok={200: (c.Stream, "The stream, active")},
       errors=(400, 401, 403, 404, 503)),
    Op("post", "/v1/admin/tenants/{tenant_id}/streams/{stream_id}:rotate-secret",
       "RotateStreamSecret",
       "A new webhook signing secret (the previous one stays valid for overlap_s), or a new "
       "HEC token or S3 key (admin token).",
       path_params=_STREAM_PATH, body=c.RotateSecretRequest,
       ok={200: (c.RotatedSecret, "Rotated; a new webhook secret is shown only here")},
       errors=(400, 401, 403, 404, 503)),
    Op("get", "/healthz", "Health", "The process is alive.", public=True,
       ok={200: (c.Health, "Alive")}, errors=()),
    Op("get", "/readyz", "Ready", "Readiness with every check and its reason.", public=True,
       ok={200: (c.Readiness, "Ready or degraded"), 503: (c.Readiness, "Not ready")},
       errors=()),
)  # fmt: skip


def _input_schemas() -> dict[str, Any]:
    """The input event's JSON Schema from its msgspec Struct, as components ``EventInput``
    and ``In<Name>`` (its nested definitions)."""
    schema = json_schema()
    defs = schema.pop("$defs")
    root = defs.pop("AuditEvent")
    text = json.dumps({"root": root, "defs": defs}).replace("#/$defs/", "#/components/schemas/In")
    parts = json.loads(text)
    return {"EventInput": parts["root"], **{f"In{k}": v for k, v in parts["defs"].items()}}


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``T | None`` as a query parameter is just an optional ``T``."""
    options = [s for s in schema.get("anyOf", ()) if s != {"type": "null"}]
    return options[0] if len(options) == 1 else schema


def _parameters(op: Op, components: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": schema}
        for name, schema in op.path_params.items()
    ]
    if op.params is not None:
        struct = components[op.params.__name__]
        for name, prop in struct["properties"].items():
            schema = _not_null(prop)
            param: dict[str, Any] = {"name": name, "in": "query", "schema": schema}
            if "description" in schema:
                param["description"] = schema.pop("description")
            if name in struct.get("required", ()):
                param["required"] = True
            if schema.get("type") == "array":
                param["style"], param["explode"] = "form", True
            out.append(param)
    out.extend(op.headers)
    return out


def _content(kind: Any) -> dict[str, Any]:
    if kind is _STREAM:
        return {"application/x-ndjson": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}}}  # fmt: skip
    return {"application/json": {"schema": {"$ref": REF.format(name=kind.__name__)}}}


def _responses(op: Op) -> dict[str, Any]:
    out: dict[str, Any] = {str(status): {"description": desc, "content": _content(kind)}
                           for status, (kind, desc) in op.ok.items()}  # fmt: skip
    if op.links:
        out[str(min(op.ok))]["links"] = op.links
    codes = set(op.errors)
    if 401 in codes:  # every authenticated operation may be rate limited
        codes.add(429)
    for status in sorted(codes):
        resp: dict[str, Any] = {"description": _ERRORS[status], "content": _content(c.Error)}
        if status in (429, 503):
            resp["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying",
                                               "schema": {"type": "integer"}}}  # fmt: skip
        out[str(status)] = resp
    return out


def _operation(op: Op, components: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
    if op.description:
        doc["description"] = op.description
    params = _parameters(op, components)
    if params:
        doc["parameters"] = params
    if op.body is not None:
        doc["requestBody"] = {"required": True, "content": _content(op.body)}
    doc["responses"] = _responses(op)
    if op.public:
        doc["security"] = []
    return doc


def _components() -> dict[str, Any]:
    types: list[Any] = [c.Error]
    for op in OPERATIONS:
        types.extend(t for t in (op.params, op.body) if t is not None)
        types.extend(kind for kind, _ in op.ok.values() if kind is not _STREAM)
    _, components = msgspec.json.schema_components(dict.fromkeys(types), ref_template=REF)
    return components


def spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    components = _components()
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, components)
    params = {op.params.__name__ for op in OPERATIONS if op.params is not None}
    schemas = {k: v for k, v in components.items() if k not in params}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Audit Log Service", "version": "1.0.0",
                 "description": "Tenant-scoped, tamper-evident audit events."},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {**_input_schemas(), **schemas},
        },
    }  # fmt: skip


def render() -> str:
    """The checked-in file's exact text."""
    return json.dumps(spec(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    CHECKED_IN.write_text(render())
    print(f"wrote {CHECKED_IN}")
