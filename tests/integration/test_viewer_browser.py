"""The viewer page (``/ui/``) in a real headless Chromium (Debian's ``chromium``, driven by
Playwright) against the real HTTP app over real PostgreSQL: what it shows is what the API
answers, a token never reaches beyond its tenant and filters, hostile event content stays
text, and "verified" means checked in the browser against the key the embedder pinned.

Without /usr/bin/chromium (or the playwright package) the tests skip saying so, except
under CI=true, where they fail. Screenshots of the main views are saved under the test's
temporary directory, and under ``$AUDIT_TEST_ARTIFACTS`` when it is set.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import os
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from infra.settings import Settings
from infra.signing import load_signer
from ledger.checkpoints import Checkpointer
from query_api.state import SERVICE
from query_api.viewer import Claims, derive_key, encode
from schemas import tlog
from tests.support.api import ADMIN, auth
from tests.support.databases import create_database
from tests.support.service import make_event, serving_app, store

pytestmark = pytest.mark.integration
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
TIMEOUT_MS = 15_000

HOSTILE_DESC = '<script>window.__pwned = "desc"; alert("desc")</script>'
HOSTILE_NAME = "<img src=x onerror=\"window.__pwned='name'; alert(1)\">"
HOSTILE_META = {
    '<b onmouseover="alert(3)">key</b>': "javascript:alert(4)",
    "link": "javascript:window.__pwned='link'",
    "nested": {"<svg onload=alert(5)>": ["<iframe src=javascript:alert(6)>", 1, None]},
    "template": "{{constructor.constructor('alert(7)')()}}",
    "long": "x" * 3000,
}
NON_LATIN = "تم تسجيل الدخول بنجاح · 用户登录成功 · Вход выполнен · ログイン 🔐"


def _require_browser() -> None:
    """Skip (locally) or fail (CI=true) when no browser can be driven, saying why."""
    reason = ""
    if not CHROMIUM.exists():
        reason = f"no {CHROMIUM}: apt-get install chromium (what .ci/run does)"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            reason = "the playwright package is missing: pip install -e '.[dev]'"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the viewer's browser tests cannot run under CI: {reason}")
        pytest.skip(reason)


# -- the site: seeded tenants, signed checkpoints, the app and an embedding page ---------
def _seed_events() -> list[Any]:
    actors = [
        {"type": "ACTOR_TYPE_USER", "id": "u-1", "display_name": "Ann Lee"},
        {"type": "ACTOR_TYPE_USER", "id": "u-2", "display_name": "Bo Chen"},
        {"type": "ACTOR_TYPE_SERVICE", "id": "svc-9", "display_name": "Indexer"},
    ]
    severities = ["SEVERITY_INFO", "SEVERITY_WARNING", "SEVERITY_ERROR", "SEVERITY_SECURITY"]
    actions = ["user.login", "document.updated", "role.granted", "user.logout"]
    items = [make_event("acme", 30 * i, actor=actors[i % 3], severity=severities[i % 4],
                        action=actions[i % 4], category="CATEGORY_AUTH" if i % 2 else
                        "CATEGORY_DATA", primary_resource={"type": "document", "id": f"d-{i % 5}",
                        "display_name": f"Plan {i % 5}"}) for i in range(1, 41)]  # fmt: skip
    items += [
        make_event("acme", 7, action="role.changed", description="Role changed for Ann",
                   actor=actors[0], severity="SEVERITY_NOTICE",
                   changes={"old_value": {"role": "viewer", "email": "ann@example.com",
                                          "name": "Ann"},
                            "new_value": {"role": "admin", "email": "ann@example.com",
                                          "name": "Ann Lee", "team": "ops"},
                            "changed_fields": ["role", "name", "team"]}),
        make_event("acme", 3, action="user.login", description=HOSTILE_DESC,
                   actor={"type": "ACTOR_TYPE_USER", "id": "u-1", "display_name": HOSTILE_NAME},
                   primary_resource={"type": "user", "id": "u-1",
                                     "display_name": "<svg onload=alert(2)>"},
                   metadata=HOSTILE_META,
                   changes={"old_value": {"bio": '"><img src=x onerror=alert(8)>'},
                            "new_value": {"bio": "<script>alert(9)</script>"},
                            "changed_fields": ["bio"]}),
        make_event("acme", 4, action="user.login", description=NON_LATIN + " " + "y" * 600,
                   actor={"type": "ACTOR_TYPE_USER", "id": "u-1", "display_name": "محمد 王"}),
    ]  # fmt: skip
    items += [make_event("globex", i, description="globex secret plan") for i in range(1, 6)]
    items += [make_event("tamper", i, actor=actors[0]) for i in range(1, 4)]
    return items


EMBEDS = web.AppKey("embeds", dict)


async def _embedder() -> TestServer:
    """Pages of "another product" that frame the viewer: ``/embed/<n>`` frames the n-th
    URL registered in ``app[EMBEDS]`` (so no token is in the embedding page's own URL)."""

    async def page(request: web.Request) -> web.Response:
        src = request.app[EMBEDS][request.match_info["n"]]
        body = (f"<!doctype html><title>Host product</title><h1>Host product</h1>"
                f'<iframe id="viewer" title="Audit log" width="1000" height="700" '
                f'src="{html.escape(src)}"></iframe>')  # fmt: skip
        return web.Response(text=body, content_type="text/html")

    app = web.Application()
    app[EMBEDS] = {}
    app.router.add_get("/embed/{n}", page)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@dataclass
class Site:
    client: TestClient
    settings: Settings
    base: str  # http://127.0.0.1:PORT
    embedder: TestServer
    verifier_key: str
    shots: Path
    ids: dict[str, list[str]] = field(default_factory=dict)  # tenant -> ids, newest first

    def url(self, token: str, key: str | None = None) -> str:
        parts = {"token": token, **({"key": key} if key else {})}
        return f"{self.base}/ui/#" + "&".join(f"{k}={urllib.parse.quote(v, safe='')}"
                                               for k, v in parts.items())  # fmt: skip

    async def mint(self, tenant: str, **body: Any) -> str:
        r = await self.client.post("/v1/viewer-tokens", json={"tenant_id": tenant, **body},
                                   headers=auth())  # fmt: skip
        assert r.status == 201, await r.text()
        return (await r.json())["token"]

    async def api(self, path_qs: str, token: str) -> tuple[int, Any]:
        r = await self.client.get(path_qs, headers=auth(token))
        text = await r.text()
        return r.status, (json.loads(text) if r.content_type == "application/json" else text)

    async def superuser(self, sql: str, *args: Any) -> None:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            await conn.execute("SET session_replication_role = replica")  # triggers off
            await conn.execute(sql, *args)
        finally:
            await conn.close()


@pytest.fixture(scope="module")
async def site(pg_server_url, template_db, nats_url, tmp_path_factory) -> AsyncIterator[Site]:
    _require_browser()
    dsn = await create_database(pg_server_url, template_db)
    n = f"V{os.getpid()}"
    embedder = await _embedder()
    settings = Settings(
        state_dir=str(tmp_path_factory.mktemp("viewer-state")), database_url=dsn,
        nats_url=nats_url, admin_token=ADMIN, stream=f"AUDIT_{n}", subject=f"{n}.events",
        dlq_stream=f"AUDIT_DLQ_{n}", dlq_subject=f"{n}.dlq", commit_subject=f"{n}.committed",
        checkpoint_stream=f"AUDIT_CP_{n}", checkpoint_subject=f"{n}.checkpoints",
        access_log=False, stream_max_bytes=64 * 1024 * 1024, dlq_max_bytes=64 * 1024 * 1024,
        ui_frame_ancestors=f"http://localhost:{embedder.port}",
    )  # fmt: skip
    shots = Path(os.environ.get("AUDIT_TEST_ARTIFACTS") or tmp_path_factory.mktemp("shots"))
    shots = shots / "viewer" if os.environ.get("AUDIT_TEST_ARTIFACTS") else shots
    shots.mkdir(parents=True, exist_ok=True)
    async with serving_app(settings) as client:
        await store(client.pool, _seed_events())
        signer = load_signer(settings)
        checkpointer = Checkpointer(settings, client.pool, None, signer)
        await checkpointer.register_key()
        await checkpointer.cycle()
        base = str(client.make_url("")).rstrip("/")
        s = Site(client, settings, base, embedder, signer.verifier_key, shots)
        for tenant in ("acme", "globex", "tamper"):
            _, page = await s.api(f"/v1/audit/events?tenant_id={tenant}&page_size=1000", ADMIN)
            s.ids[tenant] = [e["id"] for e in page["events"]]
        yield s
    await embedder.close()
    admin = await asyncpg.connect(pg_server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="module")
async def browser(site):
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        await chromium.close()


@dataclass
class Watched:
    """A page and everything it did: requests, dialogs, console errors."""

    page: Any
    requests: list[Any] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def api_calls(self, path: str) -> list[str]:
        """Path and query of every GET the page made to ``path`` (exactly), in order."""
        out = []
        for r in self.requests:
            u = urllib.parse.urlsplit(r.url)
            if u.path == path and r.method == "GET":
                out.append(u.path + ("?" + u.query if u.query else ""))
        return out


@pytest.fixture
async def watched(browser, site) -> AsyncIterator[Any]:
    """Open pages (``await watched(url, **context options)``) that record what they do;
    afterwards: no request left the app's origin, none carried a token in its URL or a
    Referer, and no dialog opened."""
    opened: list[tuple[Any, Watched]] = []

    async def open_page(url: str | None = None, **options: Any) -> Watched:
        context = await browser.new_context(**{"viewport": {"width": 1280, "height": 900},
                                               **options})  # fmt: skip
        page = await context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        w = Watched(page)
        page.on("request", lambda r: w.requests.append(r))
        page.on("console", lambda m: m.type == "error" and w.errors.append(m.text))
        page.on("pageerror", lambda e: w.errors.append(str(e)))

        async def on_dialog(dialog: Any) -> None:
            w.dialogs.append(dialog.message)
            await dialog.dismiss()

        page.on("dialog", on_dialog)
        opened.append((context, w))
        if url:
            await page.goto(url)
        return w

    yield open_page
    port = site.embedder.port
    allowed = (site.base, f"http://localhost:{port}", f"http://127.0.0.1:{port}", "blob:")
    for context, w in opened:
        for r in w.requests:
            sent = r.url.split("#")[0]  # a fragment is never sent
            assert sent.startswith(allowed), f"a request left the origin: {r.url}"
            assert "alv_" not in sent and "alk_" not in sent, r.url
            referer = (await r.all_headers()).get("referer")
            if urllib.parse.urlsplit(sent).path.startswith("/v1/"):
                assert referer is None, (r.url, referer)  # the page sends none
            assert referer is None or ("alv_" not in referer and "#" not in referer), referer
        assert w.dialogs == [], w.dialogs
        await context.close()


async def ready(page: Any) -> None:
    await page.wait_for_selector("body[data-ready=true]")


async def settled(page: Any) -> None:
    """Wait for the detail's verification to finish."""
    await page.wait_for_selector("#verify-status:not([data-status=pending])")


async def shot(site: Site, page: Any, name: str, **kw: Any) -> None:
    await page.screenshot(path=str(site.shots / name), **kw)


async def rows(page: Any) -> list[str]:
    return await page.eval_on_selector_all("#events .row", "els => els.map(e => e.dataset.id)")


async def shown_equals_api(site: Site, w: Watched, token: str) -> list[str]:
    """The rows shown are exactly what the API answers to the list requests the page
    made since its last first page (a request without page_token), in order."""
    calls = w.api_calls("/v1/audit/events")
    first = max(i for i, c in enumerate(calls) if "page_token=" not in c)
    expected: list[str] = []
    for call in calls[first:]:
        status, page = await site.api(call, token)
        assert status == 200, page
        expected += [e["id"] for e in page["events"]]
    assert await rows(w.page) == expected
    return expected


async def apply(page: Any) -> None:
    """Apply the filters and wait for the list to reload."""
    async with page.expect_response(lambda r: urllib.parse.urlsplit(r.url).path
                                    == "/v1/audit/events"):  # fmt: skip
        await page.click("#apply")
    await loaded(page)


async def loaded(page: Any, timeout: float = 30.0) -> None:
    """Wait until the status line no longer says Loading. Polled from here: Playwright's
    ``wait_for_function`` polls by evaluating a string in the page, which the page's CSP
    (no ``unsafe-eval``) refuses whenever the first check is not already true."""
    deadline = time.monotonic() + timeout
    while (await page.text_content("#status") or "").startswith("Loading"):
        assert time.monotonic() < deadline, "the page still says Loading"
        await asyncio.sleep(0.02)


# -- the tests ---------------------------------------------------------------------------
async def test_filters_search_paging_and_detail_show_what_the_api_returns(site, watched) -> None:
    token = await site.mint("acme")
    w = await watched(site.url(token, site.verifier_key))
    page = w.page
    await ready(page)
    assert await page.text_content("#tenant") == "acme"
    first = await shown_equals_api(site, w, token)
    assert len(first) == 25 and set(first) <= set(site.ids["acme"])
    await page.wait_for_selector("#legend li")
    await shot(site, page, "list.png", full_page=True)
    # The chart's counts are the stats endpoint's.
    stats_call = w.api_calls("/v1/audit/stats")[0]
    _, stats = await site.api(stats_call, token)
    legend = await page.eval_on_selector_all("#legend li", "els => els.map(e => e.textContent)")
    assert sorted(legend) == sorted(f"{k.removeprefix('SEVERITY_')} {v}"
                                    for k, v in stats["by_severity"].items())  # fmt: skip
    assert await page.locator("#chart svg rect").count() > 0

    # Paging: "Load more" until the end shows every event, each once, as the API pages them.
    while await page.is_visible("#more"):
        async with page.expect_response(lambda r: "page_token=" in r.url):
            await page.click("#more")
        await loaded(page)
    every = await shown_equals_api(site, w, token)
    assert sorted(every) == sorted(site.ids["acme"]) and len(set(every)) == len(every)

    # Filters and search, one at a time and together.
    await page.select_option("#f-severities", "SEVERITY_ERROR")
    await apply(page)
    errors = await shown_equals_api(site, w, token)
    assert errors and len(errors) < len(every)
    await page.select_option("#f-severities", "")
    await page.fill("#f-q", "login")
    await apply(page)
    assert await shown_equals_api(site, w, token)
    await page.fill("#f-actor_id", "u-2")
    await page.select_option("#f-range", "86400")
    await apply(page)
    both = await shown_equals_api(site, w, token)
    last = w.api_calls("/v1/audit/events")[-1]
    assert "actor_id=u-2" in last and "q=login" in last and "start_time=" in last
    assert both
    await page.fill("#f-actions", "role.*")
    await page.fill("#f-actor_id", "")
    await page.fill("#f-q", "")
    await apply(page)
    roles = await shown_equals_api(site, w, token)
    assert roles and "actions=role.*" in urllib.parse.unquote(w.api_calls("/v1/audit/events")[-1])

    # The detail of the change-set event: every field as the API has it, the diff marked.
    changed = [i for i in roles if await page.text_content(f'.row[data-id="{i}"] .action')
               == "role.changed"]  # fmt: skip
    await page.click(f'.row[data-id="{changed[0]}"]')
    await settled(page)
    _, one = await site.api(f"/v1/audit/events/{changed[0]}", token)
    event = one["event"]
    dd = dict(zip(await page.eval_on_selector_all("#detail-body > dl:first-of-type dt",
                                                  "els => els.map(e => e.textContent)"),
                  await page.eval_on_selector_all("#detail-body > dl:first-of-type dd",
                                                  "els => els.map(e => e.textContent)"),
                  strict=True))  # fmt: skip
    assert dd["Event id"] == event["id"] and dd["Description"] == event["description"]
    assert dd["Action"] == event["action"] and dd["Hash"] == event["hash"]
    assert dd["Sequence"] == str(event["seq"])
    diff = await page.eval_on_selector_all(
        "#detail-body tr",
        """els => els.map(r =>
        [r.className, ...[...r.cells].map(c => c.textContent)])""",
    )
    marked = {r[2]: (r[3], r[4]) for r in diff if r[0] == "changed"}
    assert marked == {"name": ("Ann", "Ann Lee"), "role": ("viewer", "admin"),
                      "team": ("—", "ops")}  # fmt: skip
    assert ["", "", "email", "ann@example.com", "ann@example.com"] in diff
    assert await page.get_attribute("#verify-status", "data-status") == "verified"
    await shot(site, page, "detail-verified.png", full_page=True)

    # Keyboard: arrows move between rows, Enter opens, Escape closes and returns focus.
    await page.click("#close")
    await page.focus("#events .row")
    await page.keyboard.press("ArrowDown")
    second = await page.evaluate("document.activeElement.dataset.id")
    assert second == roles[1]
    await page.keyboard.press("Enter")
    await settled(page)
    assert await page.is_visible("#detail")
    await page.keyboard.press("Escape")
    assert await page.is_hidden("#detail")
    assert await page.evaluate("document.activeElement.dataset.id") == second

    # Export of the current filter, as the API exports it.
    for fmt in ("csv", "ndjson"):
        async with page.expect_download() as info:
            await page.click(f"#export-{fmt}")
        download = await info.value
        got = await asyncio.to_thread(Path(await download.path()).read_text)
        _, want = await site.api(w.api_calls("/v1/audit/export")[-1], token)
        assert got == want and got.count("role.") >= len(roles)
    assert not w.errors, w.errors


async def test_a_token_never_shows_more_than_its_tenant_and_filters(site, watched) -> None:
    acme = await site.mint("acme")
    w = await watched(site.url(acme))
    await ready(w.page)
    assert "globex" not in await w.page.text_content("body")
    globex_id = site.ids["globex"][0]
    probe = """async ([path, token]) => (await fetch(path, {headers: {Authorization:
               'Bearer ' + token}})).status"""
    assert await w.page.evaluate(probe, ["/v1/audit/events?tenant_id=globex", acme]) == 403
    assert await w.page.evaluate(probe, [f"/v1/audit/events/{globex_id}", acme]) == 404

    # Narrowed to one actor: the page shows theirs only, the field is fixed, and neither an
    # edited request, an edited fragment nor a direct call gets more.
    narrowed = await site.mint("acme", filters={"actor_id": "u-1"})
    w = await watched(site.url(narrowed))
    page = w.page
    await ready(page)
    shown = await shown_equals_api(site, w, narrowed)
    _, theirs = await site.api("/v1/audit/events?tenant_id=acme&actor_id=u-1&page_size=1000",
                               ADMIN)  # fmt: skip
    assert set(shown) <= {e["id"] for e in theirs["events"]} and shown
    assert await page.is_disabled("#f-actor_id")
    assert await page.input_value("#f-actor_id") == "u-1"
    assert "actor_id=u-1" in await page.text_content("#fixed")
    _, all_acme = await site.api("/v1/audit/events?tenant_id=acme&actor_id=u-2", ADMIN)
    other = all_acme["events"][0]["id"]
    assert await page.evaluate(probe, [f"/v1/audit/events/{other}", narrowed]) == 404
    assert await page.evaluate(probe, [f"/v1/audit/events/{other}/proof", narrowed]) == 404
    assert await page.evaluate(probe, ["/v1/audit/events?actor_id=u-2", narrowed]) == 403
    assert await page.evaluate(probe, ["/v1/audit/verify", narrowed]) == 403

    async def widen(route: Any) -> None:  # a request edited on its way out
        await route.continue_(url=route.request.url + "&actor_id=u-2")

    await page.route("**/v1/audit/events?*", widen)
    await apply(page)
    assert await rows(page) == []
    assert "limited to actor_id=u-1" in await page.text_content("#status")
    await page.unroute("**/v1/audit/events?*")

    # The fragment edited: the payload without its filter, the mac kept -> refused.
    body, mac = narrowed[4:].split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["f"] = {}
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    await page.evaluate("h => { location.hash = h }", f"token=alv_{forged_body}.{mac}")
    await page.wait_for_selector("#notice:not([hidden])")
    assert "altered" in await page.text_content("#notice")
    assert await page.is_hidden("#main")

    # An expired token shows nothing but that.
    key = derive_key(site.client.server.app[SERVICE].token_secret)
    expired = encode(Claims(1, "acme", {}, int(time.time()) - 5, "admin"), key)
    w = await watched(site.url(expired))
    await w.page.wait_for_selector("#notice:not([hidden])")
    assert "expired" in await w.page.text_content("#notice")
    assert await rows(w.page) == []
    await shot(site, w.page, "expired.png")


async def test_hostile_event_content_renders_as_text_and_runs_nothing(site, watched) -> None:
    token = await site.mint("acme", filters={"actor_id": "u-1"})
    w = await watched(site.url(token, site.verifier_key))
    page = w.page
    await ready(page)
    hostile = page.locator(".row", has_text="window.__pwned")
    await hostile.first.wait_for()
    assert await hostile.locator(".desc").text_content() == HOSTILE_DESC
    assert await hostile.locator(".who").text_content() == f"{HOSTILE_NAME} (u-1)"
    await hostile.click()
    await settled(page)
    body = page.locator("#detail-body")
    text = await body.text_content()
    for s in (HOSTILE_DESC, HOSTILE_NAME, "<svg onload=alert(2)>", "javascript:alert(4)",
              '<b onmouseover="alert(3)">key</b>', "<iframe src=javascript:alert(6)>",
              "{{constructor.constructor('alert(7)')()}}", '"><img src=x onerror=alert(8)>',
              "<script>alert(9)</script>"):  # fmt: skip
        assert s in text, s
    assert await page.get_attribute("#verify-status", "data-status") == "verified"
    await shot(site, page, "hostile-detail.png", full_page=True)
    # Nothing the events carried became an element: no images, frames, links or scripts.
    made = await page.evaluate("""() => ({
        img: document.querySelectorAll('img, svg:not(#chart svg), iframe, a, b').length,
        scripts: [...document.scripts].map(s => s.src.split('/').pop()),
        pwned: window.__pwned ?? null,
        wide: document.documentElement.scrollWidth - window.innerWidth })""")
    assert made == {"img": 0, "scripts": ["app.js"], "pwned": None, "wide": 0}, made
    await page.hover("#detail-body td")  # an onmouseover would fire here, were it markup
    # Long and non-Latin text stays readable: wrapped inside the detail, not cut.
    await page.click("#close")
    await page.locator(".row", has_text="用户登录成功").click()
    await settled(page)
    assert NON_LATIN in await body.text_content()
    box = await page.locator("#detail").bounding_box()
    assert box is not None and box["x"] + box["width"] <= 1280
    await shot(site, page, "non-latin-detail.png")
    await asyncio.sleep(0.2)
    assert await page.evaluate("window.__pwned ?? null") is None
    assert w.dialogs == [] and not w.errors, (w.dialogs, w.errors)


async def test_verified_only_against_the_pinned_key_and_tampering_is_named(site, watched) -> None:
    token = await site.mint("tamper")
    target = site.ids["tamper"][1]  # seq 2 of 3

    async def open_detail(key: str | None) -> tuple[Watched, str, dict[str, str]]:
        w = await watched(site.url(token, key))
        await ready(w.page)
        await w.page.click(f'.row[data-id="{target}"]')
        await settled(w.page)
        status = await w.page.get_attribute("#verify-status", "data-status")
        checks = dict(
            await w.page.eval_on_selector_all(
                "#verify-checks li", "els => els.map(e => [e.dataset.check, e.dataset.result])"
            )
        )
        return w, status, checks

    w, status, checks = await open_detail(site.verifier_key)
    assert status == "verified", await w.page.text_content("#verification")
    assert set(checks.values()) == {"pass"} and len(checks) == 5
    assert "pinned key" in await w.page.text_content("#trust")

    # No pinned key: never "verified"; the server's key is shown by its fingerprint.
    w, status, checks = await open_detail(None)
    text = await w.page.text_content("#verify-status")
    assert status == "unverified" and "unverified: no pinned key" in text
    assert checks["signature"] == "skipped"
    raw = base64.b64decode(site.verifier_key.split("+", 2)[2])[1:]
    fingerprint = hashlib.sha256(raw).hexdigest()
    shown_fp = (await w.page.text_content("#server-fingerprint")).replace(" ", "")
    assert shown_fp == fingerprint
    assert await w.page.text_content("#server-key") == tlog.Verifier.parse(site.verifier_key).key_id
    await shot(site, w.page, "unverified-no-key.png", full_page=True)

    # Another key (even with the same name): the signature check fails, never "verified".
    other = tlog.verifier_key(
        site.settings.log_origin, Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    )
    w, status, checks = await open_detail(other)
    assert status == "failed" and checks["signature"] == "fail"
    assert "signature" in await w.page.text_content("#verify-status")
    w, status, _ = await open_detail("not+a+key")
    assert status == "unverified"
    assert "not a valid verifier key" in await w.page.text_content("#trust")

    # A superuser edits the row: the page says which check failed.
    await site.superuser("UPDATE audit.events SET description = 'nothing happened'"
                         " WHERE tenant_id = 'tamper' AND id = $1", target)  # fmt: skip
    w, status, checks = await open_detail(site.verifier_key)
    assert status == "failed" and checks["chain link"] == "fail"
    assert checks["signature"] == "pass" and checks["event matches proof"] == "pass"
    assert "failed: chain link" in await w.page.text_content("#verify-status")
    await shot(site, w.page, "tampered-chain-link.png", full_page=True)
    # ... and re-hashes it too: the link holds, the signed tree does not.
    await site.superuser(
        "UPDATE audit.events SET hash = sha256(prev.hash || convert_to($2, 'UTF8'))"
        " FROM (SELECT hash FROM audit.events WHERE tenant_id = 'tamper' AND seq = 1) prev"
        " WHERE tenant_id = 'tamper' AND id = $1",
        target,
        await _canonical(site, target),
    )
    w, status, checks = await open_detail(site.verifier_key)
    assert status == "failed" and checks["chain link"] == "pass"
    assert checks["audit path"] == "fail"
    assert "failed: audit path" in await w.page.text_content("#verify-status")


async def _canonical(site: Site, event_id: str) -> str:
    """The event's canonical bytes as its row now holds them (the proof recomputes them)."""
    status, proof = await site.api(f"/v1/audit/events/{event_id}/proof?tenant_id=tamper", ADMIN)
    assert status == 200, proof
    return proof["canonical"]


async def test_framed_by_the_allowed_origin_only_and_usable_on_a_phone(site, watched) -> None:
    token = await site.mint("acme")
    site.embedder.app[EMBEDS]["1"] = site.url(token, site.verifier_key)
    port = site.embedder.port
    w = await watched(f"http://localhost:{port}/embed/1")
    frame = w.page.frame_locator("#viewer")
    await frame.locator("body[data-ready=true]").wait_for()
    assert await frame.locator("#events .row").count() == 25
    await shot(site, w.page, "embedded.png")
    # Another origin may not frame it (CSP frame-ancestors): the frame stays empty.
    blocked = await watched(f"http://127.0.0.1:{port}/embed/1")
    await blocked.page.wait_for_load_state("load")
    await asyncio.sleep(0.5)
    inner = [f for f in blocked.page.frames if f.url.startswith(site.base)]
    assert not inner or not await inner[0].query_selector("#events"), inner
    assert any("frame-ancestors" in e for e in blocked.errors), blocked.errors

    # Phone width: one column, no sideways scrolling, the detail in place of the list.
    phone = await watched(site.url(token, site.verifier_key),
                          viewport={"width": 390, "height": 844}, is_mobile=True,
                          has_touch=True, device_scale_factor=2)  # fmt: skip
    page = phone.page
    await ready(page)
    await page.wait_for_selector("#legend li")
    assert await page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    await shot(site, page, "phone-list.png")
    await page.locator("#events .row").nth(2).click()
    await settled(page)
    assert await page.is_hidden(".left")
    assert await page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    await shot(site, page, "phone-detail.png", full_page=True)
    assert not phone.errors, phone.errors
