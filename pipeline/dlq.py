"""Dead-letter messages: the format published to ``audit.dlq`` (stream ``AUDIT_DLQ``).

The payload is the original message's bytes, unchanged. The original headers are kept
and these are added (documented in ``schemas/README.md``):

- ``Audit-Dlq-Reason``: machine code (``malformed_json``, ``unknown_enum``, ``db_rejected``...)
- ``Audit-Dlq-Message``: human-readable explanation (one line, at most 1 KiB)
- ``Audit-Dlq-Field``: dotted path of the offending field, when known
- ``Audit-Dlq-Stage``: ``validate`` or ``flush``
- ``Audit-Dlq-Time``: RFC 3339 UTC time it was dead-lettered
- ``Audit-Dlq-Source``: ``<stream>:<stream sequence>`` of the original message
- ``Audit-Original-Msg-Id``: the original ``Nats-Msg-Id``, if any
- ``Nats-Msg-Id``: ``dlq:<stream>:<sequence>`` so a redelivered bad message is stored once
"""

from __future__ import annotations

from datetime import datetime

from pipeline.chain import format_ts
from pipeline.stages import Dead

_MAX_HEADER = 1024


def _one_line(text: str) -> str:
    return " ".join(text.split())[:_MAX_HEADER]


def dead_letter_headers(dead: Dead, stream: str, now: datetime) -> dict[str, str]:
    """Headers of the dead letter for ``dead`` (payload: ``dead.msg.data`` unchanged)."""
    headers = dict(dead.msg.headers or {})
    original_id = headers.pop("Nats-Msg-Id", None)
    if original_id:
        headers["Audit-Original-Msg-Id"] = original_id
    headers.update(
        {
            "Audit-Dlq-Reason": dead.reason,
            "Audit-Dlq-Message": _one_line(dead.message),
            "Audit-Dlq-Field": dead.field,
            "Audit-Dlq-Stage": dead.stage,
            "Audit-Dlq-Time": format_ts(now),
            "Audit-Dlq-Source": f"{stream}:{dead.msg.stream_seq}",
        }
    )
    if dead.msg.stream_seq:
        headers["Nats-Msg-Id"] = f"dlq:{stream}:{dead.msg.stream_seq}"
    return headers
