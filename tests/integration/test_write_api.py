"""The REST write API end to end: HTTP → JetStream → pipeline → PostgreSQL → answer."""

from __future__ import annotations

import json
import time
import uuid

import asyncpg
import pytest

from query_api.state import SETTINGS
from tests.support.api import ADMIN, auth
from tests.support.events import readme
from tests.support.service import admin_count, serving_app
from tests.support.waits import drained, eventually

pytestmark = pytest.mark.integration


async def test_sync_write_then_immediate_read(stack) -> None:
    r = await stack.post("/v1/audit/events", json={"event": readme()}, headers=auth())
    assert r.status == 200, await r.text()
    event_id = (await r.json())["event_id"]
    uuid.UUID(event_id)
    tenant = readme()["tenant_id"]
    got = await stack.get(f"/v1/audit/events/{event_id}", params={"tenant_id": tenant},
                          headers=auth())  # fmt: skip
    assert got.status == 200
    assert (await got.json())["event"]["description"] == "Successful portal login"


async def test_seed_write_example_in_camel_case(stack) -> None:
    # auditClient.writeEvent({event: {tenantId, action, severity: Severity.SECURITY, ...}})
    event = {"tenantId": "company-1", "action": "security.password_reset",
             "severity": "SEVERITY_SECURITY", "actor": {"id": "u-1", "type": "ACTOR_TYPE_USER"},
             "primaryResource": {"id": "u-1", "type": "user"}}  # fmt: skip
    r = await stack.post("/v1/audit/events", json={"event": event}, headers=auth())
    assert r.status == 200
    assert "event_id" in await r.json()


async def test_retries_are_idempotent(stack) -> None:
    headers = {**auth(), "Idempotency-Key": "reset-42"}
    first = await (await stack.post("/v1/audit/events", json={"event": readme()},
                                    headers=headers)).json()  # fmt: skip
    began = time.monotonic()
    again = await stack.post("/v1/audit/events", json={"event": readme()}, headers=headers)
    assert again.status == 200 and (await again.json()) == first
    # Stored already (JetStream reports the duplicate, the claim table has it): answered
    # at once, not after AUDIT_WRITE_TIMEOUT_S waiting for a commit notice that never comes.
    timeout = stack.server.app[SETTINGS].write_timeout_s
    assert time.monotonic() - began < timeout / 2
    batch = {"events": [readme(id=str(uuid.uuid4())) for _ in range(3)]}
    stored = await (await stack.post("/v1/audit/events:batch", json=batch, headers=auth())).json()
    began = time.monotonic()  # the batch again, and one new event: the new one is waited for
    batch["events"].append(readme(id=str(uuid.uuid4())))
    retried = await stack.post("/v1/audit/events:batch", json=batch, headers=auth())
    answer = await retried.json()
    assert retried.status == 200 and answer["event_ids"][:3] == stored["event_ids"]
    assert answer["event_ids"][3] == batch["events"][3]["id"] and not answer.get("errors")
    assert not answer.get("uncommitted_event_ids")
    assert time.monotonic() - began < timeout / 2
    own_id = str(uuid.uuid4())
    ids = set()
    for _ in range(3):
        r = await stack.post("/v1/audit/events", json={"event": readme(id=own_id)},
                             headers=auth())  # fmt: skip
        ids.add((await r.json())["event_id"])
    assert ids == {own_id}
    assert await admin_count(stack.db_url) == 6


async def test_invalid_and_unauthorised_writes_store_nothing(stack) -> None:
    r = await stack.post("/v1/audit/events", json={"event": readme(severity="LOUD")},
                         headers=auth())  # fmt: skip
    err = (await r.json())["error"]
    assert r.status == 400 and err["field"] == "event.severity" and err["code"] == "unknown_enum"
    r = await stack.post("/v1/audit/events", data=b"{nope", headers=auth())
    assert r.status == 400
    r = await stack.post("/v1/audit/events", json={"event": readme(description="x" * 70000)},
                         headers=auth())  # fmt: skip
    assert r.status == 400 and (await r.json())["error"]["code"] == "too_large"
    assert (await stack.post("/v1/audit/events", json={"event": readme()})).status == 401
    key = await (await stack.post("/v1/admin/keys", json={"tenant_id": "own", "scopes": ["write"]},
                                  headers=auth())).json()  # fmt: skip
    r = await stack.post("/v1/audit/events", json={"event": readme()}, headers=auth(key["token"]))
    assert r.status == 403  # another tenant's event
    read_key = await (await stack.post("/v1/admin/keys", json={"tenant_id": "own"},
                                       headers=auth())).json()  # fmt: skip
    r = await stack.post("/v1/audit/events", json={"event": readme(tenant_id="own")},
                         headers=auth(read_key["token"]))  # fmt: skip
    assert r.status == 403  # no write scope
    r = await stack.post("/v1/audit/events", json={"event": readme(tenant_id="own")},
                         headers=auth(key["token"]))  # fmt: skip
    assert r.status == 200
    await drained(stack.server.app[SETTINGS], stack.nc)  # nothing more will be stored
    assert await admin_count(stack.db_url) == 1


async def test_batch_with_some_invalid_events(stack) -> None:
    events = [readme(description=f"b{i}") for i in range(10)]
    events[3] = readme(action="")
    events[7] = {"tenant_id": "t"}
    r = await stack.post("/v1/audit/events:batch", json={"events": events}, headers=auth())
    assert r.status == 200, await r.text()
    body = await r.json()
    assert len(body["event_ids"]) == 8
    assert [(e["index"], e["field"]) for e in body["errors"]] == [
        (3, "events.3.action"), (7, "events.7.action")]  # fmt: skip
    assert await admin_count(stack.db_url) == 8
    too_many = {"events": [readme()] * 1001}
    r = await stack.post("/v1/audit/events:batch", json=too_many, headers=auth())
    assert r.status == 400 and (await r.json())["error"]["field"] == "events"
    # An item that is not an object is a malformed batch: all refused, nothing published.
    for item, kind in ((3, "a number"), ("x", "a string"), (None, "null"), ([], "an array")):
        r = await stack.post("/v1/audit/events:batch", json={"events": [readme(), item]},
                             headers=auth())  # fmt: skip
        err = (await r.json())["error"]
        assert r.status == 400 and err["field"] == "events.1", err
        assert err["message"] == f"events[1] must be an object (one event), not {kind}"
    await drained(stack.server.app[SETTINGS], stack.nc)  # nothing more will be stored
    assert await admin_count(stack.db_url) == 8


async def test_wait_false_answers_after_jetstream_ack(stack) -> None:
    r = await stack.post("/v1/audit/events?wait=false", json={"event": readme()}, headers=auth())
    assert r.status == 202
    body = await r.json()
    assert body["committed"] is False and uuid.UUID(body["event_id"])
    await eventually(lambda: admin_count(stack.db_url), lambda n: n == 1, timeout=5,
                     what="the event stored")  # fmt: skip


async def test_row_postgres_refuses_is_refused_synchronously(stack) -> None:
    # NUL cannot be stored by PostgreSQL: refused before anything is published.
    r = await stack.post("/v1/audit/events", json={"event": readme(description="nul \u0000 here")},
                         headers=auth())  # fmt: skip
    assert r.status == 400, await r.text()
    err = (await r.json())["error"]
    assert err["code"] == "invalid_field" and "NUL" in err["message"]
    # A value only PostgreSQL refuses (a CHECK added by the operator): 400 after the flush.
    admin = await asyncpg.connect(stack.db_url)
    try:
        await admin.execute(
            "ALTER TABLE audit.events ADD CONSTRAINT refuse_evil CHECK (action <> 'evil.act')"
        )
    finally:
        await admin.close()
    r = await stack.post("/v1/audit/events", json={"event": readme(action="evil.act")},
                         headers=auth())  # fmt: skip
    assert r.status == 400, await r.text()
    err = (await r.json())["error"]
    assert err["code"] == "db_rejected" and "could not be stored" in err["message"]
    batch = [readme(description="fine"), readme(action="evil.act")]
    r = await stack.post("/v1/audit/events:batch", json={"events": batch}, headers=auth())
    body = await r.json()
    assert len(body["event_ids"]) == 1 and body["errors"][0]["index"] == 1
    assert body["errors"][0]["code"] == "db_rejected"


async def test_event_log_unavailable_is_a_clear_503_and_stores_nothing(
    db_url, settings_factory, tmp_path
) -> None:
    # No stream listens on this subject: JetStream answers "no responders".
    settings = settings_factory(db_url, admin_token=ADMIN, state_dir=str(tmp_path),
                                subject="test.nowhere.events", write_timeout_s=2)  # fmt: skip
    async with serving_app(settings, pool_size=2) as client:
        r = await client.post("/v1/audit/events", json={"event": readme()}, headers=auth())
        body = await r.json()
        assert r.status == 503 and body["error"]["code"] == "unavailable", body
        assert "no JetStream stream" in body["error"]["message"]
        r = await client.post("/v1/audit/events:batch",
                              json={"events": [readme(), readme(action="")]},
                              headers=auth())  # fmt: skip
        body = await r.json()
        assert body["event_ids"] == []
        assert [(e["index"], e["code"]) for e in body["errors"]] == [
            (0, "unavailable"), (1, "invalid_field")]  # fmt: skip
        # The NATS connection is gone: every write is refused, none hangs.
        await client.nc.close()
        r = await client.post("/v1/audit/events:batch", json={"events": [readme()] * 3},
                              headers=auth())  # fmt: skip
        body = await r.json()
        assert [e["code"] for e in body["errors"]] == ["unavailable"] * 3, body
        assert await admin_count(db_url) == 0


async def test_a_forged_nats_msg_id_cannot_shadow_a_write(stack) -> None:
    # A raw producer guesses the project's Nats-Msg-Id form for tenant-b's next event id.
    own = str(uuid.uuid4())
    settings = stack.server.app[SETTINGS]
    forged = json.dumps(readme(tenant_id="mallory", description="forged")).encode()
    headers = {"Nats-Msg-Id": f"tenant-b:{own}"}
    ack = await stack.nc.jetstream().publish(settings.subject, forged, headers=headers)
    assert not ack.duplicate
    for wait in ("false", "true"):
        r = await stack.post(f"/v1/audit/events?wait={wait}", headers=auth(),
                             json={"event": readme(tenant_id="tenant-b", id=own)})  # fmt: skip
        assert r.status in (200, 202), await r.text()
        assert (await r.json())["event_id"] == own
    await drained(settings, stack.nc)  # the forged message and both writes settled
    assert await admin_count(stack.db_url, "SELECT count(*) FROM audit.events WHERE id = $1",
                             uuid.UUID(own)) == 1  # fmt: skip
