"""The client's retry delays (pure)."""

from __future__ import annotations

from query_api.client import _backoff


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    assert _backoff(0) == 0.1 and _backoff(1) == 0.2
    assert _backoff(20) == 5.0
    assert _backoff(0, "3") == 3.0  # the server's Retry-After wins over a shorter backoff
    assert _backoff(0, "3600") == 60.0  # but never an absurd wait
    assert _backoff(0, "soon") == 0.1  # an unparseable header is ignored
