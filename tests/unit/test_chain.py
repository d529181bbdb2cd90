"""pipeline.chain: canonical bytes and verification detect every kind of tampering."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import msgspec

from ledger.chain import verify_rows
from pipeline.chain import link
from pipeline.stages import Message, Valid, process
from schemas.canonical import GENESIS, canonical_bytes, chain_hash
from schemas.rows import COLUMNS
from tests.support.events import README_EVENT

NOW = datetime(2026, 11, 26, 12, 0, 0, 5, tzinfo=UTC)


def chain(n: int) -> list[dict[str, Any]]:
    rows, prev = [], GENESIS
    for i in range(n):
        doc = json.loads(README_EVENT)
        doc["description"] = f"event {i}"
        out = process(Message(data=json.dumps(doc).encode(), stream_seq=i + 1), NOW)
        assert isinstance(out, Valid)
        rec = link(out.prepared, i + 1, prev)
        prev = rec[-1]
        row = dict(zip(COLUMNS, rec, strict=True))
        rows.append(row)
    return rows


def test_canonical_bytes_match_the_documented_form() -> None:
    row = chain(1)[0]
    doc = json.loads(canonical_bytes(row))
    assert list(doc) == sorted(doc)  # keys sorted
    assert doc["metadata"] == {"ip": "192.0.2.10"}
    assert doc["primary_resource"] == {"display_name": "", "id": "user-123", "type": "user"}
    assert doc["occurred_at"] == "2026-11-26T12:00:00.000005Z"
    assert doc["changes"] is None and "seq" not in doc and "hash" not in doc
    # An outside verifier: SHA-256 over 32 zero bytes + those bytes.
    assert hashlib.sha256(GENESIS + canonical_bytes(row)).digest() == row["hash"]
    # Compact: no spaces outside strings.
    assert b": " not in canonical_bytes(row) and b", " not in canonical_bytes(row)


def test_canonical_bytes_from_stored_text_equal_those_hashed() -> None:
    row = chain(1)[0]
    # What PostgreSQL hands back: jsonb re-orders keys and adds spaces.
    row2 = dict(row, related_resources=json.dumps(json.loads(row["related_resources"])))
    assert canonical_bytes(row2) == canonical_bytes(row)


def test_intact_chain_verifies() -> None:
    rows = chain(5)
    report = verify_rows("t", rows, (5, rows[-1]["hash"]))
    assert report.ok and report.events == 5 and report.first_break is None


def test_edited_row_is_detected() -> None:
    rows = chain(5)
    rows[2] = dict(rows[2], description="nothing happened here")
    report = verify_rows("t", rows, (5, rows[-1]["hash"]))
    assert not report.ok and report.first_break is not None
    assert report.first_break.seq == 3 and report.first_break.problem == "hash_mismatch"
    assert report.first_break.id == str(rows[2]["id"])
    assert report.first_break.found_hash == rows[2]["hash"].hex()


def test_edited_metadata_is_detected() -> None:
    rows = chain(3)
    rows[1] = dict(rows[1], metadata=msgspec.json.encode({"ip": "203.0.113.9"}).decode())
    report = verify_rows("t", rows, (3, rows[-1]["hash"]))
    assert report.first_break is not None and report.first_break.seq == 2


def test_deleted_row_is_detected() -> None:
    rows = chain(5)
    del rows[1]
    report = verify_rows("t", rows, (5, rows[-1]["hash"]))
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.problem) == (2, "seq_gap")


def test_deleted_last_row_is_detected_by_the_head() -> None:
    rows = chain(5)
    head = (5, rows[-1]["hash"])
    report = verify_rows("t", rows[:-1], head)
    assert report.first_break is not None and report.first_break.problem == "head_mismatch"


def test_inserted_row_is_detected() -> None:
    """A row inserted at seq 2 with a correctly chained hash (the forger re-hashes it over
    row 1), later rows renumbered and the head moved: the old row 2, now at seq 3, was
    chained to row 1, not to the forgery, so the break is there."""
    rows = chain(4)
    forged = dict(rows[1], description="forged", seq=2)
    forged["hash"] = chain_hash(rows[0]["hash"], canonical_bytes(forged))
    rows = [rows[0], forged, *(dict(r, seq=r["seq"] + 1) for r in rows[1:])]
    assert verify_rows("t", rows[:2], (2, forged["hash"])).ok  # the forgery alone verifies
    report = verify_rows("t", rows, (5, rows[-1]["hash"]))
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.problem) == (3, "hash_mismatch")


def test_reordered_rows_are_detected() -> None:
    rows = chain(4)
    a, b = rows[1], rows[2]
    rows[1], rows[2] = dict(b, seq=2), dict(a, seq=3)
    report = verify_rows("t", rows, (4, rows[-1]["hash"]))
    assert report.first_break is not None and report.first_break.problem == "hash_mismatch"
    assert report.first_break.seq == 2
