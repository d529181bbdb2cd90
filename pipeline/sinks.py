"""What the worker writes to, as protocols: a store for events and a dead-letter sink.

The worker depends on these only, so ack-after-commit, dedupe, refusal bisection and
dead-lettering are tested with in-memory fakes (``tests/unit/test_worker.py``); the
PostgreSQL store (``pipeline.flush.PgStore``) and the JetStream dead-letter sink
(``pipeline.dlq_nats.NatsDeadLetters``) are the real adapters, tested against the servers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Protocol

from pipeline.stages import Dead, Valid
from schemas.ids import EventKey


@dataclass
class FlushResult:
    """What one store call stored.

    Attributes:
        stored: keys committed by this call, in batch order.
        duplicates: keys that were already stored (dropped).
        busy: tenants whose chain head another flush held: none of their events were
            written or claimed; the caller stores them again later, in the same order.
        oldest_received_us: the earliest ``received_at`` of the events stored (UTC
            microseconds since 1970; 0 when none were).
    """

    stored: list[EventKey] = field(default_factory=list)
    duplicates: list[EventKey] = field(default_factory=list)
    busy: set[str] = field(default_factory=set)
    oldest_received_us: int = 0


class StoreError(Exception):
    """A store call failed; nothing of it was stored. Raised as one of its subclasses,
    which say what the caller does next (a bare one is handled as retryable).

    Attributes:
        reason: one line for logs and dead letters (e.g. SQLSTATE and message).
        metric_label: this kind's label on ``auditlog_flush_retries`` (for metrics only).
    """

    metric_label: ClassVar[str] = "retry"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RetryableStoreError(StoreError):
    """Transient (the connection, the server, a lock or serialization conflict, a full
    disk): store the same events again later; none of them is at fault."""


class RefusedRowError(StoreError):
    """Some event's data is refused for good (a data, integrity or limit violation):
    split the batch to find the events at fault, and store the rest."""

    metric_label: ClassVar[str] = "row"


class Store(Protocol):
    """Durable storage of events, one transaction per call."""

    async def write(self, items: Sequence[Valid]) -> tuple[FlushResult, list[tuple[Valid, str]]]:
        """Store ``items`` atomically, dropping those stored before (duplicates).

        Returns:
            (what was stored, the items refused up front with why: e.g. their month
            partition cannot be made; the rest were written).

        Raises:
            RetryableStoreError: nothing was stored; store the same items again later.
            RefusedRowError: nothing was stored; some item is refused for good.
        """
        ...

    async def close(self) -> None:
        """Give back what the store keeps between writes (connections); never raises.
        The worker calls it once, after its last write."""
        ...


class BucketClaims(Protocol):
    """Advisory claims on tenant buckets (``pipeline.ordering``), shared by every worker,
    so that concurrent flushes of different workers take different tenants: a worker
    flushes only the buckets it claimed, and nobody waits for a claim.

    Claims only steer; the chain-head row locks stay the correctness mechanism (a flush
    still skips a head someone else holds). Losing the claims (the connection dropped)
    costs efficiency, never correctness.
    """

    peers: int  # workers claiming, this one included, as of the last claim (0: unknown)

    async def claim(self, buckets: Sequence[int], want: int, yield_to: Sequence[int] = (),
                    wait: bool = False) -> list[int] | None:  # fmt: skip
        """Claim up to ``want`` of ``buckets``, trying them in order and skipping those
        another worker holds, and those of ``yield_to`` (buckets whose turn this worker
        has had) that another worker waits for; the claimed ones, in order. None: claims
        are unavailable now (flush without them). Never raises, never waits on another's
        claim. ``wait`` (the worker has nothing else to flush): when nothing is claimed,
        the buckets tried are waited for until this worker claims them (others then yield
        them to this one)."""
        ...

    async def release(self, buckets: Sequence[int]) -> None:
        """Release ``buckets`` claimed by :meth:`claim` (once per claim). Never raises."""
        ...

    async def close(self) -> None:
        """End every claim (the worker stops). Never raises."""
        ...


class DeadLetters(Protocol):
    """Where refused messages go, with their reason."""

    async def publish(self, dead: Dead, now: datetime) -> None:
        """Publish one dead letter (one attempt; the worker retries).

        Raises:
            Exception: not published.
        """
        ...
