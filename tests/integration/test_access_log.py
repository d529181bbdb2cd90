"""The access trail: reads, exports and admin changes land in the tenant's own log through
the real pipeline (NATS, worker, PostgreSQL), summarised per key and filter."""

from __future__ import annotations

import json

import pytest

from tests.support.api import ADMIN, auth
from tests.support.service import running_worker, serving_app
from tests.support.waits import eventually

pytestmark = pytest.mark.integration
TENANT = "acc-t1"


@pytest.fixture
async def stack(db_url, settings_factory, tmp_path):
    settings = settings_factory(db_url, admin_token=ADMIN, state_dir=str(tmp_path),
                                batch_max_latency_ms=5, access_log=True,
                                access_log_window_s=1.0)  # fmt: skip
    async with running_worker(settings), serving_app(settings) as client:
        yield client


async def _trail(api, tenant: str, want: int) -> list[dict]:
    """The tenant's access events (admin-read, so reading them is logged too: the helper
    filters on the compliance category and stops once ``want`` are there)."""

    async def events() -> list[dict]:
        r = await api.get("/v1/audit/events", headers=auth(ADMIN), params={
            "tenant_id": tenant, "categories": "CATEGORY_COMPLIANCE", "order": "asc",
            "page_size": "100"})  # fmt: skip
        return (await r.json())["events"]

    return await eventually(events, lambda found: len(found) >= want, timeout=10, interval=0.1,
                            what=f"{want} access event(s) in {tenant}'s log")  # fmt: skip


async def test_reads_exports_and_changes_are_logged_in_the_tenants_own_log(stack) -> None:
    api = stack
    r = await api.post("/v1/admin/keys", json={"tenant_id": TENANT, "scopes": ["read"]},
                       headers=auth(ADMIN))  # fmt: skip
    key = await r.json()
    # A dashboard polling the same filter 20 times, and paging: one summary event.
    for _ in range(20):
        r = await api.get("/v1/audit/events", headers=auth(key["token"]),
                          params={"severities": "SEVERITY_ERROR"})  # fmt: skip
        assert r.status == 200
    r = await api.get("/v1/audit/export", headers=auth(key["token"]))
    assert r.status == 200 and await r.read() is not None
    await api.put(f"/v1/admin/tenants/{TENANT}/legal-hold", json={"reason": "case 7"},
                  headers=auth(ADMIN))  # fmt: skip
    trail = await _trail(api, TENANT, 4)
    by_action: dict[str, list[dict]] = {}
    for e in trail:
        by_action.setdefault(e["action"], []).append(e)
    assert set(by_action) >= {"api_key.create", "audit_log.read", "audit_log.export",
                              "audit_log.legal_hold.set"}, [e["action"] for e in trail]  # fmt: skip
    created = by_action["api_key.create"][0]
    assert created["actor"] == {"type": "ACTOR_TYPE_API_KEY", "id": "admin",
                                "display_name": "admin token"}  # fmt: skip
    assert created["primary_resource"]["id"] == key["key_id"]
    polls = [e for e in by_action["audit_log.read"] if e["actor"]["id"] == key["key_id"]]
    assert len(polls) == 1, polls  # summarised
    meta = polls[0]["metadata"]
    assert meta["operation"] == "list" and meta["requests"] == 20 and meta["rows"] == 0
    assert meta["filters"] == {"severities": "SEVERITY_ERROR"}
    export = by_action["audit_log.export"][0]
    assert export["actor"]["id"] == key["key_id"] and export["metadata"]["completed"] is True
    assert by_action["audit_log.legal_hold.set"][0]["metadata"] == {"reason": "case 7"}
    # The trail is part of the verified log: chained and checkpointed like any event.
    r = await api.get("/v1/audit/verify", params={"tenant_id": TENANT}, headers=auth(ADMIN))
    report = await r.json()
    assert report["status"] in ("intact", "unverifiable"), report  # no checkpoint yet is ok
    assert report["first_break"] is None and report["events"] >= 4


async def test_another_tenants_reads_stay_in_its_own_log(stack) -> None:
    api = stack
    r = await api.get("/v1/audit/stats", headers=auth(ADMIN), params={"tenant_id": "acc-t2"})
    assert r.status == 200
    trail = await _trail(api, "acc-t2", 1)
    assert [e["metadata"]["operation"] for e in trail][:1] == ["stats"]
    assert all(e["tenant_id"] == "acc-t2" for e in trail)
    mine = await _trail(api, "acc-t3", 1)  # nothing was read there but this very check
    assert all(e["metadata"]["filters"].get("categories") == "CATEGORY_COMPLIANCE"
               for e in mine)  # fmt: skip
    assert json.dumps(mine).count("acc-t2") == 0
