"""Parse and validate query parameters into a :class:`EventQuery` (pure, no I/O).

Parameters may repeat (``severities=A&severities=B``) or hold comma lists
(``severities=A,B``). Anything unknown, malformed or out of range is a 400 naming the
parameter.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from multidict import MultiMapping

from query_api.contract import (
    DEFAULT_PAGE_SIZE,
    MAX_LIST_ITEMS,
    MAX_PAGE_SIZE,
    MAX_Q_LEN,
    MAX_VALUE_LEN,
    ExportParams,
    FilterParams,
    ListParams,
    param_names,
)
from query_api.errors import bad_request
from schemas.events import ACTION_PATTERN, ACTOR_TYPES, CATEGORIES, SEVERITIES, TENANT_ID_PATTERN

_TENANT_RE = re.compile(TENANT_ID_PATTERN)
_ACTION_RE = re.compile(ACTION_PATTERN)

TIME_MIN = datetime.min.replace(tzinfo=UTC)
TIME_MAX = datetime.max.replace(tzinfo=UTC)
LIST_PARAMS = param_names(ListParams)
STATS_PARAMS = param_names(FilterParams)
EXPORT_PARAMS = param_names(ExportParams)


class EventQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A validated, tenant-scoped query over events."""

    tenant_id: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    severities: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()  # exact names
    action_prefixes: tuple[str, ...] = ()  # from "user.*"
    actor_type: str | None = None
    actor_id: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    q: str | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    page_token: str | None = None
    order: str = "desc"
    format: str = "ndjson"
    after_seq: int | None = None  # commit order: seq > this, ordered by seq

    def fingerprint_parts(self, tenant_id: str) -> list[str]:
        """What a page token is bound to: tenant, every filter and the order."""
        return [
            tenant_id,
            _ts_key(self.start_time),
            _ts_key(self.end_time),
            ",".join(self.severities),
            ",".join(self.categories),
            ",".join(self.actions),
            ",".join(self.action_prefixes),
            self.actor_type or "",
            self.actor_id or "",
            self.resource_type or "",
            self.resource_id or "",
            self.q or "",
            self.order,
            "" if self.after_seq is None else str(self.after_seq),
        ]


def _ts_key(ts: datetime | None) -> str:
    return ts.isoformat() if ts else ""


def _values(params: MultiMapping[str] | Mapping[str, str], name: str) -> list[str]:
    raw = params.getall(name, []) if hasattr(params, "getall") else [params.get(name, "")]
    out: list[str] = []
    for item in raw:
        out.extend(v.strip() for v in item.split(",") if v.strip())
    return out


def _one(params: MultiMapping[str] | Mapping[str, str], name: str) -> str | None:
    raw = params.getall(name, []) if hasattr(params, "getall") else (
        [params[name]] if name in params else []
    )  # fmt: skip
    if len(raw) > 1:
        raise bad_request(f"{name} may be given once", name)
    if not raw:
        return None
    if raw[0] == "":
        if name == "page_token":  # an empty token is the first page
            return None
        raise bad_request(f"{name} is empty: give a value or leave it out", name)
    value = raw[0]
    if len(value) > MAX_VALUE_LEN:
        raise bad_request(f"{name} is longer than {MAX_VALUE_LEN} characters", name)
    if "\x00" in value:
        raise bad_request(f"{name} contains a NUL character", name)
    return value


def _enums(params: Any, name: str, allowed: Iterable[str]) -> tuple[str, ...]:
    values = _values(params, name)
    if len(values) > MAX_LIST_ITEMS:
        raise bad_request(f"{name}: at most {MAX_LIST_ITEMS} values", name)
    allowed = tuple(allowed)
    for v in values:
        if v not in allowed:
            raise bad_request(
                f"{name}: unknown value {v[:64]!r}; one of {', '.join(allowed)}", name
            )
    return tuple(dict.fromkeys(values))


def parse_time(value: str | None, name: str) -> datetime | None:
    """RFC 3339 with a timezone (``Z`` or an offset)."""
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        msg = f"{name} must be an RFC 3339 time like 2026-11-26T04:57:36Z"
        raise bad_request(msg, name) from None
    if ts.tzinfo is None:
        raise bad_request(f"{name} needs a timezone (Z or +hh:mm)", name)
    try:
        return ts.astimezone(UTC)
    except OverflowError:  # within a day of year 1 or 9999: the ends of time
        return TIME_MIN if ts.year == 1 else TIME_MAX


def _actions(params: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    exact: list[str] = []
    prefixes: list[str] = []
    values = _values(params, "actions")
    if len(values) > MAX_LIST_ITEMS:
        raise bad_request(f"actions: at most {MAX_LIST_ITEMS} values", "actions")
    for v in values:
        name = v[:-1] if v.endswith(".*") else v
        if not _ACTION_RE.match(name) or len(name) > 128:
            raise bad_request(f"actions: {v[:64]!r} is not an action name or prefix.*", "actions")
        (prefixes if v.endswith(".*") else exact).append(name.lower())
    return tuple(exact), tuple(prefixes)


def _page_size(value: str | None) -> int:
    if value is None:
        return DEFAULT_PAGE_SIZE
    if not value.isdigit():
        raise bad_request("page_size must be a whole number from 1 to 1000", "page_size")
    size = int(value)
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise bad_request(f"page_size must be from 1 to {MAX_PAGE_SIZE}", "page_size")
    return size


MAX_SEQ = 2**63 - 1


def _after_seq(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or not value.isascii() or int(value) > MAX_SEQ:
        raise bad_request(f"after_seq must be a whole number from 0 to {MAX_SEQ}", "after_seq")
    return int(value)


def parse_query(params: Any, allowed: frozenset[str] = LIST_PARAMS) -> EventQuery:
    """Validate request parameters into an :class:`EventQuery`.

    Raises:
        ApiError: 400 naming the first parameter at fault.
    """
    for name in params:
        if name not in allowed:
            raise bad_request(f"unknown parameter {name[:64]!r}", name[:64])
    tenant = _one(params, "tenant_id")
    if tenant is not None and not _TENANT_RE.match(tenant):
        raise bad_request("tenant_id has characters a tenant id cannot have", "tenant_id")
    start = parse_time(_one(params, "start_time"), "start_time")
    end = parse_time(_one(params, "end_time"), "end_time")
    actor_type = _one(params, "actor_type")
    if actor_type is not None and actor_type not in ACTOR_TYPES:
        raise bad_request(
            f"actor_type: unknown value; one of {', '.join(ACTOR_TYPES)}", "actor_type"
        )
    after_seq = _after_seq(_one(params, "after_seq"))
    # Commit order (after_seq) reads oldest first unless told otherwise.
    order = (_one(params, "order") or ("desc" if after_seq is None else "asc")).lower()
    if order not in ("asc", "desc"):
        raise bad_request("order must be asc or desc", "order")
    fmt = (_one(params, "format") or "ndjson").lower()
    if fmt not in ("ndjson", "csv"):
        raise bad_request("format must be ndjson or csv", "format")
    q = _one(params, "q")
    if q is not None and len(q) > MAX_Q_LEN:
        raise bad_request(f"q is longer than {MAX_Q_LEN} characters", "q")
    exact, prefixes = _actions(params)
    return EventQuery(
        tenant_id=tenant,
        start_time=start,
        end_time=end,
        severities=_enums(params, "severities", SEVERITIES),
        categories=_enums(params, "categories", CATEGORIES),
        actions=exact,
        action_prefixes=prefixes,
        actor_type=actor_type,
        actor_id=_one(params, "actor_id"),
        resource_type=_one(params, "resource_type"),
        resource_id=_one(params, "resource_id"),
        q=q,
        page_size=_page_size(_one(params, "page_size")),
        page_token=_one(params, "page_token"),
        order=order,
        format=fmt,
        after_seq=after_seq,
    )


def parse_event_id(value: str) -> uuid.UUID:
    """An event id path segment.

    Raises:
        ApiError: 400 when it is not a UUID.
    """
    try:
        return uuid.UUID(value)
    except ValueError:
        raise bad_request("id must be a UUID", "id") from None


def stats_bucket(start: datetime, end: datetime) -> timedelta:
    """Histogram bucket for a range: about 24-200 points."""
    span = end - start
    for bucket in (
        timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1),
        timedelta(hours=6), timedelta(days=1), timedelta(days=7),
    ):  # fmt: skip
        if span / bucket <= 200:
            return bucket
    return timedelta(days=30)
