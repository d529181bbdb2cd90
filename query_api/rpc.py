"""``audit.v1.AuditService`` over the Connect protocol (aiohttp, :8080) and gRPC (:50051).

Both call the same :class:`AuditService` as REST, so semantics, validation messages and
auth are identical.
Protobuf messages are converted through proto3 JSON, which is exactly the event JSON
the rest of the service speaks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from multidict import MultiDict

from infra.metrics import Metrics
from infra.tls import ServerPem
from query_api.errors import ApiError
from query_api.service import AuditService
from query_api.state import METRICS
from query_api.state import SERVICE as SERVICE_KEY
from schemas.audit.v1 import audit_pb2 as pb
from schemas.audit.v1 import audit_pb2_grpc

log = logging.getLogger(__name__)

SERVICE = "audit.v1.AuditService"
REQUESTS: dict[str, type[Message]] = {
    "WriteEvent": pb.WriteEventRequest,
    "WriteEvents": pb.WriteEventsRequest,
    "ListEvents": pb.ListEventsRequest,
    "GetEvent": pb.GetEventRequest,
}
# Connect codes by our HTTP status, and Connect's HTTP status by code.
CODE_FOR_STATUS = {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied",
                   404: "not_found", 405: "unimplemented", 413: "resource_exhausted",
                   429: "resource_exhausted", 503: "unavailable", 500: "internal"}  # fmt: skip
HTTP_FOR_CODE = {"invalid_argument": 400, "unauthenticated": 401, "permission_denied": 403,
                 "not_found": 404, "resource_exhausted": 429, "unavailable": 503,
                 "internal": 500, "unimplemented": 501, "deadline_exceeded": 504}  # fmt: skip
GRPC_FOR_CODE = {"invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
                 "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
                 "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
                 "not_found": grpc.StatusCode.NOT_FOUND,
                 "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
                 "unavailable": grpc.StatusCode.UNAVAILABLE,
                 "internal": grpc.StatusCode.INTERNAL,
                 "unimplemented": grpc.StatusCode.UNIMPLEMENTED,
                 "deadline_exceeded": grpc.StatusCode.DEADLINE_EXCEEDED}  # fmt: skip


def connect_code(exc: ApiError) -> str:
    """The Connect/gRPC code name for an API error."""
    return CODE_FOR_STATUS.get(exc.status, "internal")


def _event_bytes(event: Message) -> bytes:
    return json.dumps(json_format.MessageToDict(event, preserving_proto_field_name=True)).encode()


def _list_params(req: pb.ListEventsRequest) -> MultiDict[str]:
    params: MultiDict[str] = MultiDict()
    for name, value in json_format.MessageToDict(req, preserving_proto_field_name=True).items():
        if isinstance(value, list):
            for v in value:
                params.add(name, str(v))
        else:
            params.add(name, str(value))
    return params


class Rpc:
    """The service's methods over protobuf messages, for any transport."""

    def __init__(self, service: AuditService, metrics: Metrics) -> None:
        self.service = service
        self.metrics = metrics

    async def call(self, method: str, req: Any, authorization: str,
                   idempotency_key: str | None = None) -> Message:  # fmt: skip
        """Run ``method``.

        Raises:
            ApiError: as REST would answer (map with :func:`connect_code`).
        """
        service = self.service
        who = await service.authenticate(authorization)
        if method == "WriteEvent":
            event_id, _ = await service.write_one(who, _event_bytes(req.event), idempotency_key,
                                                  True)  # fmt: skip
            return pb.WriteEventResponse(event_id=event_id)
        if method == "WriteEvents":
            answer = await service.write_many(who, [_event_bytes(e) for e in req.events], True)
            return pb.WriteEventsResponse(
                event_ids=[str(i) for i in answer.event_ids],
                errors=[pb.WriteEventError(index=e.index, code=e.code,
                                                     message=e.message, field=e.field)
                        for e in answer.errors],
            )  # fmt: skip
        if method == "ListEvents":
            page = await service.list_page(who, _list_params(req))
            text = ('{"events":[' + ",".join(page.events) + '],"next_page_token":'
                    + json.dumps(page.next_page_token) + "}")  # fmt: skip
            return json_format.Parse(text, pb.ListEventsResponse(), ignore_unknown_fields=True)
        if method == "GetEvent":
            doc = await service.get_one(who, req.tenant_id or None, req.id)
            return json_format.Parse('{"event":' + doc + "}", pb.GetEventResponse(),
                                     ignore_unknown_fields=True)  # fmt: skip
        raise ApiError(405, "unimplemented", f"{SERVICE}/{method} is not a method")


# -- Connect (unary, JSON and binary codecs) -----------------------------------------------
def _connect_error(code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message},
                             status=HTTP_FOR_CODE.get(code, 500))  # fmt: skip


async def connect_handler(request: web.Request) -> web.Response:
    """POST /audit.v1.AuditService/<Method> with application/json or application/proto."""
    method = request.match_info["method"]
    req_type = REQUESTS.get(method)
    if req_type is None:
        return _connect_error("unimplemented", f"{SERVICE}/{method} is not a method")
    ctype = request.content_type
    if ctype not in ("application/json", "application/proto"):
        return web.Response(status=415, text="use application/json or application/proto")
    body = await request.read()
    try:
        if ctype == "application/json":
            req = json_format.Parse(body or b"{}", req_type())
        else:
            req = req_type.FromString(body)
    except (json_format.ParseError, DecodeError, ValueError, RecursionError) as exc:
        return _connect_error("invalid_argument", f"malformed request: {exc}")
    timeout_ms = request.headers.get("Connect-Timeout-Ms")
    try:
        async with asyncio.timeout(int(timeout_ms) / 1000 if timeout_ms else None):
            resp = await request.app[RPC].call(method, req,
                                               request.headers.get("Authorization", ""),
                                               request.headers.get("Idempotency-Key"))  # fmt: skip
    except ApiError as exc:
        where = f" ({exc.field})" if exc.field else ""
        return _connect_error(connect_code(exc), exc.message + where)
    except TimeoutError:
        return _connect_error("deadline_exceeded", "the request deadline passed")
    except ValueError:
        return _connect_error("invalid_argument", "Connect-Timeout-Ms must be an integer")
    if ctype == "application/json":
        text = json_format.MessageToJson(resp, preserving_proto_field_name=True, indent=None)
        return web.Response(text=text, content_type="application/json")
    return web.Response(body=resp.SerializeToString(), content_type="application/proto")


RPC = web.AppKey("rpc", Rpc)


def add_connect_routes(app: web.Application) -> None:
    """Register the Connect endpoints."""
    app[RPC] = Rpc(app[SERVICE_KEY], app[METRICS])
    app.router.add_post(f"/{SERVICE}/{{method}}", connect_handler)


# -- gRPC ----------------------------------------------------------------------------------
class _Undecodable:
    """Stands for a request whose bytes are not the method's message (answered 400-style)."""

    def __init__(self, error: str) -> None:
        self.error = error


def _safe_parser(req_type: type[Message]) -> Any:
    # grpcio answers a deserializer's exception with INTERNAL; bad bytes are the client's
    # fault, so they reach the servicer and become INVALID_ARGUMENT.
    def parse(data: bytes) -> Any:
        try:
            return req_type.FromString(data)
        except Exception as exc:
            return _Undecodable(f"{type(exc).__name__}: {exc}")

    return parse


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class Servicer(audit_pb2_grpc.AuditServiceServicer):
    """grpcio asyncio servicer delegating to :class:`Rpc`; deadlines are grpc's own."""

    def __init__(self, rpc: Rpc) -> None:
        self.rpc = rpc

    async def _call(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        md = dict(context.invocation_metadata() or ())
        started = time.perf_counter()
        code = "OK"
        if isinstance(request, _Undecodable):
            code = grpc.StatusCode.INVALID_ARGUMENT.name
            self.rpc.metrics.grpc_seconds.labels(method, code).observe(0.0)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"malformed request: {request.error}")  # fmt: skip
        try:
            return await self.rpc.call(method, request, str(md.get("authorization", "")),
                                       md.get("idempotency-key"))  # fmt: skip
        except ApiError as exc:
            where = f" ({exc.field})" if exc.field else ""
            status = GRPC_FOR_CODE[connect_code(exc)]
            code = status.name
            await context.abort(status, exc.message + where)
        except asyncio.CancelledError:
            code = "CANCELLED"  # the client went away or its deadline passed
            raise
        finally:
            self.rpc.metrics.grpc_seconds.labels(method, code).observe(
                time.perf_counter() - started
            )

    async def WriteEvent(self, request: Any, context: Any) -> Any:
        return await self._call("WriteEvent", request, context)

    async def WriteEvents(self, request: Any, context: Any) -> Any:
        return await self._call("WriteEvents", request, context)

    async def ListEvents(self, request: Any, context: Any) -> Any:
        return await self._call("ListEvents", request, context)

    async def GetEvent(self, request: Any, context: Any) -> Any:
        return await self._call("GetEvent", request, context)


async def start_grpc(app: web.Application, host: str, port: int, *,
                     tls: ServerPem | None = None) -> grpc.aio.Server:  # fmt: skip
    """A started gRPC server with AuditService, the health service and reflection; with
    ``tls``, over TLS only (and, when it has a client CA, for clients it signed only).

    Raises:
        OSError: when the port cannot be bound.
    """
    server = grpc.aio.server()
    servicer = Servicer(app[RPC])
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=_safe_parser(req_type),
            response_serializer=_serialize,
        )
        for name, req_type in REQUESTS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (pb.DESCRIPTOR.services_by_name["AuditService"].full_name,
             health.SERVICE_NAME, reflection.SERVICE_NAME)  # fmt: skip
    reflection.enable_server_reflection(names, server)
    try:
        if tls is None:
            bound = server.add_insecure_port(f"{host}:{port}")
        else:
            creds = grpc.ssl_server_credentials(
                [(tls.key, tls.cert)], root_certificates=tls.client_ca,
                require_client_auth=tls.client_ca is not None,
            )  # fmt: skip
            bound = server.add_secure_port(f"{host}:{port}", creds)
    except RuntimeError as exc:
        raise OSError(f"cannot bind gRPC to {host}:{port}: {exc}") from exc
    if port and bound != port:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    await server.start()
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server
