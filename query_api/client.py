"""Python clients for the Audit Log Service (sync and asyncio) and a NATS publisher helper.

    from query_api.client import AuditClient
    client = AuditClient("http://127.0.0.1:8080", token="alk_...")
    event_id = client.write_event({"tenant_id": "acme", "action": "security.password_reset",
                                   "severity": "SEVERITY_SECURITY",
                                   "actor": {"id": "u-1", "type": "ACTOR_TYPE_USER"},
                                   "primary_resource": {"id": "u-1", "type": "user"}})
    for event in client.list_events(tenant_id="acme", severities=["SEVERITY_SECURITY"]):
        ...

One implementation serves both clients and the ``auditlog`` CLI: every operation is a
transport-free exchange (:class:`Request` out, :class:`Reply` in, with the retry policy),
driven by urllib in :class:`AuditClient` and by aiohttp in :class:`AsyncAuditClient`.
Retries (connection errors, 429, 5xx) back off exponentially, never below Retry-After,
and are safe: before the first attempt every event gets an id (a fresh UUID) unless it has
one, so a retried write names the same event and is stored once.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from schemas.ids import msg_id_for, tenant_subject

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
T = TypeVar("T")


class AuditApiError(Exception):
    """The service refused a request.

    Attributes:
        status: HTTP status; code, message, field: the service's error body.
    """

    def __init__(self, status: int, code: str, message: str, field: str = "") -> None:
        super().__init__(f"{status} {code}: {message}" + (f" ({field})" if field else ""))
        self.status, self.code, self.message, self.field = status, code, message, field


class ApiUnreachable(ConnectionError):
    """The service could not be reached (after the retries)."""


@dataclass(frozen=True)
class Request:
    """One HTTP request of an exchange."""

    method: str
    path: str
    params: list[tuple[str, str]]
    body: Any = None


@dataclass(frozen=True)
class Reply:
    """Its answer (``status`` 0: the connection failed, ``error`` says how)."""

    status: int
    body: bytes = b""
    retry_after: str | None = None
    error: str = ""


# An exchange yields a Request (and is sent its Reply) or a float (seconds to wait).
Exchange = Generator[Request | float, Reply | None, T]


def _with_id(event: dict[str, Any]) -> dict[str, Any]:
    if event.get("id"):
        return event
    return {**event, "id": str(uuid.uuid4())}


def _params(filters: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for k, v in filters.items():
        if v is None or v == "":
            continue
        for item in v if isinstance(v, list | tuple) else [v]:
            out.append((k, str(item).lower() if isinstance(item, bool) else str(item)))
    return out


def _backoff(attempt: int, retry_after: str | None = None) -> float:
    """Seconds before retry ``attempt``: exponential, capped, never below Retry-After."""
    delay = min(0.1 * 2**attempt, 5.0)
    if retry_after and retry_after.isdigit():
        delay = max(delay, min(float(retry_after), 60.0))
    return delay


def _error(status: int, body: bytes) -> AuditApiError:
    try:
        err = json.loads(body)["error"]
        return AuditApiError(status, err["code"], err["message"], err.get("field", ""))
    except (ValueError, KeyError, TypeError):
        return AuditApiError(status, "http_error", body[:200].decode(errors="replace"))


def call(method: str, path: str, retries: int, params: dict[str, Any] | None = None,
         body: Any = None) -> Exchange[Any]:  # fmt: skip
    """The exchange for one API call: its decoded JSON answer, retried as documented.

    Raises:
        AuditApiError: the service refused it (or kept failing).
        ApiUnreachable: no connection, after the retries.
    """
    request = Request(method, path, _params(params or {}), body)
    for attempt in range(retries + 1):
        reply = yield request
        assert reply is not None
        last = attempt == retries
        if reply.status == 0:
            if last:
                raise ApiUnreachable(reply.error)
        elif reply.status < 400:
            return json.loads(reply.body)
        elif reply.status not in RETRY_STATUSES or last:
            raise _error(reply.status, reply.body)
        yield _backoff(attempt, reply.retry_after)
    raise AssertionError("unreachable")


def _write_event(retries: int, event: dict[str, Any], wait: bool) -> Exchange[str]:
    answer = yield from call("POST", "/v1/audit/events", retries, {"wait": wait},
                             {"event": _with_id(event)})  # fmt: skip
    return str(answer["event_id"])


def _write_events(retries: int, events: list[dict[str, Any]], wait: bool) -> Exchange[Any]:
    return (yield from call("POST", "/v1/audit/events:batch", retries, {"wait": wait},
                            {"events": [_with_id(e) for e in events]}))  # fmt: skip


def _get_event(retries: int, event_id: str, tenant_id: str | None) -> Exchange[Any]:
    answer = yield from call("GET", f"/v1/audit/events/{event_id}", retries,
                             {"tenant_id": tenant_id})  # fmt: skip
    return answer["event"]


def _viewer_token(retries: int, tenant_id: str, ttl_s: int,
                  filters: dict[str, Any] | None) -> Exchange[Any]:  # fmt: skip
    body: dict[str, Any] = {"tenant_id": tenant_id, "ttl_s": ttl_s}
    if filters:
        body["filters"] = filters
    return (yield from call("POST", "/v1/viewer-tokens", retries, None, body))


def _page(retries: int, filters: dict[str, Any], token: str) -> Exchange[Any]:
    return (yield from call("GET", "/v1/audit/events", retries,
                            {**filters, "page_token": token}))  # fmt: skip


class AuditClient:
    """Synchronous client (standard library HTTP).

    Args:
        base_url: e.g. ``http://127.0.0.1:8080``.
        token: a tenant key (``alk_...``) or the admin token.
        retries: attempts after the first for retryable failures.
        timeout: seconds per request.
        ssl_context: for an ``https://`` URL: the CAs to trust and, for mutual TLS, the
            client certificate (default: the system's CAs).
    """

    def __init__(self, base_url: str, token: str, *, retries: int = 4, timeout: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.retries = retries
        self.timeout = timeout
        self.ssl_context = ssl_context

    def _send(self, req: Request) -> Reply:
        query = "?" + urllib.parse.urlencode(req.params) if req.params else ""
        data = json.dumps(req.body).encode() if req.body is not None else None
        http = urllib.request.Request(self.base_url + req.path + query, data=data,
                                      method=req.method)  # fmt: skip
        http.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            http.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(http, timeout=self.timeout,
                                        context=self.ssl_context) as resp:  # fmt: skip
                return Reply(resp.status, resp.read())
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, exc.read(), exc.headers.get("Retry-After"))
        except OSError as exc:
            return Reply(0, error=f"cannot reach {self.base_url}: {exc}")

    def run(self, exchange: Exchange[T]) -> T:
        """Drive an exchange over HTTP."""
        try:
            step = next(exchange)
            while True:
                if isinstance(step, Request):
                    step = exchange.send(self._send(step))
                else:
                    time.sleep(step)
                    step = next(exchange)
        except StopIteration as done:
            return done.value

    def call(self, method: str, path: str, params: dict[str, Any] | None = None,
             body: Any = None) -> Any:  # fmt: skip
        """Any API call: its decoded JSON answer."""
        return self.run(call(method, path, self.retries, params, body))

    def write_event(self, event: dict[str, Any], *, wait: bool = True) -> str:
        """Write one event; returns its id once committed (``wait=False``: once durable)."""
        return self.run(_write_event(self.retries, event, wait))

    def write_events(self, events: list[dict[str, Any]], *, wait: bool = True) -> dict[str, Any]:
        """Write a batch (≤ 1,000); returns ``{"event_ids": [...], "errors": [...]}``."""
        return self.run(_write_events(self.retries, events, wait))

    def get_event(self, event_id: str, tenant_id: str | None = None) -> dict[str, Any]:
        """One event."""
        return self.run(_get_event(self.retries, event_id, tenant_id))

    def create_viewer_token(self, tenant_id: str, *, ttl_s: int = 900,
                            filters: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        """Mint a read-only viewer token for ``tenant_id`` (``{"token", "expires_at",
        "filters", ...}``), narrowed to ``filters`` (``actor_id``, ``resource_id``,
        ``severities``...; the holder cannot widen them). Needs read scope or the admin."""
        return self.run(_viewer_token(self.retries, tenant_id, ttl_s, filters))

    def pages(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every page of matching events (``{"events": [...], "next_page_token": ...}``)."""
        token = ""
        while True:
            page = self.run(_page(self.retries, filters, token))
            yield page
            token = page["next_page_token"]
            if not token:
                return

    def list_events(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every matching event, following ``next_page_token`` (filters as the query API)."""
        for page in self.pages(**filters):
            yield from page["events"]


class AsyncAuditClient:
    """asyncio client (aiohttp); the same methods and arguments as :class:`AuditClient`."""

    def __init__(self, base_url: str, token: str, *, retries: int = 4, timeout: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=timeout),
            connector=aiohttp.TCPConnector(ssl=ssl_context or True),
        )

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._session.close()

    async def __aenter__(self) -> AsyncAuditClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _send(self, req: Request) -> Reply:
        try:
            async with self._session.request(req.method, self.base_url + req.path,
                                             params=req.params, json=req.body) as resp:  # fmt: skip
                return Reply(resp.status, await resp.read(), resp.headers.get("Retry-After"))
        except aiohttp.ClientConnectionError as exc:
            return Reply(0, error=f"cannot reach {self.base_url}: {exc}")

    async def run(self, exchange: Exchange[T]) -> T:
        """Drive an exchange over HTTP."""
        try:
            step = next(exchange)
            while True:
                if isinstance(step, Request):
                    step = exchange.send(await self._send(step))
                else:
                    await asyncio.sleep(step)
                    step = next(exchange)
        except StopIteration as done:
            return done.value

    async def call(self, method: str, path: str, params: dict[str, Any] | None = None,
                   body: Any = None) -> Any:  # fmt: skip
        """Any API call: its decoded JSON answer."""
        return await self.run(call(method, path, self.retries, params, body))

    async def write_event(self, event: dict[str, Any], *, wait: bool = True) -> str:
        """Write one event; returns its id once committed (``wait=False``: once durable)."""
        return await self.run(_write_event(self.retries, event, wait))

    async def write_events(self, events: list[dict[str, Any]], *,
                           wait: bool = True) -> dict[str, Any]:  # fmt: skip
        """Write a batch (≤ 1,000); returns ``{"event_ids": [...], "errors": [...]}``."""
        return await self.run(_write_events(self.retries, events, wait))

    async def get_event(self, event_id: str, tenant_id: str | None = None) -> dict[str, Any]:
        """One event."""
        return await self.run(_get_event(self.retries, event_id, tenant_id))

    async def create_viewer_token(
        self, tenant_id: str, *, ttl_s: int = 900, filters: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Mint a read-only viewer token (see :meth:`AuditClient.create_viewer_token`)."""
        return await self.run(_viewer_token(self.retries, tenant_id, ttl_s, filters))

    async def list_events(self, **filters: Any) -> AsyncIterator[dict[str, Any]]:
        """Every matching event, following ``next_page_token``."""
        token = ""
        while True:
            page = await self.run(_page(self.retries, filters, token))
            for event in page["events"]:
                yield event
            token = page["next_page_token"]
            if not token:
                return


async def publish_event(nc: Any, event: dict[str, Any], subject: str = "audit.events",
                        tenant_bound: bool = False) -> str:  # fmt: skip
    """Publish one event to JetStream; returns its id (one is added when it has none).

    ``Nats-Msg-Id`` is ``<tenant_id>:<id>``: JetStream's duplicate window is stream-wide,
    so two tenants' events with the same id never shadow each other.

    Args:
        nc: a connected ``nats.aio.client.Client``.
        subject: the event subject.
        tenant_bound: publish on ``<subject>.<tenant token>`` (what NATS permissions
            limited to one tenant allow).
    """
    event = _with_id(event)
    tenant = str(event.get("tenant_id", ""))
    if tenant_bound:
        subject = tenant_subject(subject, tenant)
    headers = {"Nats-Msg-Id": msg_id_for(tenant, event["id"])}
    await nc.jetstream().publish(subject, json.dumps(event).encode(), headers=headers)
    return str(event["id"])
