"""Talking to the in-process HTTP app as the admin."""

from __future__ import annotations

# The bootstrap admin token of the apps the integration fixtures start (``api``, ``stack``).
ADMIN = "admin-token-for-tests-0123456789"


def auth(token: str = ADMIN) -> dict[str, str]:
    """The ``Authorization`` header for ``token`` (the admin's by default)."""
    return {"Authorization": f"Bearer {token}"}
