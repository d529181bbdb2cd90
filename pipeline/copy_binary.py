"""PostgreSQL binary COPY of the service's rows, written in Python: the pure path, and the
oracle of the compiled one (``pipeline/_fastpath.c`` writes the same bytes; tested).

The format (PostgreSQL documentation, ``COPY``, "Binary Format"): the 11-byte signature
``PGCOPY\\n\\377\\r\\n\\0``, an int32 of flags (0) and an int32 header-extension length (0);
per row an int16 field count, then per field an int32 length (-1 for NULL) and the value
in its type's binary form; then the int16 -1 trailer. All integers are big-endian. Forms
used here: ``text`` and ``json`` are UTF-8 bytes; ``jsonb`` is a version byte (1) and the
JSON text; ``uuid`` its 16 bytes; ``timestamptz`` and ``bigint`` an int64 (timestamps in
microseconds since 2000-01-01 UTC); ``bytea`` the bytes.

An event's row is built before the flush transaction without its ``seq`` and ``hash``
values (known only once its tenant's chain head is locked): :func:`event_row` returns it
with the offset where ``seq`` goes; the hash goes at the end (its length is already
there). The claim row of ``audit.event_ids`` is the row's first three fields.
"""

from __future__ import annotations

import struct
from typing import Final

from schemas.events import AuditEvent

HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
TRAILER: Final = b"\xff\xff"
PG_EPOCH_US: Final = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970-01-01
EVENT_FIELDS: Final = 23  # pipeline.chain.COLUMNS
# The columns of audit.event_ids a claim row fills, in the order of an event row's first
# three fields (COPY takes any column order).
CLAIM_COLUMNS: Final = ("tenant_id", "occurred_at", "id")
HASH_BYTES: Final = 32

_i32: Final = struct.Struct(">i").pack
_i64: Final = struct.Struct(">q").pack
_ts_field: Final = struct.Struct(">iq").pack
_EVENT_COUNT: Final = struct.pack(">h", EVENT_FIELDS)
_CLAIM_COUNT: Final = struct.pack(">h", len(CLAIM_COLUMNS))
_UUID_LEN: Final = _i32(16)
_SEQ_LEN: Final = _i32(8)
_HASH_LEN: Final = _i32(HASH_BYTES)
_NULL: Final = _i32(-1)
_JSONB_VERSION: Final = b"\x01"


def _text(parts: list[bytes], value: str) -> None:
    data = value.encode()
    parts.append(_i32(len(data)))
    parts.append(data)


def event_row(event: AuditEvent, *, event_id: bytes, action: str, occurred_us: int,
              received_us: int, metadata: bytes, changes: bytes | None,
              related: bytes) -> tuple[bytes, int]:  # fmt: skip
    """The binary COPY row of ``event`` in ``pipeline.chain.COLUMNS`` order, without the
    values of ``seq`` and ``hash``, and the offset where ``seq``'s 8 bytes go.

    Args:
        event: the decoded event (its strings as given).
        event_id: the event id's 16 bytes.
        action: the stored (lower-cased) action.
        occurred_us / received_us: UTC microseconds since 1970-01-01.
        metadata / changes / related: the stored JSON texts (changes None: NULL).
    """
    tenant = event.tenant_id.encode()
    occurred = _ts_field(8, occurred_us - PG_EPOCH_US)
    head = b"".join((_EVENT_COUNT, _i32(len(tenant)), tenant, occurred, _UUID_LEN, event_id,
                     _SEQ_LEN))  # fmt: skip
    actor = event.actor
    primary = event.primary_resource
    parts = [head, _ts_field(8, received_us - PG_EPOCH_US)]
    for value in (action, event.category, event.severity, actor.type, actor.id,
                  actor.display_name, primary.type if primary else "",
                  primary.id if primary else "",
                  primary.display_name if primary else ""):  # fmt: skip
        _text(parts, value)
    parts += (_i32(len(related) + 1), _JSONB_VERSION, related)
    _text(parts, event.description)
    parts += (_i32(len(metadata)), metadata)
    parts += (_i32(len(changes)), changes) if changes is not None else (_NULL,)
    for value in (event.ip, event.user_agent, event.request_id, event.trace_id):
        _text(parts, value)
    parts.append(_HASH_LEN)
    return b"".join(parts), len(head)


def claim_row(row: bytes, seq_at: int) -> bytes:
    """The ``audit.event_ids`` row (:data:`CLAIM_COLUMNS`) of an event row."""
    return _CLAIM_COUNT + row[2 : seq_at - 4]


def linked_row(row: bytes, seq_at: int, seq: int, hash_: bytes) -> bytes:
    """The complete row: ``seq`` and ``hash`` put in."""
    return row[:seq_at] + _i64(seq) + row[seq_at:] + hash_
