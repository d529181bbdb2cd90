"""What the worker writes to, as protocols: a store for events and a dead-letter sink.

The worker depends on these only, so ack-after-commit, dedupe, refusal bisection and
dead-lettering are tested with in-memory fakes (``tests/unit/test_worker.py``); the
PostgreSQL store (``pipeline.flush.PgStore``) and the JetStream dead-letter sink
(``pipeline.dlq_nats.NatsDeadLetters``) are the real adapters, tested against the servers.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from pipeline.stages import Dead, Valid

Key = tuple[str, uuid.UUID]


@dataclass
class FlushResult:
    """What one store call stored.

    Attributes:
        stored: keys committed by this call, in batch order.
        duplicates: keys that were already stored (dropped).
        records: the records committed (for metrics: ``received_at`` is at index 4).
        busy: tenants whose chain head another flush held: none of their events were
            written or claimed; the caller stores them again later, in the same order.
    """

    stored: list[Key] = field(default_factory=list)
    duplicates: list[Key] = field(default_factory=list)
    records: list[tuple[Any, ...]] = field(default_factory=list)
    busy: set[str] = field(default_factory=set)


class StoreError(Exception):
    """A store call failed; nothing of it was stored.

    Attributes:
        kind: ``retry`` (transient: store the same events again later) or ``row`` (some
            event's data is refused for good: split the batch to find it).
        reason: one line for logs and dead letters (e.g. SQLSTATE and message).
    """

    def __init__(self, kind: Literal["retry", "row"], reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class Store(Protocol):
    """Durable storage of events, one transaction per call."""

    async def write(self, items: Sequence[Valid]) -> tuple[FlushResult, list[tuple[Valid, str]]]:
        """Store ``items`` atomically, dropping those stored before (duplicates).

        Returns:
            (what was stored, the items refused up front with why: e.g. their month
            partition cannot be made; the rest were written).

        Raises:
            StoreError: nothing was stored.
        """
        ...


class DeadLetters(Protocol):
    """Where refused messages go, with their reason."""

    async def publish(self, dead: Dead, now: datetime) -> None:
        """Publish one dead letter (one attempt; the worker retries).

        Raises:
            Exception: not published.
        """
        ...
