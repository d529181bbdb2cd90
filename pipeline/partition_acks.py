"""In-order acks per Kafka partition, as a pure class (no I/O): what may be committed,
given the records settled and the records held.

Kafka commits an offset, not a set of records: committing offset N says every record of
the partition before N is done. The worker settles records in any order (flushes run
concurrently, a refused dead letter is held back for a retry), so a record is released
for commit only once it and every record delivered before it from its partition are
settled. A held record (its dead letter could not be published: NAKed) stops its
partition there until it is settled; the source pauses that partition meanwhile.

faust-streaming 0.15 makes the rule necessary, not only tidy: ``Consumer._new_offset``
compares the first acked offset with the committed one off by one, so acks with a
one-record hole after a commit are committed past the hole. This class never releases
past a hole.

Worked example (partition p; records delivered in order p:0, p:1, p:2)::

    settle [p:1]         -> []            (p:0 not settled: p:1 waits behind it)
    hold   [p:0]         paused {p}       (NAKed: redelivered later, never skipped)
    settle [p:2]         -> []
    settle [p:0]         -> [p:0, p:1, p:2] in order; paused {} again

A partition revoked in a rebalance is forgotten with everything of it (its new owner
reads from the last commit); later settles of its records release nothing.
"""

from __future__ import annotations

import collections
from collections.abc import Collection, Hashable, Iterable
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)  # a partition
E = TypeVar("E")  # what the source acks for a record (a faust event)


class _Record(Generic[P, E]):
    """One delivered record until it is released (one object, not parallel maps)."""

    __slots__ = ("event", "held", "partition", "settled", "token")

    def __init__(self, token: str, partition: P, event: E) -> None:
        self.token = token
        self.partition = partition
        self.event = event
        self.settled = False
        self.held = False


class PartitionAcks(Generic[P, E]):
    """Records delivered per partition, released for commit in delivery order.

    Tokens name records (``topic/partition:offset``); a token is delivered again after a
    rebalance seek. Each method takes the tokens it is given in any order and ignores
    tokens it does not know (released or revoked already).
    """

    def __init__(self) -> None:
        self._records: dict[str, _Record[P, E]] = {}
        self._order: dict[P, collections.deque[_Record[P, E]]] = {}
        self._held: collections.Counter[P] = collections.Counter()

    def __len__(self) -> int:
        """Records delivered and not yet released."""
        return len(self._records)

    def delivered(self, token: str, partition: P, event: E) -> None:
        """Record ``token`` was delivered from ``partition``, to be acked as ``event``.

        A new token goes to the end of its partition's order. A token delivered again
        before it was released keeps its place and is unsettled again (a held one stays
        held), to be acked as the newer ``event``.
        """
        rec = self._records.get(token)
        if rec is None:
            rec = _Record(token, partition, event)
            self._records[token] = rec
            self._order.setdefault(partition, collections.deque()).append(rec)
        else:
            rec.event = event
            rec.settled = False

    def partition_of(self, token: str) -> P | None:
        """The partition of a delivered, unreleased record (None when unknown)."""
        rec = self._records.get(token)
        return rec.partition if rec is not None else None

    def partitions(self) -> list[P]:
        """The partitions with records not yet released."""
        return list(self._order)

    def hold(self, tokens: Iterable[str]) -> None:
        """The records ``tokens`` were NAKed: their partitions stop there (and are
        paused) until each of them is settled."""
        for token in tokens:
            rec = self._records.get(token)
            if rec is not None and not rec.held and not rec.settled:
                rec.held = True
                self._held[rec.partition] += 1

    def paused(self) -> frozenset[P]:
        """The partitions with a held record."""
        return frozenset(self._held)

    def settle(self, tokens: Iterable[str]) -> list[E]:
        """The records ``tokens`` are settled (stored, duplicates or dead-lettered).

        Returns:
            The events now releasable (acked to faust, committed by its next commit): per
            partition, the settled records at the head of its delivery order, in that
            order; each record is released once.
        """
        touched: dict[P, None] = {}
        for token in tokens:
            rec = self._records.get(token)
            if rec is None or rec.settled:
                continue
            rec.settled = True
            if rec.held:
                rec.held = False
                self._held[rec.partition] -= 1
                if not self._held[rec.partition]:
                    del self._held[rec.partition]
            touched[rec.partition] = None
        released: list[E] = []
        for partition in touched:
            order = self._order[partition]
            while order and order[0].settled:
                rec = order.popleft()
                del self._records[rec.token]
                released.append(rec.event)
            if not order:
                del self._order[partition]
        return released

    def revoke(self, partitions: Collection[P]) -> list[str]:
        """Forget ``partitions`` (another consumer owns them now).

        Returns:
            The tokens of their records not yet released (now forgotten).
        """
        gone: list[str] = []
        for partition in partitions:
            for rec in self._order.pop(partition, ()):
                del self._records[rec.token]
                gone.append(rec.token)
            self._held.pop(partition, None)
        return gone
