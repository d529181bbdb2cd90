"""The Python clients against the live app (HTTP) and the NATS publisher helper."""

from __future__ import annotations

import asyncio

import nats
import pytest

from query_api.client import AsyncAuditClient, AuditApiError, AuditClient, publish_event
from tests.support.api import ADMIN
from tests.support.events import readme
from tests.support.waits import eventually

pytestmark = pytest.mark.integration
TENANT = readme()["tenant_id"]


async def test_sync_client(stack) -> None:
    client = AuditClient(str(stack.make_url("")), ADMIN, retries=1)
    # The product page's writeEvent example, translated.
    event = {"tenant_id": TENANT, "action": "security.password_reset",
             "severity": "SEVERITY_SECURITY", "actor": {"id": "u-1", "type": "ACTOR_TYPE_USER"},
             "primary_resource": {"id": "u-1", "type": "user"}}  # fmt: skip
    event_id = await asyncio.to_thread(client.write_event, event)
    got = await asyncio.to_thread(client.get_event, event_id, TENANT)
    assert got["action"] == "security.password_reset"
    batch = await asyncio.to_thread(client.write_events, [readme(description=f"d{i}")
                                                          for i in range(5)])  # fmt: skip
    assert len(batch["event_ids"]) == 5 and batch["errors"] == []
    listed = await asyncio.to_thread(lambda: list(client.list_events(tenant_id=TENANT,
                                                                      page_size=2)))  # fmt: skip
    assert len(listed) == 6 and len({e["id"] for e in listed}) == 6
    with pytest.raises(AuditApiError) as info:
        await asyncio.to_thread(client.write_event, readme(severity="NOPE"))
    assert info.value.status == 400 and info.value.field == "event.severity"


async def test_async_client_and_publisher(stack) -> None:
    async with AsyncAuditClient(str(stack.make_url("")), ADMIN) as client:
        fixed = readme(id="0195f3c2-0000-7000-8000-000000000001")
        first = await client.write_event(fixed)
        assert await client.write_event(fixed) == first  # a retry: the same event
        got = await client.get_event(first, TENANT)
        assert got["id"] == first
        ids = [e["id"] async for e in client.list_events(tenant_id=TENANT)]
        assert ids == [first]
        with pytest.raises(AuditApiError) as info:
            await client.get_event("not-a-uuid", TENANT)
        assert info.value.status == 400


async def test_nats_publisher_helper(stack, nats_url) -> None:
    from query_api.state import SETTINGS

    settings = stack.server.app[SETTINGS]
    nc = await nats.connect(nats_url)
    try:
        event_id = await publish_event(nc, readme(description="via nats"), settings.subject)
    finally:
        await nc.close()
    async with AsyncAuditClient(str(stack.make_url("")), ADMIN) as client:
        got = await eventually(lambda: client.get_event(event_id, TENANT), timeout=5,
                               ignore=(AuditApiError,), what="the event readable")  # fmt: skip
        assert got["description"] == "via nats"
