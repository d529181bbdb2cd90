"""Viewer tokens over HTTP against real PostgreSQL: who may mint them, what they read (one
tenant, narrowed to their fixed filters, read-only), when they stop working, the access
trail, and the headers the viewer page is served with."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from datetime import datetime

import pytest
from click.testing import CliRunner

from auditlog.cli import cli
from infra.signing import load_signer
from ledger.checkpoints import Checkpointer
from query_api.client import AsyncAuditClient
from query_api.state import SERVICE, SETTINGS
from query_api.viewer import Claims, derive_key, encode
from tests.support.api import ADMIN, auth
from tests.support.service import make_event, serving_app, store

pytestmark = pytest.mark.integration


async def mint(client, token: str = ADMIN, status: int = 201, **body):
    r = await client.post("/v1/viewer-tokens", json=body, headers=auth(token))
    answer = await r.json()
    assert r.status == status, answer
    return answer


async def new_key(client, tenant: str, scopes=("read",)) -> dict:
    r = await client.post("/v1/admin/keys", json={"tenant_id": tenant, "scopes": list(scopes)},
                          headers=auth())  # fmt: skip
    assert r.status == 201, await r.text()
    return await r.json()


async def get(client, path: str, token: str, **params) -> tuple[int, dict]:
    r = await client.get(path, params=params, headers=auth(token))
    return r.status, await r.json()


async def seeded(client) -> dict[str, str]:
    """Two tenants' events, signed; returns acme's event ids by description."""
    items = [make_event("acme", i, actor={"type": "ACTOR_TYPE_USER", "id": f"u-{i % 2}"},
                        severity="SEVERITY_ERROR" if i % 3 == 0 else "SEVERITY_INFO")
             for i in range(1, 9)] + [make_event("globex", i) for i in range(1, 4)]  # fmt: skip
    await store(client.pool, items)
    settings = client.server.app[SETTINGS]
    checkpointer = Checkpointer(settings, client.pool, None, load_signer(settings))
    await checkpointer.register_key()
    await checkpointer.cycle()
    status, page = await get(client, "/v1/audit/events", ADMIN, tenant_id="acme")
    assert status == 200
    return {e["description"]: e["id"] for e in page["events"]}


async def test_who_may_mint_and_what_a_token_says(api) -> None:
    before = time.time()
    t = await mint(api, tenant_id="acme")
    assert t["token"].startswith("alv_") and t["tenant_id"] == "acme"
    assert t["key_id"] == "admin:viewer" and t["filters"] == {}
    expires = datetime.fromisoformat(t["expires_at"]).timestamp()
    assert before + 899 <= expires <= time.time() + 901  # default 15 minutes
    # Bounded: a longer ttl is cut to AUDIT_VIEWER_TOKEN_MAX_TTL_S (3600).
    long = await mint(api, tenant_id="acme", ttl_s=86400)
    assert datetime.fromisoformat(long["expires_at"]).timestamp() <= time.time() + 3601
    reader = (await new_key(api, "acme"))["token"]
    narrowed = await mint(api, reader, tenant_id="acme", filters={"actions": ["User.*"]})
    assert narrowed["filters"] == {"actions": ["user.*"]}
    assert narrowed["key_id"].endswith(":viewer") and narrowed["key_id"] != "admin:viewer"
    # A key of another tenant, a write-only key, and a viewer token itself may not.
    await mint(api, reader, 403, tenant_id="globex")
    writer = (await new_key(api, "acme", ("write",)))["token"]
    await mint(api, writer, 403, tenant_id="acme")
    await mint(api, t["token"], 403, tenant_id="acme")
    await mint(api, "nope", 401, tenant_id="acme")
    for bad in ({"tenant_id": "acme", "filters": {"severities": ["SEVERITY_NOPE"]}},
                {"tenant_id": "acme", "ttl_s": 5}, {"tenant_id": "acme", "extra": 1},
                {"tenant_id": "acme", "filters": {"tenant_id": "globex"}}):  # fmt: skip
        await mint(api, ADMIN, 400, **bad)


async def test_a_viewer_token_reads_one_tenant_and_writes_nothing(api) -> None:
    ids = await seeded(api)
    token = (await mint(api, tenant_id="acme"))["token"]
    status, page = await get(api, "/v1/audit/events", token)
    assert status == 200 and {e["tenant_id"] for e in page["events"]} == {"acme"}
    assert len(page["events"]) == 8
    assert (await get(api, "/v1/audit/events", token, tenant_id="globex"))[0] == 403
    globex = (await get(api, "/v1/audit/events", ADMIN, tenant_id="globex"))[1]["events"][0]
    assert (await get(api, f"/v1/audit/events/{globex['id']}", token))[0] == 404
    assert (await get(api, f"/v1/audit/events/{globex['id']}/proof", token))[0] == 404
    some = ids["event number 1"]
    assert (await get(api, f"/v1/audit/events/{some}/proof", token))[0] == 200
    assert (await get(api, "/v1/audit/stats", token))[1]["total"] == 8
    assert (await get(api, "/v1/audit/verify", token))[0] == 200
    r = await api.post("/v1/audit/events", json={"event": {}}, headers=auth(token))
    assert r.status in (400, 403)  # never accepted
    r = await api.post(
        "/v1/audit/events",
        headers=auth(token),
        json={
            "event": {
                "tenant_id": "acme",
                "action": "x.y",
                "actor": {"type": "ACTOR_TYPE_USER", "id": "u"},
            }
        },
    )
    assert r.status == 403  # read-only
    assert (await get(api, "/v1/admin/keys", token))[0] == 403


async def test_fixed_filters_narrow_every_read_and_cannot_be_widened(api) -> None:
    ids = await seeded(api)
    token = (await mint(api, tenant_id="acme", filters={"actor_id": "u-1"}))["token"]
    status, page = await get(api, "/v1/audit/events", token)
    mine = {e["id"] for e in page["events"]}
    assert status == 200 and {e["actor"]["id"] for e in page["events"]} == {"u-1"}
    assert len(mine) == 4
    assert (await get(api, "/v1/audit/events", token, actor_id="u-1"))[0] == 200
    status, body = await get(api, "/v1/audit/events", token, actor_id="u-0")
    assert (status, body["error"]["field"]) == (403, "actor_id")
    errors = (await get(api, "/v1/audit/events", token, severities="SEVERITY_ERROR"))[1]
    assert {e["severity"] for e in errors["events"]} <= {"SEVERITY_ERROR"}  # narrowed further
    assert (await get(api, "/v1/audit/stats", token))[1]["total"] == 4
    assert (await get(api, "/v1/audit/stats", token, actor_id="u-0"))[0] == 403
    theirs = ids["event number 2"]  # u-0's
    assert theirs not in mine
    assert (await get(api, f"/v1/audit/events/{theirs}", token))[0] == 404
    assert (await get(api, f"/v1/audit/events/{theirs}/proof", token))[0] == 404
    ours = ids["event number 1"]
    assert (await get(api, f"/v1/audit/events/{ours}/proof", token))[0] == 200
    # Reads of the whole log would show more than the filter: refused.
    assert (await get(api, "/v1/audit/verify", token))[0] == 403
    assert (await get(api, "/v1/audit/consistency", token, **{"from": "1", "to": "8"}))[0] == 403
    r = await api.get("/v1/audit/export", params={"format": "ndjson"}, headers=auth(token))
    lines = (await r.text()).splitlines()
    assert r.status == 200 and len(lines) == 4 and all('"u-1"' in line for line in lines)
    assert (await api.get("/v1/audit/export", params={"actor_id": "u-0"},
                          headers=auth(token))).status == 403  # fmt: skip
    # Page tokens follow the narrowed query, so paging cannot step outside it either.
    status, first = await get(api, "/v1/audit/events", token, page_size="3")
    status, second = await get(api, "/v1/audit/events", token, page_size="3",
                               page_token=first["next_page_token"])  # fmt: skip
    assert {e["id"] for e in first["events"] + second["events"]} == mine


async def test_forged_expired_and_orphaned_tokens_are_refused(api) -> None:
    await seeded(api)
    secret = api.server.app[SERVICE].token_secret
    key = derive_key(secret)
    past = Claims(1, "acme", {}, int(time.time()) - 1, "admin")
    status, body = await get(api, "/v1/audit/events", encode(past, key))
    assert status == 401 and "expired" in body["error"]["message"]
    valid = (await mint(api, tenant_id="acme", filters={"actor_id": "u-1"}))["token"]
    mac = valid.split(".")[1]
    widened = encode(Claims(1, "acme", {}, int(time.time()) + 600, "admin"), key)[4:].split(".")[0]
    assert (await get(api, "/v1/audit/events", f"alv_{widened}.{mac}"))[0] == 401
    assert (await get(api, "/v1/audit/events", encode(past, b"x" * 32)))[0] == 401
    # Signed with the page-token secret itself (not the derived key): refused.
    assert (await get(api, "/v1/audit/events", encode(
        Claims(1, "acme", {}, int(time.time()) + 60, "admin"), secret)))[0] == 401  # fmt: skip
    # Revoking the key that minted a token ends the token.
    reader = await new_key(api, "acme")
    token = (await mint(api, reader["token"], tenant_id="acme"))["token"]
    assert (await get(api, "/v1/audit/events", token))[0] == 200
    r = await api.delete(f"/v1/admin/keys/{reader['key_id']}", headers=auth())
    assert r.status == 200
    status, body = await get(api, "/v1/audit/events", token)
    assert status == 401 and "revoked" in body["error"]["message"]


@pytest.fixture
async def trail_api(db_url, settings_factory, tmp_path):
    settings = settings_factory(db_url, admin_token=ADMIN, state_dir=str(tmp_path),
                                access_log=True,
                                ui_frame_ancestors="https://app.example.com")  # fmt: skip
    async with serving_app(settings) as client:
        yield client


async def test_reads_are_in_the_access_trail_and_the_page_headers_are_strict(trail_api) -> None:
    api = trail_api
    await store(api.pool, [make_event("acme", 1)])
    reader = await new_key(api, "acme")
    token = (await mint(api, reader["token"], tenant_id="acme"))["token"]
    assert (await get(api, "/v1/audit/events", token))[0] == 200
    access = api.server.app[SERVICE].access
    readers = {(tenant, key, op) for tenant, key, op, _ in access.windows}
    assert ("acme", f"{reader['key_id']}:viewer", "list") in readers
    assert any(b'"viewer_token.create"' in e for e in access.ready)
    # The page: strict headers, the configured frame-ancestors, no sniffing, no referrer.
    r = await api.get("/ui/")
    body = await r.text()
    assert r.status == 200 and r.content_type == "text/html" and "app.js" in body
    csp = r.headers["Content-Security-Policy"]
    for part in ("default-src 'none'", "script-src 'self'", "style-src 'self'",
                 "connect-src 'self'", "base-uri 'none'", "form-action 'none'",
                 "frame-ancestors https://app.example.com"):  # fmt: skip
        assert part in csp, csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    for name, ctype in (("app.js", "text/javascript"), ("verify.js", "text/javascript"),
                        ("style.css", "text/css")):  # fmt: skip
        r = await api.get(f"/ui/{name}")
        assert (r.status, r.content_type) == (200, ctype)
        assert "frame-ancestors" in r.headers["Content-Security-Policy"]
    assert (await api.get("/ui/nope.js")).status == 404
    r = await api.get("/ui", allow_redirects=False)
    assert r.status == 301 and r.headers["Location"] == "ui/"
    assert (await api.get("/ui/%2e%2e%2fopenapi.json")).status == 404  # only its own files


async def test_the_cli_and_the_client_mint_viewer_tokens(api) -> None:
    base = str(api.make_url("")).rstrip("/")
    key = load_signer(api.server.app[SETTINGS]).verifier_key
    env = {"AUDIT_API_URL": base, "AUDIT_TOKEN": ADMIN}
    args = ["viewer-token", "acme", "--ttl", "120", "--actor-id", "u-1", "--severity",
            "SEVERITY_INFO", "--pin-key", key]  # fmt: skip
    done = await asyncio.to_thread(CliRunner().invoke, cli, args, env=env)
    assert done.exit_code == 0, done.output
    token, url = done.stdout.splitlines()[:2]
    assert token.startswith("alv_") and url.startswith(f"{base}/ui/#token=alv_")
    fragment = dict(p.split("=", 1) for p in url.split("#", 1)[1].split("&"))
    assert urllib.parse.unquote(fragment["token"]) == token
    assert urllib.parse.unquote(fragment["key"]) == key  # "+" and "/" escaped, not lost
    status, body = await get(api, "/v1/audit/events", token, actor_id="u-2")
    assert (status, body["error"]["field"]) == (403, "actor_id")
    done = await asyncio.to_thread(CliRunner().invoke, cli, ["viewer-token", "acme", "--pin-key",
                                                             "nope"], env=env)  # fmt: skip
    assert done.exit_code == 2 and "--pin-key" in done.output
    async with AsyncAuditClient(base, ADMIN, retries=0) as client:
        minted = await client.create_viewer_token("acme", ttl_s=60,
                                                  filters={"resource_id": "d-1"})  # fmt: skip
    assert minted["filters"] == {"resource_id": "d-1"} and minted["tenant_id"] == "acme"
