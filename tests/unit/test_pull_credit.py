"""PullCredit: what a JetStream source asks for never exceeds its budgets, counting what it
holds and what live requests at the server may still deliver, over any interleaving of
pulls, deliveries, statuses, expiries, lost statuses and settles; every credit comes back
once everything is settled and every request has ended."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.pull_credit import STATUS_GRACE_S, PullCredit, PullRequest


def test_worked_example_from_the_module_docstring() -> None:
    credit = PullCredit(max_messages=300, max_bytes=8000, batch=100, request_bytes=4000)
    first = credit.next_request(1000)
    assert first == PullRequest(100, 4000, credit.expires_s)
    credit.sent(first, 0.0)
    second = credit.next_request(1000)
    assert second == PullRequest(100, 4000, credit.expires_s)
    credit.sent(second, 0.0)
    assert (credit.outstanding, credit.outstanding_bytes) == (200, 8000)
    assert credit.next_request(1000) is None  # more than a batch outstanding
    for _ in range(3):
        assert not credit.delivered(1000)
    assert (credit.held, credit.held_bytes) == (3, 3000)
    assert (credit.outstanding, credit.outstanding_bytes) == (197, 5000)
    credit.ended()  # 409: the oldest request's max_bytes is reached
    assert (credit.outstanding, credit.outstanding_bytes) == (100, 4000)
    assert credit.next_request(1000) == PullRequest(100, 1000, credit.expires_s)
    for _ in range(3):
        credit.settled(1000)
    assert (credit.held, credit.held_bytes) == (0, 0)


def test_a_request_without_its_status_is_forgotten_only_once_expired_at_the_server() -> None:
    credit = PullCredit(max_messages=30, max_bytes=8000, batch=10, request_bytes=4000)
    for _ in range(2):
        request = credit.next_request(1000)
        assert request is not None
        credit.sent(request, 0.0)
    assert credit.next_request(1000) is None
    # Idle, nothing held: the requests still wait at the server (they may deliver).
    assert not credit.forget_expired(0.5)
    assert not credit.forget_expired(credit.expires_s)
    assert credit.next_request(1000) is None
    assert credit.forget_expired(credit.expires_s + STATUS_GRACE_S)
    assert credit.open_requests == 0 and credit.next_request(1000) is not None


def test_filling_a_request_ends_it() -> None:
    credit = PullCredit(max_messages=30, max_bytes=8000, batch=2, request_bytes=4000)
    request = credit.next_request(1000)
    assert request is not None and request.batch == 2
    credit.sent(request, 0.0)
    assert not credit.delivered(10)
    assert credit.delivered(10)  # the second of two: the server says nothing more
    assert credit.open_requests == 0 and (credit.outstanding, credit.outstanding_bytes) == (0, 0)


@dataclass
class Live:
    """A request as the server sees it."""

    messages: int
    nbytes: int
    expires_at: float


ops = st.lists(
    st.one_of(
        st.tuples(st.just("pull")),
        st.tuples(st.just("deliver"), st.integers(1, 3000)),
        st.tuples(st.just("settle"), st.integers(0, 1000)),
        st.tuples(st.just("tick"), st.floats(0, 2.5)),
        st.tuples(st.just("drop")),  # server restart / reconnect: statuses lost
    ),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(
    steps=ops,
    max_messages=st.integers(1, 60),
    batch=st.integers(1, 25),
    max_bytes=st.integers(1, 20_000),
    request_bytes=st.integers(1, 8_000),
    largest=st.integers(1, 3_000),
)
def test_never_more_than_the_budget_and_every_credit_comes_back(
    steps: list, max_messages: int, batch: int, max_bytes: int, request_bytes: int, largest: int
) -> None:
    credit = PullCredit(max_messages, max_bytes, batch, request_bytes)
    now = 0.0
    live: list[Live] = []  # the server's open requests, oldest first
    held: list[int] = []  # sizes of delivered, unsettled messages

    def expire() -> None:
        while live and live[0].expires_at <= now:
            live.pop(0)
            credit.ended()  # its 408
        credit.forget_expired(now)  # the source looks every turn of its pull loop

    def check() -> None:
        assert (credit.held, credit.held_bytes) == (len(held), sum(held))
        server_msgs = sum(r.messages for r in live)
        server_bytes = sum(r.nbytes for r in live)
        # What the server may still deliver plus what is held stays within the budgets.
        assert len(held) + server_msgs <= max_messages
        assert sum(held) + server_bytes <= max_bytes
        assert server_bytes <= 2 * request_bytes
        # The credit never believes less is outstanding than the server would deliver.
        assert credit.outstanding >= server_msgs and credit.outstanding_bytes >= server_bytes

    for step in steps:
        if step[0] == "pull":
            request = credit.next_request(largest)
            if request is not None:
                assert 1 <= request.batch <= batch
                assert 1 <= request.max_bytes <= request_bytes
                assert request.max_bytes >= min(largest, max_bytes // 2, request_bytes // 2)
                credit.sent(request, now)
                live.append(Live(request.batch, request.max_bytes, now + request.expires_s))
        elif step[0] == "deliver" and live:
            size = min(step[1], largest)
            head = live[0]
            if size <= head.nbytes:  # the server honours max_bytes
                head.messages -= 1
                head.nbytes -= size
                filled = head.messages == 0
                if filled:
                    live.pop(0)
                assert credit.delivered(size) == filled
                held.append(size)
            else:  # 409: the next message would pass the request's max_bytes
                live.pop(0)
                credit.ended()
        elif step[0] == "settle" and held:
            credit.settled(held.pop(step[1] % len(held)))
        elif step[0] == "tick":
            now += step[1]
            expire()
        elif step[0] == "drop":
            live.clear()
        check()
    # Everything settled and every request over: all credit is back, once.
    while held:
        credit.settled(held.pop())
    now += credit.expires_s + STATUS_GRACE_S
    expire()
    check()
    assert (credit.outstanding, credit.outstanding_bytes, credit.open_requests) == (0, 0, 0)
    assert credit.next_request(largest) is not None


def _state(credit: PullCredit) -> tuple[object, ...]:
    return (credit.held, credit.held_bytes, credit.outstanding, credit.outstanding_bytes,
            [(r.messages, r.nbytes, r.expires_at) for r in credit._open])  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    requests=st.lists(st.tuples(st.integers(1, 6), st.integers(0, 5_000)), max_size=5),
    runs=st.lists(st.lists(st.integers(0, 3_000), max_size=12), max_size=6),
)
def test_many_delivered_at_once_is_each_delivered_in_turn(
    requests: list[tuple[int, int]], runs: list[list[int]]
) -> None:
    """delivered_many (the source's path for a read of many messages) leaves exactly the
    state that delivered() message by message leaves, and says whether any filled a
    request: requests ending mid-run, bytes running out, messages after every request."""
    one, many = (PullCredit(10_000, 10**9, 100) for _ in range(2))
    for credit in (one, many):
        for batch, nbytes in requests:
            credit.sent(PullRequest(batch, nbytes, 2.0), 0.0)
    for sizes in runs:
        filled = [one.delivered(size) for size in sizes]
        assert many.delivered_many(sizes) == any(filled)
        assert _state(many) == _state(one)
