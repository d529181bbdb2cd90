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
    # Unrolled, one join: the fastest Python found for this (measured against a loop over
    # the fields and against one NUL-joined encode split afterwards).
    i32 = _i32
    actor = event.actor
    primary = event.primary_resource
    tenant = event.tenant_id.encode()
    head = b"".join((_EVENT_COUNT, i32(len(tenant)), tenant,
                     _ts_field(8, occurred_us - PG_EPOCH_US), _UUID_LEN, event_id,
                     _SEQ_LEN))  # fmt: skip
    act, cat, sev = action.encode(), event.category.encode(), event.severity.encode()
    a_type, a_id, a_name = actor.type.encode(), actor.id.encode(), actor.display_name.encode()
    if primary is None:
        p_type = p_id = p_name = b""
    else:
        p_type, p_id = primary.type.encode(), primary.id.encode()
        p_name = primary.display_name.encode()
    desc, ip, agent = event.description.encode(), event.ip.encode(), event.user_agent.encode()
    request, trace = event.request_id.encode(), event.trace_id.encode()
    row = b"".join((
        head, _ts_field(8, received_us - PG_EPOCH_US), i32(len(act)), act, i32(len(cat)), cat,
        i32(len(sev)), sev, i32(len(a_type)), a_type, i32(len(a_id)), a_id, i32(len(a_name)),
        a_name, i32(len(p_type)), p_type, i32(len(p_id)), p_id, i32(len(p_name)), p_name,
        i32(len(related) + 1), _JSONB_VERSION, related, i32(len(desc)), desc,
        i32(len(metadata)), metadata,
        _NULL if changes is None else i32(len(changes)), changes or b"",
        i32(len(ip)), ip, i32(len(agent)), agent, i32(len(request)), request, i32(len(trace)),
        trace, _HASH_LEN,
    ))  # fmt: skip
    return row, len(head)


def claim_row(row: bytes, seq_at: int) -> bytes:
    """The ``audit.event_ids`` row (:data:`CLAIM_COLUMNS`) of an event row."""
    return _CLAIM_COUNT + row[2 : seq_at - 4]


def linked_row(row: bytes, seq_at: int, seq: int, hash_: bytes) -> bytes:
    """The complete row: ``seq`` and ``hash`` put in."""
    return row[:seq_at] + _i64(seq) + row[seq_at:] + hash_
