"""Python clients for the Audit Log Service (sync and asyncio) and a NATS publisher helper.

    from query_api.client import AuditClient
    client = AuditClient("http://127.0.0.1:8080", token="alk_...")
    event_id = client.write_event({"tenant_id": "acme", "action": "security.password_reset",
                                   "severity": "SEVERITY_SECURITY",
                                   "actor": {"id": "u-1", "type": "ACTOR_TYPE_USER"},
                                   "primary_resource": {"id": "u-1", "type": "user"}})
    for event in client.list_events(tenant_id="acme", severities=["SEVERITY_SECURITY"]):
        ...

Retries (connection errors, 429, 5xx) back off exponentially and are safe: before the
first attempt every event gets an id (a fresh UUID) unless it has one, so a retried write
names the same event and is stored once.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp

from schemas.ids import msg_id_for, tenant_subject

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class AuditApiError(Exception):
    """The service refused a request.

    Attributes:
        status: HTTP status; code, message, field: the service's error body.
    """

    def __init__(self, status: int, code: str, message: str, field: str = "") -> None:
        super().__init__(f"{status} {code}: {message}" + (f" ({field})" if field else ""))
        self.status, self.code, self.message, self.field = status, code, message, field


def _with_id(event: dict[str, Any]) -> dict[str, Any]:
    if event.get("id"):
        return event
    return {**event, "id": str(uuid.uuid4())}


def _params(filters: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for k, v in filters.items():
        if v is None:
            continue
        for item in v if isinstance(v, list | tuple) else [v]:
            out.append((k, str(item)))
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


class AuditClient:
    """Synchronous client (standard library HTTP).

    Args:
        base_url: e.g. ``http://127.0.0.1:8080``.
        token: a tenant key (``alk_...``) or the admin token.
        retries: attempts after the first for retryable failures.
        timeout: seconds per request.
    """

    def __init__(self, base_url: str, token: str, *, retries: int = 4,
                 timeout: float = 30.0) -> None:  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.retries = retries
        self.timeout = timeout

    def _request(self, method: str, path: str, params: list[tuple[str, str]] | None = None,
                 body: Any = None) -> Any:  # fmt: skip
        url = self.base_url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(url, data=data, method=method)
            req.add_header("Authorization", f"Bearer {self.token}")
            req.add_header("Content-Type", "application/json")
            retry_after = None
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                err = _error(exc.code, exc.read())
                if exc.code not in RETRY_STATUSES or attempt == self.retries:
                    raise err from None
                retry_after = exc.headers.get("Retry-After")
            except OSError:
                if attempt == self.retries:
                    raise
            time.sleep(_backoff(attempt, retry_after))
        raise AssertionError("unreachable")

    def write_event(self, event: dict[str, Any], *, wait: bool = True) -> str:
        """Write one event; returns its id once committed (``wait=False``: once durable)."""
        params = [("wait", str(wait).lower())]
        answer = self._request("POST", "/v1/audit/events", params, {"event": _with_id(event)})
        return str(answer["event_id"])

    def write_events(self, events: list[dict[str, Any]], *, wait: bool = True) -> dict[str, Any]:
        """Write a batch (≤ 1,000); returns ``{"event_ids": [...], "errors": [...]}``."""
        return self._request("POST", "/v1/audit/events:batch", [("wait", str(wait).lower())],
                             {"events": [_with_id(e) for e in events]})  # fmt: skip

    def get_event(self, event_id: str, tenant_id: str | None = None) -> dict[str, Any]:
        """One event."""
        params = [("tenant_id", tenant_id)] if tenant_id else None
        return self._request("GET", f"/v1/audit/events/{event_id}", params)["event"]

    def list_events(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every matching event, following ``next_page_token`` (filters as the query API)."""
        token = ""
        while True:
            params = _params({**filters, "page_token": token or None})
            page = self._request("GET", "/v1/audit/events", params)
            yield from page["events"]
            token = page["next_page_token"]
            if not token:
                return


class AsyncAuditClient:
    """asyncio client (aiohttp); the same methods as :class:`AuditClient`."""

    def __init__(self, base_url: str, token: str, *, retries: int = 4,
                 timeout: float = 30.0) -> None:  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._session.close()

    async def __aenter__(self) -> AsyncAuditClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _request(self, method: str, path: str, params: list[tuple[str, str]] | None = None,
                       body: Any = None) -> Any:  # fmt: skip
        for attempt in range(self.retries + 1):
            retry_after = None
            try:
                async with self._session.request(method, self.base_url + path, params=params,
                                                 json=body) as resp:  # fmt: skip
                    data = await resp.read()
                    if resp.status < 400:
                        return json.loads(data)
                    if resp.status not in RETRY_STATUSES or attempt == self.retries:
                        raise _error(resp.status, data)
                    retry_after = resp.headers.get("Retry-After")
            except aiohttp.ClientConnectionError:
                if attempt == self.retries:
                    raise
            await asyncio.sleep(_backoff(attempt, retry_after))
        raise AssertionError("unreachable")

    async def write_event(self, event: dict[str, Any], *, wait: bool = True) -> str:
        """Write one event; returns its id once committed (``wait=False``: once durable)."""
        answer = await self._request("POST", "/v1/audit/events", [("wait", str(wait).lower())],
                                     {"event": _with_id(event)})  # fmt: skip
        return str(answer["event_id"])

    async def write_events(self, events: list[dict[str, Any]], *,
                           wait: bool = True) -> dict[str, Any]:  # fmt: skip
        """Write a batch (≤ 1,000); returns ``{"event_ids": [...], "errors": [...]}``."""
        return await self._request("POST", "/v1/audit/events:batch",
                                   [("wait", str(wait).lower())],
                                   {"events": [_with_id(e) for e in events]})  # fmt: skip

    async def get_event(self, event_id: str, tenant_id: str | None = None) -> dict[str, Any]:
        """One event."""
        params = [("tenant_id", tenant_id)] if tenant_id else None
        answer = await self._request("GET", f"/v1/audit/events/{event_id}", params)
        return answer["event"]

    async def list_events(self, **filters: Any) -> AsyncIterator[dict[str, Any]]:
        """Every matching event, following ``next_page_token``."""
        token = ""
        while True:
            params = _params({**filters, "page_token": token or None})
            page = await self._request("GET", "/v1/audit/events", params)
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
