"""Pull credit for a JetStream pull consumer, as a pure class (no I/O, the clock passed in).

A pull request asks the server for up to ``batch`` messages and ``max_bytes`` bytes; the
server answers with messages, each counted against the oldest open request (one client's
requests are served in order), and ends a request by filling its count, or with a status
(404/408/409: nothing to deliver, expired, refused or its ``max_bytes`` reached). Two
budgets hold at any time, counting what is *held* (delivered and not yet settled) and
what is *outstanding* (asked for by open requests and not yet delivered):

1. messages: held + outstanding <= ``max_messages``;
2. bytes: held bytes + outstanding bytes <= ``max_bytes``, and outstanding bytes <= 2 x
   ``request_bytes`` (the server pushes what a request asks as fast as it can, and cuts
   off a client that falls behind by more than its pending limit).

A request whose status never arrives (the connection dropped, the server restarted) is
forgotten only once it has expired at the server (``expires_s`` after it was sent, plus
:data:`STATUS_GRACE_S`): until then it may still deliver, so its credit stays spent.
Forgetting it earlier lets live requests pile up at the server while this class believes
them gone, and a burst after an idle spell then overruns both budgets (measured before
this class existed: 10 requests waiting at the server, 2 believed; 1,000 messages
delivered against a budget of 300).

Worked example (``max_messages`` 300, ``max_bytes`` 8000, ``batch`` 100,
``request_bytes`` 4000, messages of at most 1000 bytes)::

    next_request()  -> 100 msgs / 4000 B   outstanding 100 / 4000 B
    next_request()  -> 100 msgs / 4000 B   outstanding 200 / 8000 B (byte budget spent)
    next_request()  -> None                (more than a batch outstanding: wait)
    3 x 1000 B delivered                   held 3 / 3000 B, outstanding 197 / 5000 B
    409 ends the oldest request            held 3 / 3000 B, outstanding 100 / 4000 B
    next_request()  -> 100 msgs / 1000 B   (8000 - 3000 held - 4000 outstanding)
    the 3 held are settled                 held 0 / 0 B: their bytes can be asked again
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

# Most bytes one pull request asks for (and twice this at once): see budget 2.
PULL_MAX_BYTES = 8 * 1024 * 1024
# Requests expire so that a worker that dies does not hold messages in waiting pulls.
REQUEST_EXPIRES_S = 2.0
# How late after its expiry a request's 408 may still arrive; past that, it is forgotten.
STATUS_GRACE_S = 1.0


@dataclass(frozen=True, slots=True)
class PullRequest:
    """One pull request to publish: at most ``batch`` messages and ``max_bytes`` bytes,
    ending at the server ``expires_s`` after it is sent."""

    batch: int
    max_bytes: int
    expires_s: float


@dataclass(slots=True)
class _Open:
    """An open request: what it may still deliver, and when the server ends it anyway."""

    messages: int
    nbytes: int
    expires_at: float


class PullCredit:
    """What to ask JetStream for, given the budgets, what is held and what is outstanding.

    The source calls :meth:`next_request` and, once the request is published,
    :meth:`sent`; then :meth:`delivered` per message, :meth:`ended` per status that ends
    a request, :meth:`settled` per message acked or NAKed, and :meth:`forget_expired` now
    and then (statuses can be lost).

    Args:
        max_messages: most messages held plus outstanding.
        max_bytes: most bytes held plus outstanding.
        batch: most messages one request asks for.
        request_bytes: most bytes one request asks for.
        expires_s: how long a request stays open at the server.
    """

    def __init__(self, max_messages: int, max_bytes: int, batch: int,
                 request_bytes: int = PULL_MAX_BYTES,
                 expires_s: float = REQUEST_EXPIRES_S) -> None:  # fmt: skip
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.batch = batch
        self.request_bytes = request_bytes
        self.expires_s = expires_s
        self._open: collections.deque[_Open] = collections.deque()  # oldest first
        self._held = 0
        self._held_bytes = 0
        self._outstanding = 0
        self._outstanding_bytes = 0

    @property
    def held(self) -> int:
        """Messages delivered and not yet settled."""
        return self._held

    @property
    def held_bytes(self) -> int:
        """Bytes of the held messages."""
        return self._held_bytes

    @property
    def outstanding(self) -> int:
        """Messages open requests may still deliver."""
        return self._outstanding

    @property
    def outstanding_bytes(self) -> int:
        """Bytes open requests may still deliver."""
        return self._outstanding_bytes

    @property
    def open_requests(self) -> int:
        """Requests not yet ended (as far as this class knows)."""
        return len(self._open)

    def next_request(self, largest_message: int) -> PullRequest | None:
        """The request to publish now, or None when there is not enough room for one.

        A request is due when at least half a batch of messages fits, no more than one
        batch is outstanding already, and the byte room holds the largest single message the
        server may deliver (``largest_message``, its ``max_payload``; capped at half of
        either byte limit): a request with less byte room could be answered with nothing.
        """
        unit = max(1, min(largest_message, self.max_bytes // 2, self.request_bytes // 2))
        room = self.max_messages - self._held - self._outstanding
        room_bytes = min(
            self.max_bytes - self._held_bytes - self._outstanding_bytes,
            2 * self.request_bytes - self._outstanding_bytes,
            self.request_bytes,
        )
        least = max(1, min(self.batch, self.max_messages) // 2)
        if room < least or self._outstanding > self.batch or room_bytes < unit:
            return None
        return PullRequest(min(self.batch, room), room_bytes, self.expires_s)

    def sent(self, request: PullRequest, now: float) -> None:
        """``request`` was published at ``now`` (monotonic seconds): its credit is spent."""
        self._open.append(_Open(request.batch, request.max_bytes, now + request.expires_s))
        self._outstanding += request.batch
        self._outstanding_bytes += request.max_bytes

    def delivered(self, size: int) -> bool:
        """A message of ``size`` bytes arrived; it is held until :meth:`settled`.

        Returns:
            True when it filled the oldest request (which is then over: the server says
            nothing more about it, and what it did not use is free again).
        """
        self._held += 1
        self._held_bytes += size
        if not self._open:
            return False  # a request forgotten as expired still delivered: held anyway
        head = self._open[0]
        take = min(size, head.nbytes)
        head.messages -= 1
        head.nbytes -= take
        self._outstanding -= 1
        self._outstanding_bytes -= take
        if head.messages <= 0:
            self.ended()
            return True
        return False

    def delivered_many(self, sizes: Sequence[int]) -> bool:
        """:meth:`delivered` of messages of ``sizes`` bytes, in order, request by request
        instead of message by message (the same state after it).

        Returns:
            True when they filled at least one request.
        """
        n = len(sizes)
        self._held += n
        self._held_bytes += sum(sizes)
        filled = False
        opened = self._open
        i = 0
        while i < n and opened:
            head = opened[0]
            k = min(max(head.messages, 1), n - i)
            # Bytes taken message by message, min(size, what the request has left), add
            # up to min(their sum, what it had): sizes and what is left are never negative.
            take = min(sum(sizes[i : i + k]), head.nbytes)
            head.messages -= k
            head.nbytes -= take
            self._outstanding -= k
            self._outstanding_bytes -= take
            i += k
            if head.messages <= 0:
                self.ended()
                filled = True
        return filled

    def ended(self) -> None:
        """A status ended the oldest open request: what it did not deliver is free."""
        if self._open:
            done = self._open.popleft()
            self._outstanding -= done.messages
            self._outstanding_bytes -= done.nbytes

    def settled(self, size: int) -> None:
        """A held message of ``size`` bytes was acked or NAKed: its credit is free."""
        self._held -= 1
        self._held_bytes -= size

    def settled_many(self, count: int, nbytes: int) -> None:
        """:meth:`settled` of ``count`` messages of ``nbytes`` bytes in all (a batch)."""
        self._held -= count
        self._held_bytes -= nbytes

    def forget_expired(self, now: float) -> bool:
        """Forget the open requests the server has surely ended by ``now`` (their expiry
        plus :data:`STATUS_GRACE_S` passed) whose status never came.

        Returns:
            Whether any was forgotten.
        """
        forgot = False
        while self._open and self._open[0].expires_at + STATUS_GRACE_S <= now:
            self.ended()
            forgot = True
        return forgot
