"""Viewer tokens: short-lived, read-only bearer tokens bound to one tenant, optionally
narrowed to fixed filters, for the embeddable viewer page (``/ui/``). Pure: no I/O.

A token is ``alv_<base64url(payload)>.<base64url(mac)>``: the payload is compact JSON
(``v`` version, ``t`` tenant, ``f`` fixed filters, ``e`` expiry in Unix seconds, ``i``
the id of the key that minted it, ``n`` a nonce) and the mac is HMAC-SHA256 of the
payload's base64 text under a key derived from the service's token secret (so a page
token can never pass for a viewer token, nor the other way round). Stateless on purpose:
listed nowhere, gone at expiry, and dead at once when the key that minted it is revoked
(the authenticator checks that key on every use).

Fixed filters narrow every read the token makes (list, stats, export: ``narrow``; get and
proof: ``matches``). A request may narrow them further, never widen them: a scalar filter
given with another value, or a list filter naming values outside the fixed ones, is a 403
naming the parameter; an event outside them is a 404, as another tenant's would be.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from typing import Any

import msgspec
from multidict import MultiDict

from query_api.contract import ViewerFilters
from query_api.errors import ApiError
from query_api.filters import EventQuery, parse_query

PREFIX = "alv_"
VERSION = 1
MAX_TOKEN_LEN = 8192
_LABEL = b"auditlog viewer-token v1"
SCALARS = ("actor_type", "actor_id", "resource_type", "resource_id")
FILTER_NAMES = frozenset((*SCALARS, "severities", "categories", "actions"))


class TokenError(ValueError):
    """The token is malformed or was not minted by this service (its secret)."""


class Claims(msgspec.Struct, frozen=True):
    """What a viewer token says."""

    v: int
    t: str  # tenant
    f: dict[str, Any]  # fixed filters, as ViewerFilters (public form)
    e: int  # expiry, Unix seconds
    i: str  # id of the minting key ("admin" for the admin token)
    n: str = ""  # nonce: two tokens minted in the same second differ


_claims_dec = msgspec.json.Decoder(Claims)


def derive_key(token_secret: bytes) -> bytes:
    """The viewer-token MAC key: derived from, and distinct from, the page-token secret."""
    return hmac.new(token_secret, _LABEL, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(claims: Claims, key: bytes) -> str:
    """The token for ``claims`` under MAC key ``key`` (:func:`derive_key`)."""
    body = _b64(msgspec.json.encode(claims))
    mac = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return f"{PREFIX}{body}.{_b64(mac)}"


def decode(token: str, key: bytes) -> Claims:
    """The claims of ``token`` (expiry not checked here).

    Raises:
        TokenError: malformed, too long, or not signed with ``key``.
    """
    if not token.startswith(PREFIX) or len(token) > MAX_TOKEN_LEN:
        raise TokenError("not a viewer token")
    body, dot, mac_text = token[len(PREFIX) :].partition(".")
    if not dot or not body.isascii() or not mac_text.isascii():
        raise TokenError("not a viewer token")
    try:
        mac = _unb64(mac_text)
    except (ValueError, binascii.Error) as exc:
        raise TokenError("not a viewer token") from exc
    want = hmac.new(key, body.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(mac, want):
        raise TokenError("viewer token was not issued by this service or was altered")
    try:
        claims = _claims_dec.decode(_unb64(body))
    except (ValueError, binascii.Error, msgspec.DecodeError) as exc:
        raise TokenError("viewer token payload is malformed") from exc
    if claims.v != VERSION:
        raise TokenError("viewer token from an incompatible version")
    return claims


def new_claims(tenant_id: str, filters: ViewerFilters, expires: int, issuer: str) -> Claims:
    """Claims for a fresh token."""
    return Claims(VERSION, tenant_id, msgspec.to_builtins(filters), expires, issuer,
                  secrets.token_urlsafe(6))  # fmt: skip


# -- fixed filters ---------------------------------------------------------------------------
def _params(filters: dict[str, Any]) -> MultiDict[str]:
    params: MultiDict[str] = MultiDict()
    for name, value in filters.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            params.add(name, str(item))
    return params


def parse_fixed(filters: dict[str, Any]) -> EventQuery | None:
    """Fixed filters (public form) as an :class:`EventQuery`; None when there are none.

    Raises:
        ApiError: 400 naming ``filters.<name>`` when one is invalid.
    """
    if not any(filters.get(k) for k in FILTER_NAMES):
        return None
    try:
        return parse_query(_params(filters), FILTER_NAMES)
    except ApiError as exc:
        raise ApiError(exc.status, exc.code, exc.message, f"filters.{exc.field}") from None


def public_filters(q: EventQuery | None) -> ViewerFilters:
    """Validated fixed filters in their public form (actions lower-cased, ``prefix.*``)."""
    if q is None:
        return ViewerFilters()
    actions = [*q.actions, *(p + "*" for p in q.action_prefixes)]
    return ViewerFilters(
        severities=list(q.severities) or None,  # type: ignore[arg-type]
        categories=list(q.categories) or None,  # type: ignore[arg-type]
        actions=actions or None, actor_type=q.actor_type,  # type: ignore[arg-type]
        actor_id=q.actor_id, resource_type=q.resource_type, resource_id=q.resource_id,
    )  # fmt: skip


def _denied(name: str, fixed: Any) -> ApiError:
    shown = ",".join(fixed) if isinstance(fixed, tuple) else fixed
    return ApiError(403, "permission_denied", f"this viewer token is limited to {name}="
                    f"{shown}; a request may narrow that, not widen it", name)  # fmt: skip


def _action_allowed(name: str, prefix: bool, fixed: EventQuery) -> bool:
    if not prefix and name in fixed.actions:
        return True
    return any(name.startswith(p) for p in fixed.action_prefixes)


def narrow(q: EventQuery, fixed: EventQuery | None) -> EventQuery:
    """``q`` with ``fixed`` applied: every match of the result matches ``fixed``.

    Raises:
        ApiError: 403 naming the parameter when ``q`` asks for more than ``fixed`` allows.
    """
    if fixed is None:
        return q
    changes: dict[str, Any] = {}
    for name in SCALARS:
        want, have = getattr(fixed, name), getattr(q, name)
        if want is not None:
            if have is not None and have != want:
                raise _denied(name, want)
            changes[name] = want
    for name in ("severities", "categories"):
        want, have = getattr(fixed, name), getattr(q, name)
        if want:
            if not set(have) <= set(want):
                raise _denied(name, want)
            changes[name] = have or want
    if fixed.actions or fixed.action_prefixes:
        if q.actions or q.action_prefixes:
            asked = [(a, False) for a in q.actions] + [(p, True) for p in q.action_prefixes]
            if not all(_action_allowed(a, p, fixed) for a, p in asked):
                allowed = (*fixed.actions, *(p + "*" for p in fixed.action_prefixes))
                raise _denied("actions", allowed)
        else:
            changes["actions"], changes["action_prefixes"] = fixed.actions, fixed.action_prefixes
    return msgspec.structs.replace(q, **changes)


def _resource_matches(ref: dict[str, Any] | None, rtype: str | None, rid: str | None) -> bool:
    if not ref:
        return False
    return (rtype is None or ref.get("type") == rtype) and (rid is None or ref.get("id") == rid)


def matches(event: dict[str, Any], fixed: EventQuery | None) -> bool:
    """Does ``event`` (as the API answers it) match ``fixed``? The same rules as the SQL
    filters (``query_api.sql.build_where``): resources match the primary or a related one."""
    if fixed is None:
        return True
    actor = event.get("actor") or {}
    action = event.get("action", "")
    checks = (
        not fixed.severities or event.get("severity") in fixed.severities,
        not fixed.categories or event.get("category") in fixed.categories,
        not (fixed.actions or fixed.action_prefixes) or action in fixed.actions
        or any(action.startswith(p) for p in fixed.action_prefixes),
        fixed.actor_type is None or actor.get("type") == fixed.actor_type,
        fixed.actor_id is None or actor.get("id") == fixed.actor_id,
    )  # fmt: skip
    if not all(checks):
        return False
    rtype, rid = fixed.resource_type, fixed.resource_id
    if rtype is None and rid is None:
        return True
    refs = [event.get("primary_resource"), *(event.get("related_resources") or [])]
    return any(_resource_matches(r, rtype, rid) for r in refs)
