"""Dead-letter messages: the format published to ``audit.dlq`` (stream ``AUDIT_DLQ``).

Pure functions: what a dead letter holds, and how a replay restores the original. The
payload is the original message's bytes, unchanged unless it would not fit the server's
``max_payload`` with the added headers (then trimmed, with its size and SHA-256 kept).

The producer's headers never travel as live headers (a ``Nats-Expected-Stream`` or
``Nats-Msg-Id`` of theirs must not steer the dead-letter publish): each is kept as
``Audit-Orig-<name>``. The service adds (documented in ``schemas/README.md``):

- ``Audit-Dlq-Reason``: machine code (``malformed_json``, ``unknown_enum``, ``db_rejected``...)
- ``Audit-Dlq-Message``: human-readable explanation (one line, at most 1 KiB)
- ``Audit-Dlq-Field``: dotted path of the offending field, when known
- ``Audit-Dlq-Stage``: ``validate``, ``process`` or ``flush``
- ``Audit-Dlq-Time``: RFC 3339 UTC time it was dead-lettered
- ``Audit-Dlq-Source``: ``<stream>:<stream sequence>`` of the original message (Kafka:
  ``<topic>/<partition>:<offset>``)
- ``Audit-Dlq-Subject``: the subject it was published on
- ``Audit-Dlq-Original-Size`` / ``Audit-Dlq-Original-Sha256`` / ``Audit-Dlq-Truncated``:
  only when the payload was trimmed to fit
- ``Audit-Dlq-Headers-Dropped``: how many producer headers did not fit (rare)
- ``Nats-Msg-Id``: ``dlq:<stream>:<sequence>`` so a redelivered bad message is stored once
  (NATS only; a Kafka dead letter carries ``dlq:<topic>/<partition>:<offset>`` as its key)
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Final

from pipeline.stages import Dead, position
from schemas.canonical import format_ts
from schemas.ids import IDEMPOTENCY_HEADER

ORIGINAL_PREFIX: Final = "Audit-Orig-"
DLQ_PREFIX: Final = "Audit-Dlq-"
_LEGACY_ORIGINAL_ID: Final = "Audit-Original-Msg-Id"  # dead letters written before 0.2
_MAX_HEADER = 1024
# Producer headers kept on a dead letter, at most (encoded); the rest are counted.
MAX_ORIGINAL_HEADER_BYTES: Final = 8 * 1024
# Room for the protocol line and NATS/1.0 framing beyond the headers we count.
_FRAME_SLACK: Final = 512


def _one_line(text: str) -> str:
    return " ".join(text.split())[:_MAX_HEADER]


def _header_bytes(headers: dict[str, str]) -> int:
    # "NATS/1.0\r\n" + "Name: value\r\n"... + "\r\n"
    return 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())


def dead_letter(dead: Dead, stream: str, now: datetime,
                max_bytes: int) -> tuple[dict[str, str], bytes]:  # fmt: skip
    """Headers and payload of the dead letter for ``dead``, together at most ``max_bytes``.

    Args:
        dead: the message and why it is dead.
        stream: the source stream's name (for ``Audit-Dlq-Source`` and the dedupe id).
        now: when it is dead-lettered.
        max_bytes: the most the server accepts for one message (``max_payload``, or the
            dead-letter stream's ``max_msg_size`` if smaller).
    """
    msg = dead.msg
    headers: dict[str, str] = {
        "Audit-Dlq-Reason": dead.reason,
        "Audit-Dlq-Message": _one_line(dead.message),
        "Audit-Dlq-Field": dead.field,
        "Audit-Dlq-Stage": dead.stage,
        "Audit-Dlq-Time": format_ts(now),
        "Audit-Dlq-Source": position(msg, stream),
    }
    if msg.subject:
        headers["Audit-Dlq-Subject"] = msg.subject
    if msg.stream_seq and not msg.origin:
        headers["Nats-Msg-Id"] = f"dlq:{stream}:{msg.stream_seq}"
    dropped = 0
    budget = MAX_ORIGINAL_HEADER_BYTES
    for name, value in (msg.headers or {}).items():
        key = ORIGINAL_PREFIX + name
        size = len(key.encode()) + len(value.encode()) + 4
        if size > budget:
            dropped += 1
            continue
        budget -= size
        headers[key] = value
    if dropped:
        headers["Audit-Dlq-Headers-Dropped"] = str(dropped)
    payload = msg.data
    room = max_bytes - _header_bytes(headers) - _FRAME_SLACK
    if len(payload) > room:
        headers["Audit-Dlq-Original-Size"] = str(len(payload))
        headers["Audit-Dlq-Original-Sha256"] = hashlib.sha256(payload).hexdigest()
        headers["Audit-Dlq-Truncated"] = "true"
        room = max_bytes - _header_bytes(headers) - _FRAME_SLACK
        payload = payload[: max(0, room)]
    return headers, payload


def replay_headers(dead_headers: dict[str, str], dlq_stream: str, seq: int) -> dict[str, str]:
    """The headers a replay of dead letter ``seq`` publishes with.

    The producer's original headers come back as live headers, except their
    ``Nats-Msg-Id``: it becomes the ``Audit-Idempotency-Key`` (the event keeps its identity)
    and a fresh ``Nats-Msg-Id`` of ``dlq-replay:<dlq stream>:<seq>`` lets the replay past
    NATS's duplicate window once (a repeated replay is dropped).
    """
    out: dict[str, str] = {}
    for name, value in dead_headers.items():
        if name.startswith(ORIGINAL_PREFIX):
            out[name[len(ORIGINAL_PREFIX) :]] = value
    original_id = out.pop("Nats-Msg-Id", None) or dead_headers.get(_LEGACY_ORIGINAL_ID)
    if original_id:
        out.setdefault(IDEMPOTENCY_HEADER, original_id)
    out["Nats-Msg-Id"] = f"dlq-replay:{dlq_stream}:{seq}"
    return out


def replay_subject(dead_headers: dict[str, str], default: str) -> str:
    """Where a replay goes: the original subject when it was under ``default``, else it."""
    subject = dead_headers.get("Audit-Dlq-Subject", "")
    if subject == default or subject.startswith(default + "."):
        return subject
    return default


def is_truncated(dead_headers: dict[str, str]) -> bool:
    """True when the dead letter's payload was trimmed (replaying it needs a fixed body)."""
    return dead_headers.get("Audit-Dlq-Truncated") == "true"
