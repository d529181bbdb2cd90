"""The read model over HTTP against real PostgreSQL (and NATS for the app's readiness)."""

from __future__ import annotations

import base64
import csv
import io
import json
import random
import uuid
from datetime import datetime, timedelta

import pytest

from tests.support.api import ADMIN, auth
from tests.support.service import NOW, make_event, serving_app, store

pytestmark = pytest.mark.integration


async def new_key(client, tenant: str, scopes=("read",)) -> str:
    r = await client.post("/v1/admin/keys", json={"tenant_id": tenant, "scopes": list(scopes)},
                          headers=auth(ADMIN))  # fmt: skip
    assert r.status == 201, await r.text()
    body = await r.json()
    assert body["key_id"] in body["token"]
    return body["token"]


async def get(client, path: str, token: str = ADMIN, **params):
    r = await client.get(path, params=params, headers=auth(token))
    return r.status, await r.json()


async def test_readme_curl_example(api) -> None:
    await store(api.pool, [
        make_event("XYZ", 1, severity="SEVERITY_SECURITY"),
        make_event("XYZ", 2, severity="SEVERITY_INFO"),
        make_event("XYZ", 3, severity="SEVERITY_SECURITY", category="CATEGORY_DATA"),
    ])  # fmt: skip
    # curl "http://audit-log/v1/audit/events?\
    # tenant_id=XYZ\
    # &severities=SEVERITY_SECURITY\
    # &categories=CATEGORY_AUTH\
    # &page_size=50"
    r = await api.get(
        "/v1/audit/events?tenant_id=XYZ&severities=SEVERITY_SECURITY"
        "&categories=CATEGORY_AUTH&page_size=50",
        headers=auth(ADMIN),
    )
    assert r.status == 200
    body = await r.json()
    assert body["next_page_token"] == ""
    assert [e["description"] for e in body["events"]] == ["event number 1"]
    ev = body["events"][0]
    assert ev["actor"] == {"type": "ACTOR_TYPE_USER", "id": "user-123", "display_name": "Jane Doe"}
    assert ev["metadata"] == {"ip": "192.0.2.10"} and ev["seq"] >= 1 and len(ev["hash"]) == 64
    assert ev["occurred_at"].endswith("Z")


async def test_every_filter_alone_and_combined(api) -> None:
    t = "acme"
    items = [
        make_event(t, 1, action="user.login", severity="SEVERITY_INFO"),
        make_event(t, 2, action="user.logout", category="CATEGORY_AUTH"),
        make_event(t, 3, action="document.updated", category="CATEGORY_DATA",
                   severity="SEVERITY_WARNING", actor={"type": "ACTOR_TYPE_SERVICE", "id": "svc-9",
                   "display_name": "Indexer"}, primary_resource={"type": "document", "id": "d-1",
                   "display_name": "Budget plan"}),
        make_event(t, 4, action="role.granted", category="CATEGORY_ACCESS_CONTROL",
                   related_resources=[{"type": "document", "id": "d-1"}],
                   description="granted editor on quarterly forecast number 4"),
        make_event(t, 60 * 48, action="user.login"),  # two days ago
        make_event("other", 1, action="user.login"),
    ]  # fmt: skip
    await store(api.pool, items)

    async def descs(**params) -> list[str]:
        status, body = await get(api, "/v1/audit/events", tenant_id=t, **params)
        assert status == 200, body
        return [e["description"].split()[-1] for e in body["events"]]

    assert await descs() == ["1", "2", "3", "4", "2880"]
    start = (NOW - timedelta(hours=24)).isoformat().replace("+00:00", "Z")
    assert await descs(start_time=start) == ["1", "2", "3", "4"]
    assert await descs(end_time=start) == ["2880"]
    assert await descs(severities="SEVERITY_WARNING") == ["3"]
    assert await descs(categories="CATEGORY_DATA,CATEGORY_ACCESS_CONTROL") == ["3", "4"]
    assert await descs(actions="user.login") == ["1", "2880"]
    assert await descs(actions="user.*") == ["1", "2", "2880"]
    assert await descs(actor_type="ACTOR_TYPE_SERVICE") == ["3"]
    assert await descs(actor_id="svc-9") == ["3"]
    assert await descs(resource_type="document") == ["3", "4"]
    assert await descs(resource_id="d-1") == ["3", "4"]  # primary or related
    assert await descs(resource_type="document", resource_id="d-1") == ["3", "4"]
    assert await descs(q="budget") == ["3"]  # display name
    assert await descs(q="quarterly forecast") == ["4"]  # description
    assert await descs(q="logout") == ["2"]  # action words
    assert await descs(order="asc") == ["2880", "4", "3", "2", "1"]
    assert await descs(actions="user.*", start_time=start, severities="SEVERITY_INFO") == ["1", "2"]
    r = await api.get("/v1/audit/events?tenant_id=acme&categories=CATEGORY_DATA"
                      "&categories=CATEGORY_AUTH", headers=auth(ADMIN))  # fmt: skip
    assert len((await r.json())["events"]) == 4  # repeated parameters: DATA + 3 AUTH


async def test_paging_10000_while_inserting(api) -> None:
    """Keyset pages under concurrent inserts: no duplicates, nothing that existed skipped,
    and every row inserted *ahead* of the cursor (older, in newest-first order) is still
    found. Inserts land between page fetches, spread over the whole paged range."""
    t = "pager"
    base = [make_event(t, i % 500) for i in range(10_000)]  # many identical occurred_at
    await store(api.pool, base)
    rng = random.Random(7)
    ahead: set[str] = set()  # inserted behind the cursor's position: must be paged
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        params = {"tenant_id": t, "page_size": "500"}
        if token:
            params["page_token"] = token
        status, body = await get(api, "/v1/audit/events", **params)
        assert status == 200, body
        seen.extend(e["id"] for e in body["events"])
        pages += 1
        token = body["next_page_token"]
        if not token:
            break
        last = body["events"][-1]
        cursor = (datetime.fromisoformat(last["occurred_at"].replace("Z", "+00:00")),
                  uuid.UUID(last["id"]))  # fmt: skip
        batch = [make_event(t, rng.randrange(-5, 505)) for _ in range(50)]
        await store(api.pool, batch)  # rows on both sides of the cursor
        for p in batch:
            key = (p.event.occurred_at, p.event.id)
            if key < cursor:  # newest first: what sorts below the cursor is still to come
                ahead.add(str(p.event.id))
    assert len(seen) == len(set(seen))  # no duplicates
    assert {str(p.event.id) for p in base} <= set(seen)  # no skips of what existed
    assert ahead and ahead <= set(seen)  # rows inserted ahead of the cursor are found
    assert pages >= 20


async def test_tenant_isolation_on_every_endpoint(api) -> None:
    a_items = [make_event("tenant-a", i) for i in range(3)]
    b_items = [make_event("tenant-b", i) for i in range(2)]
    await store(api.pool, a_items + b_items)
    key_a = await new_key(api, "tenant-a")
    key_b = await new_key(api, "tenant-b")
    b_id = str(b_items[0].event.id)

    status, body = await get(api, "/v1/audit/events", key_a)
    assert status == 200 and {e["tenant_id"] for e in body["events"]} == {"tenant-a"}
    assert await get(api, "/v1/audit/events", key_a, tenant_id="tenant-b") == (403, {
        "error": {"code": "permission_denied", "message": "this key cannot access that tenant",
                  "field": "tenant_id"}})  # fmt: skip
    # Same answer for a tenant that does not exist: nothing is revealed.
    assert (await get(api, "/v1/audit/events", key_a, tenant_id="nobody"))[0] == 403
    assert (await get(api, f"/v1/audit/events/{b_id}", key_a))[0] == 404
    assert (await get(api, f"/v1/audit/events/{uuid.uuid4()}", key_a))[0] == 404
    assert (await get(api, f"/v1/audit/events/{b_id}", key_b))[0] == 200
    assert (await get(api, "/v1/audit/stats", key_a, tenant_id="tenant-b"))[0] == 403
    status, body = await get(api, "/v1/audit/stats", key_a)
    assert status == 200 and body["total"] == 3
    r = await api.get("/v1/audit/export", params={"tenant_id": "tenant-b"}, headers=auth(key_a))
    assert r.status == 403
    r = await api.get("/v1/audit/export", headers=auth(key_a))
    lines = (await r.text()).splitlines()
    assert len(lines) == 3 and all(json.loads(x)["tenant_id"] == "tenant-a" for x in lines)
    # A page token of tenant B's query is refused for tenant A.
    await store(api.pool, [make_event("tenant-b", 10 + i) for i in range(5)])
    _, page = await get(api, "/v1/audit/events", key_b, page_size="2")
    assert page["next_page_token"]
    status, err = await get(api, "/v1/audit/events", key_a, page_token=page["next_page_token"],
                            page_size="2")  # fmt: skip
    assert status == 400 and err["error"]["field"] == "page_token"
    # Keys cannot manage keys.
    r = await api.post("/v1/admin/keys", json={"tenant_id": "tenant-a"}, headers=auth(key_a))
    assert r.status == 403


async def test_revoked_and_forged_tokens_fail(api) -> None:
    key = await new_key(api, "t-rev")
    assert (await get(api, "/v1/audit/events", key))[0] == 200
    key_id = key.split("_")[1]
    _, listing = await get(api, "/v1/admin/keys", tenant_id="t-rev")
    assert [k["key_id"] for k in listing["keys"]] == [key_id] and "token" not in listing["keys"][0]
    r = await api.delete(f"/v1/admin/keys/{key_id}", headers=auth(ADMIN))
    assert r.status == 200
    assert (await get(api, "/v1/audit/events", key))[0] == 401
    assert (await api.delete("/v1/admin/keys/nope", headers=auth(ADMIN))).status == 404
    for bad in ("", "Bearer", "Basic abc", f"Bearer {key}x", f"Bearer alk_{key_id}_{'A' * 43}",
                "Bearer " + ADMIN[:-1]):  # fmt: skip
        r = await api.get("/v1/audit/events", headers={"Authorization": bad} if bad else {})
        assert r.status == 401, bad
        assert (await r.json())["error"]["code"] == "unauthenticated"


async def test_page_tokens_are_bound_and_tamper_proof(api) -> None:
    await store(api.pool, [make_event("tok", i) for i in range(5)])
    _, page = await get(api, "/v1/audit/events", tenant_id="tok", page_size="2")
    token = page["next_page_token"]
    status, page2 = await get(api, "/v1/audit/events", tenant_id="tok", page_size="2",
                              page_token=token)  # fmt: skip
    assert status == 200 and len(page2["events"]) == 2
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[3] ^= 1
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    for params in (
        {"page_token": tampered},
        {"page_token": token[:10]},
        {"page_token": "not a token!"},
        {"page_token": token, "severities": "SEVERITY_INFO"},  # other filters
        {"page_token": token, "order": "asc"},
        {"page_token": token, "tenant_id": "other"},
    ):
        params.setdefault("tenant_id", "tok")
        status, err = await get(api, "/v1/audit/events", **params)
        assert status == 400 and err["error"]["field"] == "page_token", params


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("tenant_id=x' OR 1=1 --", "tenant_id"),
        ("tenant_id=acme&severities=SEVERITY_INFO;DROP TABLE audit.events", "severities"),
        ("tenant_id=acme&page_size=100000", "page_size"),
        ("tenant_id=acme&page_size=-1", "page_size"),
        ("tenant_id=acme&page_size=abc", "page_size"),
        ("tenant_id=acme&start_time=yesterday", "start_time"),
        ("tenant_id=acme&start_time=2026-01-01T00:00:00", "start_time"),
        ("tenant_id=acme&actor_id=", "actor_id"),  # empty is an error, not "any"
        ("tenant_id=acme&categories=CATEGORY_NOPE", "categories"),
        ("tenant_id=acme&actor_type=ROBOT", "actor_type"),
        ("tenant_id=acme&actions=%25%27", "actions"),
        ("tenant_id=acme&order=sideways", "order"),
        ("tenant_id=acme&bogus=1", "bogus"),
        ("tenant_id=acme&q=" + "x" * 300, "q"),
        ("tenant_id=acme&actor_id=%00", "actor_id"),
        ("tenant_id=acme&tenant_id=other", "tenant_id"),
        ("", "tenant_id"),
    ],
)  # fmt: skip
async def test_hostile_input_gets_a_clear_400(api, query: str, field: str) -> None:
    r = await api.get(f"/v1/audit/events?{query}", headers=auth(ADMIN))
    assert r.status == 400, await r.text()
    err = (await r.json())["error"]
    assert err["code"] == "invalid_argument" and err["field"] == field and err["message"]


async def test_an_empty_time_range_matches_nothing(api) -> None:
    """start_time at or after end_time is a valid query (the schema allows it) over an empty
    window: 200 with nothing, never a refusal."""
    await store(api.pool, [make_event("empty-range", i) for i in range(3)])
    window = {"tenant_id": "empty-range", "start_time": "2026-02-01T00:00:00Z"}
    for end in ("2026-02-01T00:00:00Z", "2026-01-01T00:00:00Z"):
        status, body = await get(api, "/v1/audit/events", **window, end_time=end)
        assert status == 200 and body == {"events": [], "next_page_token": ""}
        status, st = await get(api, "/v1/audit/stats", **window, end_time=end)
        assert status == 200 and st["total"] == 0 and st["histogram"]["points"] == []
    status, body = await get(api, "/v1/audit/events", tenant_id="empty-range")
    assert status == 200 and len(body["events"]) == 3  # the events are there


async def test_get_stats_and_export(api) -> None:
    items = [make_event("exp", i, severity="SEVERITY_ERROR" if i % 2 else "SEVERITY_INFO",
                        description=f'line "{i}", with comma\nand newline')
             for i in range(10)]  # fmt: skip
    await store(api.pool, items)
    eid = str(items[0].event.id)
    status, body = await get(api, f"/v1/audit/events/{eid}", tenant_id="exp")
    assert status == 200 and body["event"]["id"] == eid
    assert (await get(api, "/v1/audit/events/not-a-uuid", tenant_id="exp"))[0] == 400
    status, st = await get(api, "/v1/audit/stats", tenant_id="exp")
    assert status == 200 and st["total"] == 10
    assert st["by_severity"] == {"SEVERITY_ERROR": 5, "SEVERITY_INFO": 5}
    assert st["by_category"] == {"CATEGORY_AUTH": 10}
    assert sum(p["count"] for p in st["histogram"]["points"]) == 10
    r = await api.get("/v1/audit/export", params={"tenant_id": "exp", "format": "ndjson"},
                      headers=auth(ADMIN))  # fmt: skip
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/x-ndjson")
    docs = [json.loads(line) for line in (await r.text()).splitlines()]
    assert len(docs) == 10 and docs[0]["description"].startswith('line "0"')
    # The export's events are the list endpoint's events.
    _, page = await get(api, "/v1/audit/events", tenant_id="exp", page_size="10")

    def same(doc: dict) -> dict:
        return {k: (datetime.fromisoformat(v.replace("Z", "+00:00")) if k.endswith("_at") else v)
                for k, v in doc.items()}  # fmt: skip

    assert [same(d) for d in docs] == [same(d) for d in page["events"]]
    r = await api.get("/v1/audit/export", params={"tenant_id": "exp", "format": "csv",
                      "severities": "SEVERITY_ERROR"}, headers=auth(ADMIN))  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(await r.text())))
    assert len(rows) == 5 and rows[0]["severity"] == "SEVERITY_ERROR"
    assert "\n" in rows[0]["description"] and rows[0]["id"]


async def test_oversize_and_malformed_bodies(api) -> None:
    r = await api.post("/v1/admin/keys", data=b"x" * (6 * 1024 * 1024), headers=auth(ADMIN))
    assert r.status == 413 and (await r.json())["error"]["code"] == "too_large"
    for body in (b"{", b'{"tenant_id": 5}', b'{"tenant_id": "t", "scopes": ["root"]}',
                 b'{"tenant_id": "t", "extra": 1}'):  # fmt: skip
        r = await api.post("/v1/admin/keys", data=body, headers=auth(ADMIN))
        assert r.status == 400, body
        assert (await r.json())["error"]["code"] == "invalid_argument"
    r = await api.get("/v1/nowhere", headers=auth(ADMIN))
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"


async def test_tenant_keys_are_rate_limited_with_retry_after(db_url, settings_factory,
                                                             tmp_path) -> None:  # fmt: skip
    settings = settings_factory(db_url, admin_token=ADMIN, state_dir=str(tmp_path),
                                rate_limit_per_s=0.5, rate_limit_burst=3)  # fmt: skip
    async with serving_app(settings, pool_size=2) as client:
        key_a = await new_key(client, "rl-a")
        key_b = await new_key(client, "rl-b")
        for _ in range(3):
            status, _ = await get(client, "/v1/audit/events", key_a)
            assert status == 200
        r = await client.get("/v1/audit/events", headers=auth(key_a))
        body = await r.json()
        assert r.status == 429, body
        assert body["error"]["code"] == "rate_limited"
        assert int(r.headers["Retry-After"]) >= 1
        # Every endpoint shares the key's bucket; other keys and the admin are unaffected.
        r = await client.get("/v1/audit/stats", headers=auth(key_a))
        assert r.status == 429
        status, _ = await get(client, "/v1/audit/events", key_b)
        assert status == 200
        for _ in range(10):
            status, _ = await get(client, "/v1/audit/events", ADMIN, tenant_id="rl-a")
            assert status == 200
        # Connect answers the same refusal in its own vocabulary.
        r = await client.post("/audit.v1.AuditService/ListEvents", json={},
                              headers=auth(key_a))  # fmt: skip
        assert r.status == 429 and (await r.json())["code"] == "resource_exhausted"
