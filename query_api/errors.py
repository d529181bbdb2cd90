"""API errors: one JSON shape, ``{"error": {"code", "message", "field"}}``, for every failure."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncpg
import msgspec
from aiohttp import web

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered to the client.

    Attributes:
        status: HTTP status (400, 401, 403, 404, 413, 429, 503).
        code: machine-readable code (``invalid_argument``, ``unauthenticated``...).
        message: what is wrong, for a person.
        field: the request parameter or body field at fault ("" if none).
        headers: extra response headers (``Retry-After`` on 429).
    """

    def __init__(self, status: int, code: str, message: str, field: str = "",
                 headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}

    def response(self) -> web.Response:
        """The JSON response for this error."""
        body = {"error": {"code": self.code, "message": self.message, "field": self.field}}
        headers = dict(self.headers)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="auditlog"'
        return web.Response(
            body=msgspec.json.encode(body),
            status=self.status,
            content_type="application/json",
            headers=headers,
        )


def bad_request(message: str, field: str = "") -> ApiError:
    """400 invalid_argument."""
    return ApiError(400, "invalid_argument", message, field)


def not_found(what: str = "event") -> ApiError:
    """404 not_found (also for other tenants' data: existence is not revealed)."""
    return ApiError(404, "not_found", f"{what} not found")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the JSON error shape; never leak internals."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPRequestEntityTooLarge:
        return ApiError(413, "too_large", "request body too large").response()
    except web.HTTPException as exc:
        if exc.status == 404:
            return ApiError(404, "not_found", f"no route for {request.path}").response()
        if exc.status == 405:
            return ApiError(405, "method_not_allowed", f"{request.method} not allowed").response()
        raise
    except (OSError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
            asyncpg.TooManyConnectionsError) as exc:  # fmt: skip
        log.warning("storage unavailable: %r", exc)
        busy = "storage is unavailable or busy; retry later"
        resp = ApiError(503, "unavailable", busy).response()
        resp.headers["Retry-After"] = "1"
        return resp
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return ApiError(500, "internal", "internal error").response()
