"""Fixtures of the integration tests: the HTTP app (``api``), the app with a pipeline
worker (``stack``) and a gRPC channel to it. Helpers are in ``tests/support/``."""

from __future__ import annotations

import grpc
import pytest

from auditlog.embedded import free_port
from query_api.rpc import start_grpc
from tests.support.api import ADMIN

# Re-exported for test modules that still import helpers from here; import them from
# tests.support.service (this conftest is for fixtures).
from tests.support.service import (  # noqa: F401
    DAY,
    NOT_TRAIL,
    NOW,
    PRODUCED,
    TRAIL_ACTIONS,
    Running,
    admin_count,
    dead_letters,
    due_month,
    make_event,
    publish_all,
    running_kafka_worker,
    running_worker,
    serving_app,
    store,
    wait_count,
)


@pytest.fixture
async def api(db_url, settings_factory, tmp_path):
    """The HTTP app (no worker), ``ADMIN`` its admin token."""
    settings = settings_factory(db_url, admin_token=ADMIN, state_dir=str(tmp_path))
    async with serving_app(settings) as client:
        yield client


@pytest.fixture
async def stack(db_url, settings_factory, tmp_path):
    """A running pipeline worker and the HTTP app, sharing NATS subjects (``ADMIN`` the
    admin token, ``stack.db_url`` the database)."""
    settings = settings_factory(db_url, admin_token=ADMIN, state_dir=str(tmp_path),
                                batch_max_latency_ms=5)  # fmt: skip
    async with running_worker(settings), serving_app(settings) as client:
        client.db_url = db_url  # type: ignore[attr-defined]
        yield client


@pytest.fixture
async def grpc_channel(stack):
    """A gRPC channel to ``stack``'s app, served on a free port."""
    port = free_port()
    server = await start_grpc(stack.server.app, "127.0.0.1", port)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield channel
    await channel.close()
    await server.stop(grace=1)
