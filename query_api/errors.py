"""API errors, transport-neutral: REST answers them as ``{"error": {"code", "message",
"field"}}`` with their HTTP status; Connect and gRPC map the status to their codes."""

from __future__ import annotations


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


def bad_request(message: str, field: str = "") -> ApiError:
    """400 invalid_argument."""
    return ApiError(400, "invalid_argument", message, field)


def not_found(what: str = "event") -> ApiError:
    """404 not_found (also for other tenants' data: existence is not revealed)."""
    return ApiError(404, "not_found", f"{what} not found")
