"""Synthetic audit events for `auditlog publish --synthetic` and the benchmarks."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator

ACTIONS = ["user.login", "user.logout", "document.updated", "role.granted", "invoice.paid",
           "api_key.created", "settings.changed", "file.downloaded"]  # fmt: skip
CATEGORIES = ["CATEGORY_AUTH", "CATEGORY_DATA", "CATEGORY_ACCESS_CONTROL", "CATEGORY_BILLING",
              "CATEGORY_CONFIGURATION", "CATEGORY_SECURITY"]  # fmt: skip
SEVERITIES = ["SEVERITY_INFO", "SEVERITY_INFO", "SEVERITY_NOTICE", "SEVERITY_WARNING",
              "SEVERITY_ERROR", "SEVERITY_SECURITY"]  # fmt: skip


def tenant_ids(n: int) -> list[str]:
    """Stable tenant ids (UUIDs) for ``n`` tenants."""
    rnd = random.Random(7)
    return [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(n)]


def synthetic_events(n: int, tenants: list[str], seed: int = 1) -> Iterator[bytes]:
    """``n`` ~600-byte events spread over ``tenants`` (uniformly)."""
    rnd = random.Random(seed)
    for i in range(n):
        t = tenants[rnd.randrange(len(tenants))]
        user = f"user-{rnd.randrange(100000)}"
        doc = {
            "tenant_id": t,
            "action": ACTIONS[i % len(ACTIONS)],
            "category": CATEGORIES[i % len(CATEGORIES)],
            "severity": SEVERITIES[rnd.randrange(len(SEVERITIES))],
            "actor": {"type": "ACTOR_TYPE_USER", "id": user, "display_name": "Jane Q. Doe"},
            "primary_resource": {
                "type": "document",
                "id": f"doc-{rnd.randrange(10**6)}",
                "display_name": "Quarterly plan",
            },
            "related_resources": [{"type": "folder", "id": f"folder-{i % 97}"}],
            "description": "Updated the sharing settings of a document in the workspace",
            "metadata": {
                "ip": f"192.0.2.{i % 250}",
                "session": uuid.uuid4().hex,
                "plan": "enterprise",
                "region": "eu-west-1",
            },
            "ip": f"192.0.2.{i % 250}",
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0",
            "request_id": uuid.uuid4().hex,
        }
        yield json.dumps(doc, separators=(",", ":")).encode()
