"""The audit service, transport-neutral: every read, write and key operation of the API.

REST (``rest``), Connect and gRPC (``rpc``) are thin adapters over :class:`AuditService`:
they turn their request into a :class:`Principal` (``authenticate``) plus plain values,
call one method, and encode the answer or the :class:`ApiError`. Dependencies are
explicit constructor arguments; nothing here knows aiohttp or grpc (an import-linter
contract keeps it so).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from infra.metrics import Metrics
from infra.settings import Settings
from ledger import proofs
from ledger.verify import LogReport, read_witness, verify_log
from query_api import contract, cursor, sql
from query_api.access_log import AccessLog, filters_of
from query_api.admission import Admission
from query_api.auth import SCOPES, Authenticator, Principal, hash_token, new_token
from query_api.errors import ApiError, bad_request, not_found
from query_api.export import ExportSink, Write, run_copy
from query_api.filters import (
    EXPORT_PARAMS,
    LIST_PARAMS,
    STATS_PARAMS,
    TIME_MIN,
    parse_event_id,
    parse_query,
    stats_bucket,
)
from query_api.policies import Policies
from query_api.viewer import encode as encode_viewer
from query_api.viewer import matches, narrow, new_claims, parse_fixed, public_filters
from query_api.writes import Writes
from schemas import tlog

Params = Mapping[str, str]  # query parameters (a MultiDict keeps repeated ones)


@dataclass(frozen=True)
class Page:
    """One page of events: their JSON texts, and the token of the next page ("" at the end)."""

    events: list[str]
    next_page_token: str


@dataclass(frozen=True)
class ExportPlan:
    """An authorised export: the tenant, format and the COPY query with its parameters."""

    tenant_id: str
    format: str
    query: str
    params: list[Any]
    filters: dict[str, str]  # as the access log records them


def check_tenant(tenant_id: str) -> str:
    """``tenant_id`` when it is one (400 naming it otherwise)."""
    if not contract.TENANT_RE.match(tenant_id):
        raise bad_request("tenant_id must match " + contract.TENANT_ID_PATTERN, "tenant_id")
    return tenant_id


def _size(params: Params, name: str) -> int:
    value = params.get(name, "")
    if not value.isdigit() or not 0 < int(value) <= contract.MAX_SIZE:
        raise bad_request(f"{name} must be a checkpoint size (a positive whole number)", name)
    return int(value)


def _whole_log(who: Principal) -> None:
    """Refuse reads that show the whole log (verify, consistency) to a narrowed viewer."""
    if who.fixed is not None:
        raise ApiError(403, "permission_denied", "this viewer token is limited to some events "
                       "and cannot read the whole log")  # fmt: skip


def only_params(params: Params, allowed: frozenset[str]) -> None:
    """Refuse any query parameter outside ``allowed`` (400 names it)."""
    for name in params:
        if name not in allowed:
            raise bad_request(f"unknown parameter {name[:64]!r}", name[:64])


class AuditService:
    """Reads, writes and API keys for authenticated principals.

    Args:
        settings: limits and timeouts (export pacing, write timeout).
        pool: asyncpg pool (API role; tenant reads run under row-level security).
        metrics: query counters.
        auth: checks bearer tokens.
        admission: bounds heavy reads (stats, exports) globally and per key.
        token_secret: signs page tokens.
        writes: the write path (JetStream publish, commit waits).
        verifier_key: the checkpoint signing key's verifier key (published).
        verifiers: the keys checkpoints are verified with.
        access: where reads and admin changes are logged (default: nowhere).
    """

    def __init__(self, *, settings: Settings, pool: asyncpg.Pool, metrics: Metrics,
                 auth: Authenticator, admission: Admission, token_secret: bytes,
                 writes: Writes, verifier_key: str = "",
                 verifiers: Sequence[tlog.Verifier] = (),
                 access: AccessLog | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.pool = pool
        self.metrics = metrics
        self.auth = auth
        self.admission = admission
        self.token_secret = token_secret
        self.writes = writes
        self.verifier_key = verifier_key
        self.verifiers = list(verifiers)
        self.access = access or AccessLog(writes.publish_own, enabled=False)
        self.policies = Policies(pool, settings.retention_days,
                                 bool(settings.retention_archive))  # fmt: skip

    @contextlib.asynccontextmanager
    async def _read(self, tenant_id: str) -> AsyncIterator[asyncpg.Connection]:
        """A read transaction of ``tenant_id`` that shows only what its retention allows."""
        visible = await self.policies.visible_from(tenant_id)
        async with sql.tenant_tx(self.pool, tenant_id, visible) as conn:
            yield conn

    async def authenticate(self, authorization: str) -> Principal:
        """The caller presenting an ``Authorization`` header value (401/429 as ApiError)."""
        return await self.auth.authenticate_header(authorization)

    # -- reads -----------------------------------------------------------------------------
    async def list_page(self, who: Principal, params: Params) -> Page:
        """One keyset page of ``who``'s tenant, newest first unless ``order=asc``."""
        who.require("read")
        q = narrow(parse_query(params, LIST_PARAMS), who.fixed)
        tenant = who.tenant_for(q.tenant_id)
        fp = cursor.fingerprint(q.fingerprint_parts(tenant))
        after = None
        if q.page_token and q.after_seq is not None:
            raise bad_request(
                "after_seq pages by itself: pass the last seq you saw, not a page_token",
                "page_token",
            )
        if q.page_token:
            try:
                after = cursor.decode(q.page_token, fp, self.token_secret)
            except cursor.TokenError as exc:
                raise bad_request(str(exc), "page_token") from exc
        async with self._read(tenant) as conn:
            rows = await sql.list_events(conn, q, tenant, after)
        more = len(rows) > q.page_size
        rows = rows[: q.page_size]
        token = ""
        if more and q.after_seq is None:
            last = rows[-1]
            us = (last["occurred_at"] - sql.EPOCH) // timedelta(microseconds=1)
            token = cursor.encode(cursor.Cursor(us, last["id"]), fp, self.token_secret)
        self.metrics.query_rows.labels("list").inc(len(rows))
        self.access.read(who, tenant, "list", params, len(rows))
        return Page([r["doc"] for r in rows], token)

    async def get_one(self, who: Principal, tenant_id: str | None, event_id: str) -> str:
        """One event's JSON text (404 also for another tenant's: existence is not revealed)."""
        who.require("read")
        eid = parse_event_id(event_id)
        tenant = who.tenant_for(tenant_id)
        async with self._read(tenant) as conn:
            doc = await sql.get_event(conn, tenant, eid)
        if doc is not None and who.fixed is not None and not matches(json.loads(doc), who.fixed):
            doc = None  # outside a viewer token's fixed filters: as if it did not exist
        self.access.read(who, tenant, "get", {"id": str(eid)}, int(doc is not None))
        if doc is None:
            raise not_found()
        return doc

    async def stats(self, who: Principal, params: Params) -> contract.Stats:
        """Counts by severity and category and a time histogram over [start, end)."""
        who.require("read")
        q = narrow(parse_query(params, STATS_PARAMS), who.fixed)
        tenant = who.tenant_for(q.tenant_id)
        end = q.end_time or datetime.now(UTC)
        start = q.start_time or max(end, TIME_MIN + timedelta(hours=24)) - timedelta(hours=24)
        bucket = stats_bucket(start, end)
        async with (self.admission.admit(who.key_id, "stats queries"),
                    self._read(tenant) as conn):  # fmt: skip
            result = await sql.stats(conn, q, tenant, start, end, bucket)
        self.access.read(who, tenant, "stats", params, result["total"])
        hist = result.pop("histogram")
        points = [contract.HistogramPoint(k, v) for k, v in sorted(hist.items())]
        histogram = contract.Histogram(int(bucket.total_seconds()), points)
        return contract.Stats(tenant_id=tenant, start_time=start, end_time=end,
                              histogram=histogram, **result)  # fmt: skip

    def export_plan(self, who: Principal, params: Params) -> ExportPlan:
        """Authorise and parse an export (errors before anything is streamed)."""
        who.require("read")
        q = narrow(parse_query(params, EXPORT_PARAMS), who.fixed)
        tenant = who.tenant_for(q.tenant_id)
        query, args = sql.export_query(q, tenant)
        return ExportPlan(tenant, q.format, query, args, filters_of(params))

    @contextlib.asynccontextmanager
    async def exporting(self, who: Principal, plan: ExportPlan) -> AsyncIterator[Export]:
        """Admission (429 when full) and a tenant-scoped snapshot for one export.

        Enter before the transport commits to a success status; then ``run`` streams.
        """
        async with (self.admission.admit(who.key_id, "exports"),
                    self._read(plan.tenant_id) as conn):  # fmt: skip
            export = Export(conn, plan, self.settings)
            try:
                yield export
            finally:  # logged one by one, finished or not
                done = {"filters": plan.filters, "format": plan.format, "rows": export.rows,
                        "completed": export.completed}  # fmt: skip
                self.access.record(who, plan.tenant_id, "audit_log.export",
                                   ("audit_log", plan.tenant_id), done)  # fmt: skip

    # -- verification --------------------------------------------------------------------
    async def _within(self, conn: asyncpg.Connection, who: Principal, tenant: str,
                      eid: Any) -> bool:  # fmt: skip
        """Is event ``eid`` within ``who``'s fixed filters (and there)?"""
        doc = await sql.get_event(conn, tenant, eid)
        return doc is not None and matches(json.loads(doc), who.fixed)

    async def public_keys(self) -> contract.PublicKeys:
        """The signing key in use and every key that has signed checkpoints (no auth)."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT key_id, name, verifier_key, created_at, retired_at"
                " FROM audit.signing_keys ORDER BY created_at, key_id"
            )
        return contract.PublicKeys(self.verifier_key,
                                   [contract.SigningKey(**r) for r in rows])  # fmt: skip

    async def verify(self, who: Principal, tenant_id: str | None) -> LogReport:
        """The tenant's log verified: chain, signed checkpoints, witness copy."""
        who.require("read")
        _whole_log(who)
        tenant = who.tenant_for(tenant_id)
        witness = await read_witness(self.writes.nc, self.settings, tenant)
        async with (self.admission.admit(who.key_id, "verifications"),
                    self.pool.acquire() as conn):  # fmt: skip
            report = await verify_log(conn, self.settings, tenant, self.verifiers, witness)
        self.access.read(who, tenant, "verify", {}, report.events)
        return report

    async def proof(self, who: Principal, tenant_id: str | None,
                    event_id: str) -> proofs.InclusionProof:  # fmt: skip
        """An event's inclusion proof under the latest signed checkpoint that covers it.

        Raises:
            ApiError: 404 when the event is unknown or not yet covered by a checkpoint.
        """
        who.require("read")
        eid = parse_event_id(event_id)
        tenant = who.tenant_for(tenant_id)
        async with self._read(tenant) as conn:
            found: proofs.InclusionProof | proofs.NoProof = proofs.NoProof.NOT_FOUND
            if who.fixed is None or await self._within(conn, who, tenant, eid):
                found = await proofs.inclusion(conn, tenant, eid)
        self.access.read(who, tenant, "proof", {"id": str(eid)},
                         int(not isinstance(found, proofs.NoProof)))  # fmt: skip
        if found is proofs.NoProof.NOT_SIGNED:
            why = (
                "the event is not covered by a signed checkpoint yet (checkpoints follow "
                "within AUDIT_CHECKPOINT_INTERVAL_S)"
            )
            raise ApiError(404, "not_found", why)
        if isinstance(found, proofs.NoProof):
            raise not_found()
        return found

    async def consistency(self, who: Principal, params: Params) -> proofs.ConsistencyProof:
        """The consistency proof between two of the tenant's checkpoint sizes."""
        who.require("read")
        _whole_log(who)
        only_params(params, contract.param_names(contract.ConsistencyParams) | {"from"})
        tenant = who.tenant_for(params.get("tenant_id"))
        old, new = _size(params, "from"), _size(params, "to")
        if old > new:  # valid sizes each (the schema's view), but no proof goes backwards
            raise ApiError(404, "not_found", "no consistency proof from a larger tree to a "
                           "smaller one: from must not be after to", "from")  # fmt: skip
        async with self._read(tenant) as conn:
            found = await proofs.consistency(conn, tenant, old, new)
        self.access.read(who, tenant, "consistency", {"from": str(old), "to": str(new)}, 0)
        if isinstance(found, proofs.NoProof):
            raise ApiError(404, "not_found", "no signed checkpoint at one of those sizes")
        return found

    # -- writes ----------------------------------------------------------------------------
    async def write_one(self, who: Principal, raw: bytes, idempotency_key: str | None,
                        wait: bool) -> tuple[str, bool]:  # fmt: skip
        """Publish one event (JSON bytes); with ``wait``, until committed.

        Returns:
            (event id, committed). Not committed means durable in JetStream only.
        """
        return await self.writes.write_one(who, raw, idempotency_key, wait)

    async def write_many(self, who: Principal, raws: list[bytes],
                         wait: bool) -> contract.BatchResult:  # fmt: skip
        """Per-event results for a batch: ``{event_ids, errors[, uncommitted_event_ids]}``."""
        return await self.writes.write_many(who, raws, wait)

    # -- API keys (admin only) -------------------------------------------------------------
    @staticmethod
    def _admin(who: Principal, what: str = "keys") -> None:
        if not who.is_admin:
            raise ApiError(403, "permission_denied", f"only the admin token manages {what}")

    async def create_key(self, who: Principal, tenant_id: str, scopes: list[str],
                         expires_at: datetime | None = None) -> contract.NewKey:  # fmt: skip
        """A new tenant key with its token (shown only in this answer)."""
        self._admin(who)
        wanted = sorted(set(scopes))
        if not set(wanted) <= set(SCOPES):
            raise bad_request("scopes may be 'read' and 'write'", "scopes")
        if expires_at is not None and (expires_at.tzinfo is None
                                       or expires_at <= datetime.now(UTC)):  # fmt: skip
            raise bad_request("expires_at must be a future time with an offset (or Z)",
                              "expires_at")  # fmt: skip
        key_id, token = new_token()
        async with self.pool.acquire() as conn:
            row = await sql.insert_key(conn, key_id, tenant_id, wanted, hash_token(token),
                                       expires_at)  # fmt: skip
        expiry = expires_at.isoformat() if expires_at else None
        self.access.record(who, tenant_id, "api_key.create", ("api_key", key_id),
                           {"scopes": wanted, "expires_at": expiry})  # fmt: skip
        return contract.NewKey(**row, token=token)

    async def create_viewer_token(
        self, who: Principal, body: contract.ViewerTokenRequest
    ) -> contract.ViewerToken:
        """A viewer token for ``body.tenant_id``: read-only, narrowed to ``body.filters``,
        until now + ``ttl_s`` (cut to AUDIT_VIEWER_TOKEN_MAX_TTL_S). Minted by the admin
        token or a key with read scope, never by a viewer token (it could outlive itself)."""
        who.require("read")
        if who.viewer:
            raise ApiError(403, "permission_denied", "a viewer token cannot mint viewer tokens")
        tenant = who.tenant_for(check_tenant(body.tenant_id))
        if self.auth.viewer_key is None:
            raise ApiError(503, "unavailable", "viewer tokens are not enabled on this server")
        fixed = parse_fixed(msgspec.to_builtins(body.filters) if body.filters else {})
        filters = public_filters(fixed)
        ttl = min(body.ttl_s, self.settings.viewer_token_max_ttl_s)
        expires = int(time.time()) + ttl
        claims = new_claims(tenant, filters, expires, who.key_id)
        token = encode_viewer(claims, self.auth.viewer_key)
        expires_at = datetime.fromtimestamp(expires, UTC)
        self.access.record(who, tenant, "viewer_token.create", ("audit_log", tenant), {
            "filters": msgspec.to_builtins(filters), "ttl_s": ttl,
            "expires_at": expires_at.isoformat().replace("+00:00", "Z"),
        })  # fmt: skip
        return contract.ViewerToken(token=token, tenant_id=tenant, expires_at=expires_at,
                                    filters=filters, key_id=f"{who.key_id}:viewer")  # fmt: skip

    # -- tenant policies (admin only) ------------------------------------------------------
    async def policy(self, who: Principal, tenant_id: str) -> contract.TenantPolicy:
        """A tenant's retention and legal hold."""
        self._admin(who, "tenant policies")
        return await self.policies.get(check_tenant(tenant_id))

    async def set_retention(self, who: Principal, tenant_id: str, days: int | None,
                            archive: bool | None = None) -> contract.TenantPolicy:  # fmt: skip
        """Override a tenant's retention and archiving (None: the global ones)."""
        self._admin(who, "tenant policies")
        policy = await self.policies.set_retention(check_tenant(tenant_id), days, archive)
        self.access.record(who, tenant_id, "audit_log.retention.update",
                           ("audit_log", tenant_id), {"retention_days": days,
                                                      "archive": archive})  # fmt: skip
        return policy

    async def set_hold(self, who: Principal, tenant_id: str,
                       reason: str | None) -> contract.TenantPolicy:  # fmt: skip
        """Place (``reason``) or release (None) a tenant's legal hold."""
        self._admin(who, "tenant policies")
        policy = await self.policies.set_hold(check_tenant(tenant_id), reason,
                                              who.key_id if reason else None)  # fmt: skip
        action = "audit_log.legal_hold.set" if reason else "audit_log.legal_hold.release"
        self.access.record(who, tenant_id, action, ("audit_log", tenant_id), {"reason": reason})
        return policy

    async def list_keys(self, who: Principal, tenant_id: str | None) -> contract.KeyList:
        """Keys without their tokens, of one tenant or all."""
        self._admin(who)
        async with self.pool.acquire() as conn:
            rows = await sql.list_keys(conn, tenant_id)
        return contract.KeyList([contract.Key(**r) for r in rows])

    async def revoke_key(self, who: Principal, key_id: str) -> contract.Key:
        """Revoke a key (idempotent); 404 when unknown. Returns the key as listed."""
        self._admin(who)
        async with self.pool.acquire() as conn:
            row = await sql.revoke_key(conn, key_id[:64])
        if row is None:
            raise not_found("key")
        self.auth.forget(key_id)
        self.access.record(who, row["tenant_id"], "api_key.revoke", ("api_key", row["key_id"]),
                           {})  # fmt: skip
        return contract.Key(**row)


class Export:
    """One admitted export over its snapshot connection."""

    def __init__(self, conn: asyncpg.Connection, plan: ExportPlan, settings: Settings) -> None:
        self.conn = conn
        self.plan = plan
        self.settings = settings
        self.rows = 0
        self.completed = False

    async def run(self, write: Write) -> None:
        """Stream every row through ``write``, paced at AUDIT_EXPORT_ROWS_PER_S.

        Raises:
            Exception: when PostgreSQL fails or idles past AUDIT_EXPORT_IDLE_TIMEOUT_S, or
                ``write`` fails; ``rows`` says how many were written.
        """
        sink = ExportSink(write, self.settings.export_rows_per_s)
        try:
            await run_copy(self.conn, self.plan.query, self.plan.params, self.plan.format, sink,
                           self.settings.export_idle_timeout_s)  # fmt: skip
            self.completed = True
        finally:
            self.rows = sink.rows
