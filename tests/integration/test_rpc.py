"""Connect (with the official connect-python client) and gRPC end to end."""

from __future__ import annotations

import uuid

import asyncpg
import grpc
import pytest
from connectrpc.client import ConnectClient
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from schemas.audit.v1 import audit_pb2 as pb
from schemas.audit.v1 import audit_pb2_grpc
from tests.support.api import ADMIN
from tests.support.events import readme

pytestmark = pytest.mark.integration
SERVICE = "audit.v1.AuditService"


def method(name: str) -> MethodInfo:
    return MethodInfo(name=name, service_name=SERVICE, input=getattr(pb, f"{name}Request"),
                      output=getattr(pb, f"{name}Response"),
                      idempotency_level=IdempotencyLevel.UNKNOWN)  # fmt: skip


def event_msg(**changes: object) -> pb.AuditEvent:
    return json_format.ParseDict(readme(**changes), pb.AuditEvent())


async def call(client: ConnectClient, name: str, request, token: str = ADMIN):
    return await client.execute_unary(request=request, method=method(name),
                                      headers={"authorization": f"Bearer {token}"})  # fmt: skip


@pytest.mark.parametrize("proto_json", [False, True], ids=["binary", "json"])
async def test_connect_official_client(stack, proto_json: bool) -> None:
    base = str(stack.make_url("")).rstrip("/")
    client = ConnectClient(base, proto_json=proto_json)
    wrote = await call(client, "WriteEvent", pb.WriteEventRequest(event=event_msg()))
    uuid.UUID(wrote.event_id)
    tenant = readme()["tenant_id"]
    got = await call(client, "GetEvent", pb.GetEventRequest(id=wrote.event_id, tenant_id=tenant))
    assert got.event.id == wrote.event_id and got.event.actor.display_name == "Jane Doe"
    assert got.event.metadata["ip"] == "192.0.2.10" and got.event.seq >= 1
    page = await call(client, "ListEvents", pb.ListEventsRequest(
        tenant_id=tenant, severities=[pb.SEVERITY_INFO], page_size=10))  # fmt: skip
    assert wrote.event_id in [e.id for e in page.events]
    batch = await call(client, "WriteEvents", pb.WriteEventsRequest(
        events=[event_msg(description="one"), event_msg(action="bad action!")]))  # fmt: skip
    assert len(batch.event_ids) == 1
    assert batch.errors[0].index == 1 and batch.errors[0].field == "events.1.action"
    # Retries with the client's own id: one event.
    own = str(uuid.uuid4())
    for _ in range(2):
        again = await call(client, "WriteEvent", pb.WriteEventRequest(event=event_msg(id=own)))
        assert again.event_id == own
    with pytest.raises(ConnectError) as info:
        await call(client, "WriteEvent", pb.WriteEventRequest(event=event_msg()), token="nope")
    assert info.value.code == Code.UNAUTHENTICATED
    with pytest.raises(ConnectError) as info:
        await call(client, "WriteEvent", pb.WriteEventRequest(event=event_msg(action="")))
    assert info.value.code == Code.INVALID_ARGUMENT and "action" in info.value.message
    with pytest.raises(ConnectError) as info:
        await call(client, "GetEvent", pb.GetEventRequest(id=str(uuid.uuid4()), tenant_id=tenant))
    assert info.value.code == Code.NOT_FOUND


async def test_grpc_service_health_and_reflection(stack, grpc_channel) -> None:
    stub = audit_pb2_grpc.AuditServiceStub(grpc_channel)
    md = (("authorization", f"Bearer {ADMIN}"),)
    wrote = await stub.WriteEvent(pb.WriteEventRequest(event=event_msg()), metadata=md, timeout=10)
    tenant = readme()["tenant_id"]
    got = await stub.GetEvent(pb.GetEventRequest(id=wrote.event_id, tenant_id=tenant),
                              metadata=md, timeout=10)  # fmt: skip
    assert got.event.id == wrote.event_id
    page = await stub.ListEvents(pb.ListEventsRequest(tenant_id=tenant), metadata=md, timeout=10)
    assert [e.id for e in page.events] == [wrote.event_id]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListEvents(pb.ListEventsRequest(tenant_id=tenant), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    key = await (await stack.post("/v1/admin/keys", json={"tenant_id": "own", "scopes": ["write"]},
                                  headers={"Authorization": f"Bearer {ADMIN}"})).json()  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.WriteEvent(pb.WriteEventRequest(event=event_msg()), timeout=10,
                              metadata=(("authorization", f"Bearer {key['token']}"),))  # fmt: skip
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.WriteEvent(pb.WriteEventRequest(event=event_msg(severity="SEVERITY_INFO",
                              description="x" * 70_000)), metadata=md, timeout=10)  # fmt: skip
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    health = health_pb2_grpc.HealthStub(grpc_channel)
    status = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(grpc_channel)
    responses = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]))  # fmt: skip
    names = set()
    async for r in responses:
        names |= {s.name for s in r.list_services_response.service}
    assert SERVICE in names and "grpc.health.v1.Health" in names
    from query_api.state import METRICS

    text = stack.server.app[METRICS].exposition().decode()
    assert 'auditlog_grpc_request_duration_seconds_count{code="OK",method="WriteEvent"}' in text
    assert 'code="UNAUTHENTICATED",method="ListEvents"' in text


async def test_same_event_id_from_two_tenants_is_stored_once_per_tenant(
    stack,
    grpc_channel,
) -> None:
    """Within NATS's duplicate window, over every write protocol: never the other's shadow."""
    base = str(stack.make_url("")).rstrip("/")
    connect = ConnectClient(base, proto_json=False)
    stub = audit_pb2_grpc.AuditServiceStub(grpc_channel)
    md = (("authorization", f"Bearer {ADMIN}"),)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    ids = {name: str(uuid.uuid4()) for name in ("rest", "batch", "connect", "grpc")}
    for tenant in ("tenant-a", "tenant-b"):
        one = readme(tenant_id=tenant, id=ids["rest"])
        r = await stack.post("/v1/audit/events", headers=admin, json={"event": one})
        assert r.status == 200, await r.text()
        many = [readme(tenant_id=tenant, id=ids["batch"])]
        r = await stack.post("/v1/audit/events:batch", headers=admin, json={"events": many})
        body = await r.json()
        assert r.status == 200 and body["event_ids"] == [ids["batch"]], body
        wrote = await call(connect, "WriteEvent", pb.WriteEventRequest(
            event=event_msg(tenant_id=tenant, id=ids["connect"])))  # fmt: skip
        assert wrote.event_id == ids["connect"]
        request = pb.WriteEventRequest(event=event_msg(tenant_id=tenant, id=ids["grpc"]))
        wrote = await stub.WriteEvent(request, metadata=md, timeout=10)
        assert wrote.event_id == ids["grpc"]
    conn = await asyncpg.connect(stack.db_url)
    try:
        rows = await conn.fetch("SELECT id::text, tenant_id FROM audit.events")
    finally:
        await conn.close()
    stored = sorted((r["id"], r["tenant_id"]) for r in rows)
    assert stored == sorted((i, t) for i in ids.values() for t in ("tenant-a", "tenant-b"))
