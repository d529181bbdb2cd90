"""The stored row layout of ``audit.events``: the column order the ingest COPY writes and
the ledger's row reads (verification, proofs, bundles) select, and named indexes into it.

``canonical_bytes`` (schemas/canonical.py) reads rows in this layout, so it is part of the
contract an outside verifier recomputes hashes from (schemas/README.md).
"""

from __future__ import annotations

from typing import Final

# Column order of audit.events (COPY and verification).
COLUMNS: Final = (
    "tenant_id",
    "occurred_at",
    "id",
    "seq",
    "received_at",
    "action",
    "category",
    "severity",
    "actor_type",
    "actor_id",
    "actor_display_name",
    "resource_type",
    "resource_id",
    "resource_display_name",
    "related_resources",
    "description",
    "metadata",
    "changes",
    "ip",
    "user_agent",
    "request_id",
    "trace_id",
    "hash",
)
HASH_INDEX: Final = COLUMNS.index("hash")
SEQ_INDEX: Final = COLUMNS.index("seq")
OCCURRED_INDEX: Final = COLUMNS.index("occurred_at")
RECEIVED_INDEX: Final = COLUMNS.index("received_at")


# A stored row as canonical_bytes reads it (JSON columns as their text).
ROW_SELECT: Final = ", ".join(
    f"{c}::text" if c in ("metadata", "changes", "related_resources") else c for c in COLUMNS
)
