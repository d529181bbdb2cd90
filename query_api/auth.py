"""Bearer-token authentication: the admin token, tenant API keys and viewer tokens.

Tenant keys look like ``alk_<key_id>_<secret>``. Only SHA-256 of the whole token is
stored; comparisons are constant-time. A verified key is cached for a few seconds
(revocation in this process takes effect at once; other replicas see it within
``CACHE_SECONDS``). Viewer tokens (``alv_...``, ``query_api.viewer``) are stateless and
read-only; one is valid until its expiry while the key that minted it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from query_api import sql
from query_api.errors import ApiError
from query_api.filters import EventQuery
from query_api.ratelimit import RateLimited, RateLimiter, retry_after_header
from query_api.viewer import PREFIX as VIEWER_PREFIX
from query_api.viewer import TokenError, decode, derive_key, parse_fixed

CACHE_SECONDS = 5.0
TOUCH_SECONDS = 60.0  # last_used_at is written at most this often per key
_TOKEN_RE = re.compile(r"^alk_([0-9a-f]{16})_[A-Za-z0-9_-]{20,100}$")
SCOPES = ("read", "write")


@dataclass(frozen=True)
class Principal:
    """Who is calling.

    Attributes:
        tenant_id: the key's tenant; None for the admin (who must name a tenant).
        scopes: what the key may do.
        key_id: the key's id ("admin" for the admin token; ``<minting key>:viewer`` for a
            viewer token).
        viewer: a viewer token (read-only; cannot mint viewer tokens).
        fixed: a viewer token's fixed filters, which every read is narrowed to (None: the
            whole tenant).
    """

    tenant_id: str | None
    scopes: frozenset[str]
    key_id: str
    viewer: bool = False
    fixed: EventQuery | None = None

    @property
    def is_admin(self) -> bool:
        """True for the bootstrap admin token."""
        return self.tenant_id is None

    def tenant_for(self, requested: str | None) -> str:
        """The tenant a request acts on.

        Raises:
            ApiError: 400 when the admin names none; 403 when a key names another tenant
                (the same answer whether that tenant exists or not).
        """
        if self.is_admin:
            if not requested:
                raise ApiError(400, "invalid_argument", "tenant_id is required", "tenant_id")
            return requested
        assert self.tenant_id is not None
        if requested and requested != self.tenant_id:
            raise ApiError(403, "permission_denied", "this key cannot access that tenant",
                           "tenant_id")  # fmt: skip
        return self.tenant_id

    def require(self, scope: str) -> None:
        """Raises 403 unless the principal has ``scope`` (the admin has all)."""
        if not self.is_admin and scope not in self.scopes:
            raise ApiError(403, "permission_denied", f"this key lacks the {scope!r} scope")


def hash_token(token: str) -> bytes:
    """What is stored for a token."""
    return hashlib.sha256(token.encode()).digest()


def new_token() -> tuple[str, str]:
    """A fresh (key_id, token)."""
    key_id = secrets.token_hex(8)
    return key_id, f"alk_{key_id}_{secrets.token_urlsafe(32)}"


class Authenticator:
    """Checks bearer tokens against the admin token and ``audit.api_keys``."""

    def __init__(self, pool: asyncpg.Pool, admin_tokens: Callable[[], tuple[bytes, ...]],
                 limiter: RateLimiter | None = None, token_secret: bytes | None = None,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        """``admin_tokens`` returns the admin tokens valid now (several during a rotation);
        ``token_secret`` (the page-token secret) enables viewer tokens; ``clock`` is wall
        time in seconds (viewer-token expiry)."""
        self.pool = pool
        self.viewer_key = derive_key(token_secret) if token_secret is not None else None
        self.clock = clock
        self._admin_tokens = admin_tokens
        self._cache: dict[str, tuple[float, Principal, bytes]] = {}
        self._limiter = limiter
        self._touched: dict[str, float] = {}
        self._tasks: set[asyncio.Future[None]] = set()

    def _admit(self, principal: Principal) -> Principal:
        """Charge ``principal``'s rate limit (tenant keys only).

        Raises:
            ApiError: 429 rate_limited with ``Retry-After`` when its bucket is empty.
        """
        if self._limiter is not None:
            try:
                self._limiter.take(principal.key_id)
            except RateLimited as exc:
                wait = {"Retry-After": retry_after_header(exc)}
                raise ApiError(429, "rate_limited", f"too many requests for this key; {exc}",
                               headers=wait) from None  # fmt: skip
        return principal

    def _touch(self, key_id: str, now: float) -> None:
        """Record the key's use, at most once a minute per key, off the request's path."""
        if now - self._touched.get(key_id, -TOUCH_SECONDS) < TOUCH_SECONDS:
            return
        self._touched[key_id] = now
        task = asyncio.ensure_future(self._write_touch(key_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write_touch(self, key_id: str) -> None:
        with contextlib.suppress(Exception):  # best effort: never fails a request
            async with self.pool.acquire() as conn:
                await sql.touch_key(conn, key_id)

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (after revocation)."""
        self._cache.pop(key_id, None)

    async def authenticate_header(self, header: str) -> Principal:
        """The caller presenting ``header`` (an ``Authorization`` value, any protocol).

        Raises:
            ApiError: 401 for a missing, malformed, unknown, revoked or forged token;
                429 when a tenant key exceeds its rate limit.
        """
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "unauthenticated", "send Authorization: Bearer <token>")
        presented = token.encode()
        # Every token is compared (no early exit), so timing tells nothing of which matched.
        if sum(hmac.compare_digest(presented, t) for t in self._admin_tokens()):
            return Principal(tenant_id=None, scopes=frozenset(SCOPES), key_id="admin")
        if token.startswith(VIEWER_PREFIX):
            return self._admit(await self._viewer(token))
        m = _TOKEN_RE.match(token)
        if not m:
            raise ApiError(401, "unauthenticated", "invalid token")
        return self._admit(await self._key(m.group(1), token))

    async def _viewer(self, token: str) -> Principal:
        """The read-only principal of a viewer token (401 when forged, expired, or minted
        by a key that is no longer valid for its tenant)."""
        if self.viewer_key is None:
            raise ApiError(401, "unauthenticated", "viewer tokens are not enabled")
        try:
            claims = decode(token, self.viewer_key)
        except TokenError as exc:
            raise ApiError(401, "unauthenticated", str(exc)) from None
        if claims.e <= self.clock():
            raise ApiError(401, "unauthenticated", "viewer token expired: ask for a new one")
        if claims.i != "admin":
            try:
                issuer = await self._key(claims.i, None)
            except ApiError:
                issuer = None
            if issuer is None or issuer.tenant_id != claims.t or "read" not in issuer.scopes:
                raise ApiError(401, "unauthenticated", "the key that minted this viewer "
                               "token is revoked or expired")  # fmt: skip
        try:
            fixed = parse_fixed(claims.f)
        except ApiError:
            raise ApiError(401, "unauthenticated", "viewer token filters are invalid") from None
        return Principal(tenant_id=claims.t, scopes=frozenset({"read"}),
                         key_id=f"{claims.i}:viewer", viewer=True, fixed=fixed)  # fmt: skip

    async def _key(self, key_id: str, token: str | None) -> Principal:
        """The tenant key ``key_id``, checked against ``token`` (None: a viewer token's
        minting key, which only has to be valid). Not charged to the rate limit here.

        Raises:
            ApiError: 401 for an unknown, revoked, expired or (with ``token``) forged key.
        """
        if not re.fullmatch(r"[0-9a-f]{16}", key_id):
            raise ApiError(401, "unauthenticated", "invalid token")
        digest = hash_token(token) if token is not None else None
        cached = self._cache.get(key_id)
        now = time.monotonic()
        if cached and cached[0] > now:
            if digest is None or hmac.compare_digest(cached[2], digest):
                self._touch(key_id, now)
                return cached[1]
            raise ApiError(401, "unauthenticated", "invalid token")
        async with self.pool.acquire() as conn:
            row = await sql.active_key(conn, key_id)
        if row is None or (
            digest is not None and not hmac.compare_digest(bytes(row["token_hash"]), digest)
        ):
            raise ApiError(401, "unauthenticated", "invalid, revoked or expired token")
        self._touch(key_id, now)
        principal = Principal(
            tenant_id=row["tenant_id"], scopes=frozenset(row["scopes"]), key_id=key_id
        )
        until = now + CACHE_SECONDS
        if row["expires_at"] is not None:  # never cached past its expiry
            until = min(until, now + (row["expires_at"] - datetime.now(UTC)).total_seconds())
        self._cache[key_id] = (until, principal, bytes(row["token_hash"]))
        return principal
