"""Who read the audit log: reads, exports and admin changes written as audit events into
the tenant's own log, through the normal write path (JetStream, then the pipeline: the
same validation, chain and checkpoints as any event).

- Reads (list, get, stats, proof, consistency, verify) are summarised: one event per
  tenant, actor, operation and filters per window (``AUDIT_ACCESS_LOG_WINDOW_S``, default
  60 s) with the number of requests and rows, so a polling dashboard or ``auditlog events
  tail`` adds one event a minute, not one per request. Paging through one result set is
  one filter (the page token is not part of it).
- Exports, viewer tokens minted and every key, retention or legal-hold change are logged
  one by one.

Off the request path: requests only append to memory; a background task publishes every
second (exports and changes) or when a read window closes. Publishing failures are
retried; at most :data:`MAX_PENDING` events wait (beyond that the oldest are dropped and
counted in ``auditlog_access_log_dropped_total``, never blocking a read). ``AUDIT_ACCESS_LOG
=false`` turns it all off.

Events: ``action`` ``audit_log.read`` / ``audit_log.export`` / ``api_key.create`` /
``api_key.revoke`` / ``viewer_token.create`` / ``audit_log.retention.update`` /
``audit_log.legal_hold.set`` / ``audit_log.legal_hold.release``; ``actor`` the key id
(``ACTOR_TYPE_API_KEY``; the admin token is the key ``admin``; a viewer token is its
minting key's id with ``:viewer``); ``category`` ``CATEGORY_COMPLIANCE``; ``metadata``
the operation, filters and counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from query_api.auth import Principal

log = logging.getLogger(__name__)

MAX_PENDING = 10_000
MAX_VALUE_LEN = 256  # a filter value longer than this is cut (it was validated already)
FLUSH_EVERY_S = 1.0
_SKIPPED = frozenset({"page_token", "tenant_id"})  # not part of "the same filter"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def filters_of(params: Mapping[str, Any]) -> dict[str, str]:
    """A request's filters as logged: every parameter but the page token and tenant, in
    name order, repeated ones joined with ``,``, each cut at :data:`MAX_VALUE_LEN`."""
    out: dict[str, list[str]] = {}
    for k, v in params.items():  # a MultiDict yields repeated names once per value
        if k not in _SKIPPED and v not in ("", None):
            out.setdefault(k, []).append(str(v))
    return {k: ",".join(out[k])[:MAX_VALUE_LEN] for k in sorted(out)}


class _Window(msgspec.Struct):
    first: float
    last: float
    requests: int = 0
    rows: int = 0


class AccessLog:
    """Collects access records and publishes them as audit events.

    Args:
        publish: sends events (JSON bytes, one per event) into the log; returns, per
            event, whether it was accepted (False: retry later).
        window_s: how long reads with the same key and filter are summarised.
        enabled: False: record nothing (``AUDIT_ACCESS_LOG=false``).
        metrics: ``access_log_events`` / ``access_log_dropped`` counters (optional).
        clock: wall-clock seconds (tests move it).
    """

    def __init__(self, publish: Callable[[list[bytes]], Any], *, window_s: float = 60.0,
                 enabled: bool = True, metrics: Any = None,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.publish = publish
        self.window_s = window_s
        self.enabled = enabled
        self.metrics = metrics
        self.clock = clock
        self.windows: dict[tuple[str, str, str, str], _Window] = {}
        self.ready: list[bytes] = []  # encoded events waiting to be published
        self._task: asyncio.Task[None] | None = None

    # -- recording (called on the request path: memory only) -------------------------------
    def read(self, who: Principal, tenant_id: str, operation: str,
             params: Mapping[str, Any], rows: int) -> None:  # fmt: skip
        """Count one read of ``tenant_id``'s log by ``who``."""
        if not self.enabled:
            return
        filters = msgspec.json.encode(filters_of(params)).decode()
        now = self.clock()
        w = self.windows.setdefault((tenant_id, who.key_id, operation, filters),
                                    _Window(now, now))  # fmt: skip
        w.last, w.requests, w.rows = now, w.requests + 1, w.rows + rows
        if len(self.windows) > MAX_PENDING:  # a flood of distinct filters: close early
            self._close_windows(force=True)

    def record(self, who: Principal, tenant_id: str, action: str, resource: tuple[str, str],
               metadata: dict[str, Any]) -> None:  # fmt: skip
        """Log one action (an export, a key or policy change) on its own."""
        if not self.enabled:
            return
        self._add(self._event(tenant_id, who.key_id, action, resource, metadata))

    # -- publishing ------------------------------------------------------------------------
    def _event(self, tenant_id: str, key_id: str, action: str, resource: tuple[str, str],
               metadata: dict[str, Any]) -> bytes:  # fmt: skip
        actor: dict[str, str] = {"type": "ACTOR_TYPE_API_KEY", "id": key_id}
        if key_id == "admin":
            actor["display_name"] = "admin token"
        elif key_id.endswith(":viewer"):
            actor["display_name"] = "viewer token"
        return msgspec.json.encode({
            "tenant_id": tenant_id, "action": action, "actor": actor,
            "category": "CATEGORY_COMPLIANCE", "severity": "SEVERITY_INFO",
            "primary_resource": {"type": resource[0], "id": resource[1]},
            "metadata": metadata,
        })  # fmt: skip

    def _add(self, event: bytes) -> None:
        self.ready.append(event)
        if len(self.ready) > MAX_PENDING:
            lost = len(self.ready) - MAX_PENDING
            del self.ready[:lost]
            if self.metrics is not None:
                self.metrics.access_log_dropped.inc(lost)
            log.warning("access log: %d event(s) dropped (the event log is unavailable)", lost)

    def _close_windows(self, force: bool = False) -> None:
        now = self.clock()
        for k in [k for k, w in self.windows.items() if force or now - w.first >= self.window_s]:
            w = self.windows.pop(k)
            tenant, key_id, operation, filters = k
            self._add(self._event(tenant, key_id, "audit_log.read", ("audit_log", tenant), {
                "operation": operation, "filters": msgspec.json.decode(filters),
                "requests": w.requests, "rows": w.rows,
                "first_at": _iso(w.first), "last_at": _iso(w.last),
            }))  # fmt: skip

    async def flush(self, force: bool = False) -> None:
        """Publish what is due (``force``: every open window too); keep what failed."""
        self._close_windows(force)
        if not self.ready:
            return
        batch, self.ready = self.ready, []
        try:
            accepted = await self.publish(batch)
        except Exception as exc:  # NATS away: keep them for the next round
            log.warning("access log: publishing %d event(s) failed: %r", len(batch), exc)
            accepted = [False] * len(batch)
        failed = [e for e, ok in zip(batch, accepted, strict=True) if not ok]
        self.ready[:0] = failed
        if self.metrics is not None:
            self.metrics.access_log_events.inc(len(batch) - len(failed))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            try:
                await self.flush()
            except Exception:  # never let the access log take the API down
                log.exception("access log: flush failed")

    def start(self) -> None:
        """Start publishing in the background (no-op when disabled)."""
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="access-log")

    async def stop(self) -> None:
        """Stop, publishing everything recorded so far (open windows included)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.enabled:
            await self.flush(force=True)
