"""The client's retry delays (pure)."""

from __future__ import annotations

from query_api.client import _backoff


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    assert _backoff(0) == 0.1 and _backoff(1) == 0.2
    assert _backoff(20) == 5.0
    assert _backoff(0, "3") == 3.0  # the server's Retry-After wins over a shorter backoff
    assert _backoff(0, "3600") == 60.0  # but never an absurd wait
    assert _backoff(0, "soon") == 0.1  # an unparseable header is ignored


# -- the shared exchange (pure: driven here by a scripted transport) -----------------------
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from query_api.client import (  # noqa: E402
    RETRY_STATUSES,
    ApiUnreachable,
    AuditApiError,
    Reply,
    Request,
    call,
)

_replies = st.one_of(
    st.builds(Reply, st.sampled_from([0, 400, 401, 404, 429, 500, 503, 200]),
              st.just(b'{"ok": true}'), st.sampled_from([None, "2", "x"])),
)  # fmt: skip


def drive(exchange, replies: list[Reply]) -> tuple[object, int, list[float]]:
    """Run an exchange against scripted replies: (result or error, requests, sleeps)."""
    sleeps: list[float] = []
    sent = 0
    try:
        step = next(exchange)
        while True:
            if isinstance(step, Request):
                sent += 1
                step = exchange.send(replies[sent - 1])
            else:
                sleeps.append(step)
                step = next(exchange)
    except StopIteration as done:
        return done.value, sent, sleeps
    except (AuditApiError, ApiUnreachable) as exc:
        return exc, sent, sleeps


@given(replies=st.lists(_replies, min_size=5, max_size=5), retries=st.integers(0, 4))
def test_calls_retry_exactly_the_retryable_failures(replies: list[Reply], retries: int) -> None:
    result, sent, sleeps = drive(call("GET", "/x", retries), replies)
    used = replies[:sent]
    # Every reply but the last was retryable, and each retry waited (≥ Retry-After).
    assert all(r.status == 0 or r.status in RETRY_STATUSES for r in used[:-1])
    assert len(sleeps) == sent - 1 <= retries
    for r, wait in zip(used, sleeps, strict=False):
        assert wait >= (2.0 if r.retry_after == "2" else 0.1)
    last = used[-1]
    if last.status == 200:
        assert result == {"ok": True}
    elif last.status == 0:
        assert isinstance(result, ApiUnreachable) and sent == retries + 1
    else:
        assert isinstance(result, AuditApiError) and result.status == last.status
        assert last.status not in RETRY_STATUSES or sent == retries + 1
