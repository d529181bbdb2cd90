"""pipeline.nats_fast: the nats-py internals it relies on are still there, as checked.

Fails loudly on a nats-py upgrade that moves them: read the new release's
``nats/aio/client.py`` and ``subscription.py``, adapt ``pipeline/nats_fast.py``, then widen
``CHECKED_VERSIONS`` and the pin in ``pyproject.toml`` together.
"""

from __future__ import annotations

import pytest
from nats.aio.client import Client

from pipeline import nats_fast


def test_the_installed_nats_py_has_the_internals_the_fast_path_uses() -> None:
    assert nats_fast.internals_problems() == []


@pytest.mark.parametrize("name", ["_process_msg", "_process_headers", "_send_command"])
def test_a_changed_internal_is_reported(monkeypatch, name: str) -> None:
    async def changed(self, something_else) -> None:
        pass

    monkeypatch.setattr(Client, name, changed)
    assert any(f"Client.{name}" in p for p in nats_fast.internals_problems())


def test_a_nats_py_outside_the_checked_range_is_reported(monkeypatch) -> None:
    monkeypatch.setattr(nats_fast, "version", lambda _: "2.99.0")
    assert any("outside the checked" in p for p in nats_fast.internals_problems())
