"""Streams out, the admin operations (transport-neutral, like ``query_api.service``):
create, list, get, delete, resume and rotate a tenant's streams. Admin token only.

Creating a stream checks what can be checked without the network (``https://`` only, no
non-public address written as numbers or ``localhost``: ``pipeline.stream_rules``) and
answers at once; the destination is contacted only by delivery, which reports failures
in the stream's state. Secrets (a webhook's signing secrets, an HEC token, S3
credentials) are sealed (``pipeline.stream_secrets``) and never returned, except a
webhook signing secret the server made, once, in the answer that made it.

Every change is written into the tenant's own log (access trail): ``stream.create``,
``stream.delete``, ``stream.resume``, ``stream.rotate_secret``.
"""

from __future__ import annotations

import secrets as pysecrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from infra.settings import Settings
from pipeline import stream_store as store
from pipeline.stream_rules import AddressPolicy, DestinationError, check_url
from pipeline.stream_secrets import SecretBox, SecretsUnreadable, new_signing_secret
from query_api import contract
from query_api.access_log import AccessLog
from query_api.auth import Principal
from query_api.errors import ApiError, bad_request, not_found
from query_api.service import check_tenant


def _url(url: str) -> str:
    # A pattern's `$` also matches before one trailing newline (Python and JSON Schema
    # tools alike may produce one): the URL is what comes before it.
    return url[:-1] if url.endswith("\n") else url


def _destination(dest: Any, policy: AddressPolicy) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(kind, what is stored and shown, the secrets) of a requested destination.

    Raises:
        DestinationError: a refused URL or endpoint.
    """
    if isinstance(dest, contract.WebhookDestination):
        url = check_url(_url(dest.url), policy).url
        return "webhook", {"url": url}, {"signing": [{"secret": new_signing_secret(),
                                                      "until": None}]}  # fmt: skip
    if isinstance(dest, contract.SplunkHecDestination):
        url = check_url(_url(dest.url), policy).url
        return ("splunk_hec", {"url": url, "index": dest.index, "source_type": dest.source_type},
                {"token": dest.token})  # fmt: skip
    endpoint = None
    if dest.endpoint is not None:
        endpoint = check_url(_url(dest.endpoint), policy, "destination.endpoint").url
    shown = {"bucket": dest.bucket, "prefix": dest.prefix, "region": dest.region,
             "endpoint": endpoint, "access_key_id": dest.access_key_id}  # fmt: skip
    return "s3", shown, {"secret_access_key": dest.secret_access_key}


def _target(kind: str, d: dict[str, Any]) -> Any:
    if kind == "webhook":
        return contract.WebhookTarget(d["url"])
    if kind == "splunk_hec":
        return contract.SplunkHecTarget(d["url"], d.get("index"), d.get("source_type"))
    return contract.S3Target(d["bucket"], d.get("prefix", ""), d.get("region", "us-east-1"),
                             d.get("endpoint"), d["access_key_id"])  # fmt: skip


def view(s: store.Stream, lag: int) -> dict[str, Any]:
    """The fields of :class:`contract.Stream` for a stored stream."""
    return {
        "stream_id": s.stream_id, "tenant_id": s.tenant_id, "description": s.description,
        "destination": _target(s.kind, s.destination),
        "filters": msgspec.convert(s.filters, contract.StreamFilters), "state": s.state,
        "paused_reason": s.paused_reason, "paused_until": s.paused_until, "cursor": s.last_seq,
        "lag_events": lag, "last_delivered_at": s.last_delivered_at, "failures": s.failures,
        "last_error": s.last_error, "last_error_at": s.last_error_at,
        "secret_rotated_at": s.secret_rotated_at, "created_at": s.created_at,
    }  # fmt: skip


class StreamService:
    """A tenant's streams, for the admin token.

    Args:
        settings: ``AUDIT_STREAMS_ALLOW_PRIVATE``.
        pool: app-role pool.
        box: seals secrets (the service's stream key).
        access: where changes are logged (default: nowhere).
    """

    def __init__(self, settings: Settings, pool: asyncpg.Pool, box: SecretBox,
                 access: AccessLog | None = None) -> None:  # fmt: skip
        self.pool = pool
        self.box = box
        self.policy = AddressPolicy(settings.streams_allow_private)
        self.access = access

    @staticmethod
    def _admin(who: Principal, tenant_id: str) -> str:
        if not who.is_admin:
            raise ApiError(403, "permission_denied", "only the admin token manages streams")
        return check_tenant(tenant_id)

    def _log(self, who: Principal, tenant: str, action: str, stream_id: str,
             meta: dict[str, Any]) -> None:  # fmt: skip
        if self.access is not None:
            self.access.record(who, tenant, action, ("stream", stream_id), meta)

    async def _view(self, conn: asyncpg.Connection, s: store.Stream) -> dict[str, Any]:
        return view(s, await store.lag_events(conn, s.tenant_id, s.last_seq))

    async def create(self, who: Principal, tenant_id: str,
                     body: contract.StreamRequest) -> contract.NewStream:  # fmt: skip
        """A new stream of ``tenant_id``; a webhook's signing secret is in the answer only.

        Raises:
            ApiError: 400 for a refused destination (naming the field), 409 when the tenant
                has the most streams allowed.
        """
        tenant = self._admin(who, tenant_id)
        try:
            kind, shown, secrets = _destination(body.destination, self.policy)
        except DestinationError as exc:
            raise bad_request(str(exc), exc.field) from exc
        stream_id = "st_" + pysecrets.token_hex(8)
        filters = msgspec.to_builtins(body.filters) if body.filters else {}
        async with self.pool.acquire() as conn:
            sealed = self.box.seal(stream_id, secrets)
            row = await store.insert(conn, stream_id, tenant, kind, body.description, shown,
                                     filters, sealed, body.start)  # fmt: skip
            if row is None:
                raise ApiError(409, "too_many_streams", f"the tenant has {store.MAX_PER_TENANT}"
                               " streams already: delete one first")  # fmt: skip
            fields = await self._view(conn, row)
        self._log(who, tenant, "stream.create", stream_id, {"kind": kind, "start": body.start,
                                                             "filters": filters})  # fmt: skip
        signing = secrets["signing"][0]["secret"] if kind == "webhook" else None
        return contract.NewStream(**fields, signing_secret=signing)

    async def list(self, who: Principal, tenant_id: str) -> contract.StreamList:
        """The tenant's streams, oldest first."""
        tenant = self._admin(who, tenant_id)
        async with self.pool.acquire() as conn:
            rows = await store.list_for(conn, tenant)
            views = [contract.Stream(**await self._view(conn, s)) for s in rows]
        return contract.StreamList(views)

    async def get(self, who: Principal, tenant_id: str,
                  stream_id: str) -> contract.StreamDetail:  # fmt: skip
        """One stream with its latest attempts (404: none such in this tenant)."""
        tenant = self._admin(who, tenant_id)
        async with self.pool.acquire() as conn:
            s = await store.get(conn, tenant, stream_id)
            if s is None:
                raise not_found("stream")
            fields = await self._view(conn, s)
            tries = [contract.StreamAttempt(**dict(r)) for r in
                     await store.attempts(conn, stream_id)]  # fmt: skip
        return contract.StreamDetail(**fields, attempts=tries)

    async def delete(self, who: Principal, tenant_id: str, stream_id: str) -> contract.Stream:
        """Delete a stream (its delivery stops within a second); the stream as it was."""
        tenant = self._admin(who, tenant_id)
        async with self.pool.acquire() as conn:
            s = await store.delete(conn, tenant, stream_id)
            if s is None:
                raise not_found("stream")
            fields = await self._view(conn, s)
        self._log(who, tenant, "stream.delete", stream_id, {"cursor": s.last_seq})
        return contract.Stream(**fields)

    async def resume(self, who: Principal, tenant_id: str, stream_id: str) -> contract.Stream:
        """Make a paused stream deliver again at once (idempotent)."""
        tenant = self._admin(who, tenant_id)
        async with self.pool.acquire() as conn:
            before = await store.get(conn, tenant, stream_id)
            s = await store.resume(conn, tenant, stream_id)
            if s is None or before is None:
                raise not_found("stream")
            fields = await self._view(conn, s)
        self._log(who, tenant, "stream.resume", stream_id,
                  {"paused_reason": before.paused_reason})  # fmt: skip
        return contract.Stream(**fields)

    async def rotate(self, who: Principal, tenant_id: str, stream_id: str,
                     body: contract.RotateSecretRequest) -> contract.RotatedSecret:  # fmt: skip
        """A new secret: a webhook signs with the new and the previous one during
        ``overlap_s``; an HEC token or S3 key is replaced at once (given in ``secret``).

        Raises:
            ApiError: 404 no such stream; 400 an HEC or S3 stream without ``secret``.
        """
        tenant = self._admin(who, tenant_id)
        async with self.pool.acquire() as conn, conn.transaction():
            s = await store.get(conn, tenant, stream_id)
            if s is None:
                raise not_found("stream")
            sealed, shown, until = self._rotated(s, body)
            s = await store.set_secrets(conn, tenant, stream_id, sealed)
            assert s is not None
            fields = await self._view(conn, s)
        self._log(who, tenant, "stream.rotate_secret", stream_id, {
            "previous_valid_until": until.isoformat() if until else None})  # fmt: skip
        return contract.RotatedSecret(contract.Stream(**fields), shown, until)

    def _rotated(self, s: store.Stream, body: contract.RotateSecretRequest,
                 ) -> tuple[bytes, str | None, datetime | None]:  # fmt: skip
        if s.kind != "webhook":
            if body.secret is None:
                what = "HEC token" if s.kind == "splunk_hec" else "S3 secret access key"
                raise bad_request(f"give the new {what} in secret (the server cannot make one)",
                                  "secret")  # fmt: skip
            name = "token" if s.kind == "splunk_hec" else "secret_access_key"
            return self.box.seal(s.stream_id, {name: body.secret}), None, None
        try:
            current = self.box.open(s.stream_id, s.secrets)["signing"]
        except SecretsUnreadable:  # sealed under another key: start afresh, no overlap
            current = []
        now = time.time()
        new = body.secret or new_signing_secret()
        until = None
        keep: list[dict[str, Any]] = [{"secret": new, "until": None}]
        if body.overlap_s > 0:
            until = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=body.overlap_s)
            # The secret in use until now, and none older: one overlap at a time.
            keep += [{"secret": c["secret"], "until": until.timestamp()} for c in current[:1]
                     if c.get("until") is None or c["until"] > now]  # fmt: skip
        return self.box.seal(s.stream_id, {"signing": keep}), new, until
