"""Streams out, the pure formats: records, webhook signatures, and the bodies each kind of
receiver gets. No sockets here (``pipeline.outbound`` sends, ``pipeline.streams`` batches).

Every record carries its ``id``, so a receiver that sees a record twice (delivery is at
least once) drops the repeat:

- ``{"type": "event", "id": <event id>, "seq": N, "tenant_id": ..., "event": {...}}``:
  the event as the read API answers it;
- ``{"type": "gap", "id": "gap:<tenant>:<first>-<last>", "first_seq", "last_seq",
  "reason": "retention", "partition", "dropped_at", "note"}``: seqs retention dropped
  before the stream got to them; ``note`` is the signed gap record (``auditlog verify``'s).

Webhook: ``POST`` of ``{"stream_id", "tenant_id", "first_seq", "last_seq", "records":
[...]}`` with ``Audit-Signature: t=<unix>,v1=<hex>[,v1=<hex>]``, each ``v1`` the
HMAC-SHA256, under one of the stream's signing secrets (two while a rotation overlaps), of
``"<t>." + body``. Splunk HEC: newline-separated ``{"time", "source", "sourcetype",
"event", "fields"}`` objects. S3: one gzipped NDJSON object per batch (one record a
line), named so that keys sort by time, then seq (:func:`object_key`).
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec

from schemas.ids import tenant_token

SIGNATURE_HEADER = "Audit-Signature"
SIGNATURE_TOLERANCE_S = 300  # what receivers should accept between t= and their clock
_enc = msgspec.json.Encoder()


@dataclass(frozen=True)
class Row:
    """One committed event of the stream's tenant, as read for delivery."""

    seq: int
    id: str
    occurred_at: datetime
    received_at: datetime
    severity: str
    category: str
    action: str
    doc: str  # the event's JSON (audit.event_json)


@dataclass(frozen=True)
class Gap:
    """A run of seqs retention dropped (``audit.retention_gaps``) before delivery."""

    first_seq: int
    last_seq: int
    partition: str
    dropped_at: datetime
    note: str


Item = Row | Gap


def last_seq(item: Item) -> int:
    """The highest seq ``item`` accounts for."""
    return item.seq if isinstance(item, Row) else item.last_seq


def record(tenant_id: str, item: Item) -> bytes:
    """The JSON record of one event or gap (see the module docstring)."""
    if isinstance(item, Row):
        doc = msgspec.Raw(item.doc.encode())
        return _enc.encode({"type": "event", "id": item.id, "seq": item.seq,
                            "tenant_id": tenant_id, "event": doc})  # fmt: skip
    return _enc.encode({
        "type": "gap", "id": f"gap:{tenant_id}:{item.first_seq}-{item.last_seq}",
        "tenant_id": tenant_id, "first_seq": item.first_seq, "last_seq": item.last_seq,
        "reason": "retention", "partition": item.partition,
        "dropped_at": item.dropped_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "note": item.note,
    })  # fmt: skip


@dataclass(frozen=True)
class Batch:
    """Records ready to send: they cover the tenant's seqs ``first_seq..last_seq`` (the
    cursor moves to ``last_seq`` once the receiver took them)."""

    stream_id: str
    tenant_id: str
    first_seq: int
    last_seq: int
    items: tuple[Item, ...]  # what is sent (events the filters passed, gaps)
    records: tuple[bytes, ...]

    @property
    def time(self) -> datetime:
        """When the batch's first event was received (its gap's drop time if it has no
        event; the epoch if empty): what S3 keys sort by."""
        for item in self.items:
            if isinstance(item, Row):
                return item.received_at
        for item in self.items:
            if isinstance(item, Gap):
                return item.dropped_at
        return datetime.fromtimestamp(0, UTC)


# -- webhook -----------------------------------------------------------------------------------
def webhook_body(batch: Batch) -> bytes:
    """The JSON body of one webhook delivery."""
    head = _enc.encode({"stream_id": batch.stream_id, "tenant_id": batch.tenant_id,
                        "first_seq": batch.first_seq, "last_seq": batch.last_seq})  # fmt: skip
    return head[:-1] + b',"records":[' + b",".join(batch.records) + b"]}"


def signature(secrets: Sequence[str], timestamp: int, body: bytes) -> str:
    """The ``Audit-Signature`` value: ``t=<timestamp>`` and one ``v1=`` per secret (the
    current one first, then those still valid during a rotation's overlap)."""
    signed = str(timestamp).encode() + b"." + body
    macs = [hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets]
    return ",".join([f"t={timestamp}", *(f"v1={m}" for m in macs)])


def verify_signature(header: str, secret: str, body: bytes, now: float,
                     tolerance_s: float = SIGNATURE_TOLERANCE_S) -> bool:  # fmt: skip
    """What a receiver does (the README has the same in a few lines): true when one
    ``v1`` of ``header`` is the HMAC of ``"<t>." + body`` under ``secret`` and ``t`` is
    within ``tolerance_s`` of ``now`` (a replayed old delivery is refused)."""
    fields = [part.partition("=") for part in header.split(",")]
    stamps = [v for k, _, v in fields if k.strip() == "t"]
    if len(stamps) != 1 or not stamps[0].isdigit():
        return False
    if abs(now - int(stamps[0])) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), stamps[0].encode() + b"." + body,
                        hashlib.sha256).hexdigest()  # fmt: skip
    return any(hmac.compare_digest(expected, v.strip()) for k, _, v in fields
               if k.strip() == "v1")  # fmt: skip


# -- Splunk HTTP Event Collector -------------------------------------------------------------
def hec_body(batch: Batch, source_type: str = "auditlog", index: str = "") -> bytes:
    """HEC's ``/services/collector/event`` body: one JSON object per record, newline
    separated, ``time`` the event's occurred_at (a gap's drop time) in epoch seconds."""
    lines = []
    for item, rec in zip(batch.items, batch.records, strict=True):
        when = item.occurred_at if isinstance(item, Row) else item.dropped_at
        head: dict[str, object] = {"time": round(when.timestamp(), 6), "source": "auditlog",
                                   "sourcetype": source_type}  # fmt: skip
        if index:
            head["index"] = index
        head["fields"] = {"tenant_id": batch.tenant_id, "stream_id": batch.stream_id,
                          "record_id": item.id if isinstance(item, Row) else
                          f"gap:{batch.tenant_id}:{item.first_seq}-{item.last_seq}"}  # fmt: skip
        lines.append(_enc.encode(head)[:-1] + b',"event":' + rec + b"}")
    return b"\n".join(lines)


# -- S3 ----------------------------------------------------------------------------------------
def object_key(prefix: str, batch: Batch) -> str:
    """``[<prefix>/]<tenant token>/<stream>/<yyyy>/<mm>/<dd>/<yyyymmddThhmmss.ffffffZ>-<first
    seq>-<last seq>.ndjson.gz``: keys sort by the batch's time, then seq (20-digit seqs);
    a retried batch has the same key (it overwrites, never adds)."""
    t = batch.time.astimezone(UTC)
    name = (f"{tenant_token(batch.tenant_id)}/{batch.stream_id}/{t:%Y/%m/%d}/"
            f"{t:%Y%m%dT%H%M%S.%f}Z-{batch.first_seq:020d}-{batch.last_seq:020d}"
            ".ndjson.gz")  # fmt: skip
    prefix = prefix.strip("/")
    return f"{prefix}/{name}" if prefix else name


def ndjson_gz(batch: Batch) -> bytes:
    """The S3 object of one batch: its records, one a line, gzipped."""
    return gzip.compress(b"".join(r + b"\n" for r in batch.records), compresslevel=6, mtime=0)
