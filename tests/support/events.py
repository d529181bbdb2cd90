"""The README's event (``tests/data/readme_event.json``) and variants of it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.stages import Limits, Message, process

ROOT = Path(__file__).resolve().parents[2]
README_EVENT = (ROOT / "tests" / "data" / "readme_event.json").read_bytes()


def readme(**changes: object) -> dict:
    """The README's event as a document, with ``changes``."""
    doc = json.loads(README_EVENT)
    doc.update(changes)
    return doc


def event(tenant: str = "tenant-1", i: int = 0, **extra: object) -> bytes:
    """The README's event for ``tenant``, described as number ``i``, as bytes to publish."""
    doc = json.loads(README_EVENT)
    doc["tenant_id"] = tenant
    doc["description"] = f"event {i}"
    doc.update(extra)
    return json.dumps(doc).encode()


def storage_event(tenant: str, occurred: str | None = None) -> object:
    """The README's event for ``tenant`` validated and prepared for ``write_batch``, with
    the pipeline's occurred_at bounds opened wide (storage tests write any month)."""
    body = README_EVENT.replace(b"7e4e4e93-94ec-45bd-87ce-88ce3f689e3c", tenant.encode())
    if occurred:
        body = body.replace(b'"action"', f'"occurred_at": "{occurred}", "action"'.encode())
    wide = Limits(max_age=timedelta(days=36500), max_future_skew=timedelta(days=800))
    out = process(Message(data=body), datetime.now(UTC), wide)
    return out.prepared  # type: ignore[union-attr]
