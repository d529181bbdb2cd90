"""The viewer page: static files shipped in the package (``query_api/ui/``), served at
``/ui/`` with strict headers.

The page talks to this same API with a viewer token it reads from its URL fragment (never
sent to a server). Its Content-Security-Policy lets it load only its own files and call
only this origin; ``frame-ancestors`` comes from ``AUDIT_UI_FRAME_ANCESTORS`` (default
``'none'``: not embeddable until the operator names the embedding product's origin).
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from infra.settings import Settings
from query_api.errors import not_found
from query_api.state import SETTINGS

TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
         ".svg": "image/svg+xml"}  # fmt: skip
FILES: web.AppKey[dict[str, tuple[bytes, str]]] = web.AppKey("ui_files")


def csp(settings: Settings) -> str:
    """The page's Content-Security-Policy."""
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        f"frame-ancestors {settings.ui_frame_ancestors}"
    )


def load_files() -> dict[str, tuple[bytes, str]]:
    """Every file of the page, by name: (content, content type)."""
    out: dict[str, tuple[bytes, str]] = {}
    for item in (resources.files("query_api") / "ui").iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if item.is_file() and suffix in TYPES:
            out[item.name] = (item.read_bytes(), TYPES[suffix])
    return out


def headers(settings: Settings) -> dict[str, str]:
    """Headers of every file of the page."""
    return {
        "Content-Security-Policy": csp(settings),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Cache-Control": "no-cache",
    }


async def ui_file(request: web.Request) -> web.Response:
    """GET /ui/ (the page) and /ui/{name} (its scripts and styles)."""
    name = request.match_info.get("name") or "index.html"
    found = request.app[FILES].get(name)
    if found is None:
        raise not_found("file")
    body, ctype = found
    return web.Response(body=body, content_type=ctype, charset="utf-8",
                        headers=headers(request.app[SETTINGS]))  # fmt: skip


async def ui_redirect(request: web.Request) -> web.Response:
    """GET /ui: to /ui/ (relative, so a path prefix in front of the service is kept)."""
    raise web.HTTPMovedPermanently("ui/")


def add_ui_routes(app: web.Application) -> None:
    """Serve the viewer page at /ui/."""
    app[FILES] = load_files()
    app.router.add_get("/ui", ui_redirect)
    app.router.add_get("/ui/", ui_file)
    app.router.add_get("/ui/{name}", ui_file)
