"""Dead letters: producer headers kept under a prefix, size bounded, replay restores."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dlq import (
    ORIGINAL_PREFIX,
    dead_letter,
    is_truncated,
    replay_headers,
    replay_subject,
)
from pipeline.stages import Dead, Message
from schemas.ids import IDEMPOTENCY_HEADER

NOW = datetime(2026, 1, 2, tzinfo=UTC)
_HEADER_NAME = st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-"),
                       min_size=1, max_size=40)  # fmt: skip
_HEADER_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=3000)


def _encoded_size(headers: dict[str, str], payload: bytes) -> int:
    block = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return len(block.encode()) + len(payload)


def test_producer_headers_never_travel_live() -> None:
    produced = {"Nats-Msg-Id": "k1", "Nats-Expected-Stream": "AUDIT", "X-Trace": "t"}
    msg = Message(data=b"{", stream_seq=9, subject="audit.events.acme", headers=produced)
    dead = Dead(msg=msg, reason="malformed_json", message="bad\nJSON", field="")
    h, payload = dead_letter(dead, "AUDIT", NOW, 1 << 20)
    assert payload == b"{"
    assert "Nats-Expected-Stream" not in h and "X-Trace" not in h
    assert h[ORIGINAL_PREFIX + "Nats-Expected-Stream"] == "AUDIT"
    assert h[ORIGINAL_PREFIX + "Nats-Msg-Id"] == "k1" and h[ORIGINAL_PREFIX + "X-Trace"] == "t"
    assert h["Nats-Msg-Id"] == "dlq:AUDIT:9"  # the service's own dedupe id
    assert h["Audit-Dlq-Reason"] == "malformed_json" and h["Audit-Dlq-Message"] == "bad JSON"
    assert h["Audit-Dlq-Stage"] == "validate" and h["Audit-Dlq-Subject"] == "audit.events.acme"
    assert h["Audit-Dlq-Time"] == "2026-01-02T00:00:00.000000Z"
    assert h["Audit-Dlq-Source"] == "AUDIT:9"
    assert not is_truncated(h)


def test_oversize_body_is_trimmed_with_size_and_digest() -> None:
    body = b"x" * 100_000
    dead = Dead(msg=Message(data=body, stream_seq=3), reason="too_large", message="big")
    h, payload = dead_letter(dead, "AUDIT", NOW, 65_536)
    assert _encoded_size(h, payload) <= 65_536 and body.startswith(payload) and payload
    assert h["Audit-Dlq-Original-Size"] == "100000"
    assert h["Audit-Dlq-Original-Sha256"] == hashlib.sha256(body).hexdigest()
    assert is_truncated(h)


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=70_000),
    headers=st.dictionaries(_HEADER_NAME, _HEADER_VALUE, max_size=12),
    limit=st.integers(min_value=16 * 1024, max_value=200_000),
    message=st.text(max_size=3000),
)
def test_a_dead_letter_always_fits_and_replay_restores_headers(body, headers, limit, message):
    dead = Dead(msg=Message(data=body, headers=headers or None, stream_seq=5),
                reason="invalid_field", message=message)  # fmt: skip
    h, payload = dead_letter(dead, "AUDIT", NOW, limit)
    assert _encoded_size(h, payload) <= limit
    assert body.startswith(payload)
    assert (payload == body) != is_truncated(h)
    restored = replay_headers(h, "AUDIT_DLQ", 77)
    assert restored["Nats-Msg-Id"] == "dlq-replay:AUDIT_DLQ:77"
    kept = {k[len(ORIGINAL_PREFIX) :] for k in h if k.startswith(ORIGINAL_PREFIX)}
    dropped = int(h.get("Audit-Dlq-Headers-Dropped", "0"))
    assert len(kept) + dropped == len(headers)
    for name in kept - {"Nats-Msg-Id"}:
        assert restored[name] == headers[name]
    if "Nats-Msg-Id" in kept:  # the producer's id names the event on replay
        assert restored[IDEMPOTENCY_HEADER] == headers.get(
            IDEMPOTENCY_HEADER, headers["Nats-Msg-Id"]
        )
    # The service's own headers are not replayed (a producer's own Audit-Dlq-* comes back).
    assert {k for k in restored if k.startswith("Audit-Dlq-")} <= set(headers)


def test_replay_keeps_legacy_original_id_and_subject() -> None:
    legacy = {"Audit-Original-Msg-Id": "k9", "Audit-Dlq-Reason": "x"}
    assert replay_headers(legacy, "D", 1)[IDEMPOTENCY_HEADER] == "k9"
    assert replay_subject({"Audit-Dlq-Subject": "audit.events.acme"}, "audit.events") == (
        "audit.events.acme"
    )
    assert replay_subject({"Audit-Dlq-Subject": "elsewhere.x"}, "audit.events") == "audit.events"
    assert replay_subject({}, "audit.events") == "audit.events"
