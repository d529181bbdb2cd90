"""Retention as reads see it, legal holds, and keys that expire (real PostgreSQL).

Dropping expired partitions, gap records across dropped months, the claim table and
read-access logging are not built yet (see README "Retention").
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.test_query_api import ADMIN, api, auth, make_event, store  # noqa: F401

pytestmark = pytest.mark.integration
DAY = 24 * 60  # make_event's offsets are minutes before now


async def _ids(api, path: str, tenant: str, token: str = ADMIN) -> tuple[int, list[str]]:  # noqa: F811
    r = await api.get(path, params={"tenant_id": tenant}, headers=auth(token))
    if r.status != 200:
        return r.status, []
    body = await r.json()
    return 200, [e["id"] for e in body.get("events", [])]


async def test_a_shorter_retention_hides_older_events_from_every_read_path(api) -> None:  # noqa: F811
    t = "ret-short"
    fresh, old = make_event(t, 10 * DAY), make_event(t, 60 * DAY)
    await store(api.pool, [fresh, old])
    assert len((await _ids(api, "/v1/audit/events", t))[1]) == 2  # default: 7 years
    r = await api.put(f"/v1/admin/tenants/{t}/retention", json={"retention_days": 30},
                      headers=auth(ADMIN))  # fmt: skip
    policy = await r.json()
    assert r.status == 200 and policy["retention_days"] == 30, policy
    assert policy["effective_retention_days"] == 30 and policy["legal_hold"] is None
    _, ids = await _ids(api, "/v1/audit/events", t)
    assert ids == [str(fresh.event.id)]  # right away, in this process
    old_id = str(old.event.id)
    r = await api.get(f"/v1/audit/events/{old_id}", params={"tenant_id": t},
                      headers=auth(ADMIN))  # fmt: skip
    assert r.status == 404
    since = (datetime.now(UTC) - timedelta(days=90)).isoformat()
    r = await api.get("/v1/audit/stats", headers=auth(ADMIN),
                      params={"tenant_id": t, "start_time": since})  # fmt: skip
    assert (await r.json())["total"] == 1
    r = await api.get("/v1/audit/export", params={"tenant_id": t}, headers=auth(ADMIN))
    assert (await r.read()).count(b"\n") == 1 and old_id.encode() not in await r.read()
    r = await api.get(f"/v1/audit/events/{old_id}/proof", params={"tenant_id": t},
                      headers=auth(ADMIN))  # fmt: skip
    assert r.status == 404
    # Back to the global retention: visible again (nothing was deleted).
    r = await api.put(f"/v1/admin/tenants/{t}/retention", json={"retention_days": None},
                      headers=auth(ADMIN))  # fmt: skip
    assert (await r.json())["effective_retention_days"] == 2557
    assert len((await _ids(api, "/v1/audit/events", t))[1]) == 2


async def test_a_legal_hold_shows_everything_until_it_is_released(api) -> None:  # noqa: F811
    t = "ret-hold"
    await store(api.pool, [make_event(t, 1 * DAY), make_event(t, 90 * DAY)])
    await api.put(f"/v1/admin/tenants/{t}/retention", json={"retention_days": 30},
                  headers=auth(ADMIN))  # fmt: skip
    assert len((await _ids(api, "/v1/audit/events", t))[1]) == 1
    r = await api.put(f"/v1/admin/tenants/{t}/legal-hold", json={"reason": "case 2026-17"},
                      headers=auth(ADMIN))  # fmt: skip
    hold = (await r.json())["legal_hold"]
    assert hold["reason"] == "case 2026-17" and hold["set_by"] == "admin" and hold["set_at"]
    assert len((await _ids(api, "/v1/audit/events", t))[1]) == 2
    r = await api.delete(f"/v1/admin/tenants/{t}/legal-hold", headers=auth(ADMIN))
    assert (await r.json())["legal_hold"] is None
    assert len((await _ids(api, "/v1/audit/events", t))[1]) == 1


async def test_policies_are_the_admins_and_are_validated(api) -> None:  # noqa: F811
    r = await api.post("/v1/admin/keys", json={"tenant_id": "ret-x", "scopes": ["read"]},
                       headers=auth(ADMIN))  # fmt: skip
    key = (await r.json())["token"]
    calls = (("get", "retention", None), ("put", "retention", {"retention_days": 1}),
             ("put", "legal-hold", {"reason": "x"}))  # fmt: skip
    for method, path, body in calls:
        r = await api.request(method, f"/v1/admin/tenants/ret-x/{path}", json=body,
                              headers=auth(key))  # fmt: skip
        assert r.status == 403
    for body in ({"retention_days": 0}, {"retention_days": 40000}, {"retention_days": "9"},
                 {"retention_days": 9.5}, {}, {"days": 9}):  # fmt: skip
        r = await api.put("/v1/admin/tenants/ret-x/retention", json=body, headers=auth(ADMIN))
        assert r.status == 400, body
    r = await api.put("/v1/admin/tenants/ret-x/retention", json={"retention_days": 9.0},
                      headers=auth(ADMIN))  # fmt: skip
    assert r.status == 200  # JSON Schema's integers include 9.0
    r = await api.put("/v1/admin/tenants/ret-x/legal-hold", json={"reason": ""},
                      headers=auth(ADMIN))  # fmt: skip
    assert r.status == 400


async def test_keys_expire_and_show_their_last_use(api) -> None:  # noqa: F811
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    body = {"tenant_id": "ret-k", "scopes": ["read"], "expires_at": soon}
    r = await api.post("/v1/admin/keys", headers=auth(ADMIN), json=body)
    created = await r.json()
    assert r.status == 201 and created["expires_at"] and created["last_used_at"] is None
    assert (await _ids(api, "/v1/audit/events", "ret-k", created["token"]))[0] == 200
    listed = {}
    for _ in range(50):  # the last use is written off the request's path
        r = await api.get("/v1/admin/keys", params={"tenant_id": "ret-k"}, headers=auth(ADMIN))
        listed = (await r.json())["keys"][0]
        if listed["last_used_at"]:
            break
        await asyncio.sleep(0.05)
    assert listed["last_used_at"] is not None
    await asyncio.sleep(2.2)
    assert (await _ids(api, "/v1/audit/events", "ret-k", created["token"]))[0] == 401
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    r = await api.post("/v1/admin/keys", headers=auth(ADMIN),
                       json={"tenant_id": "ret-k", "expires_at": past})  # fmt: skip
    assert r.status == 400 and (await r.json())["error"]["field"] == "expires_at"
