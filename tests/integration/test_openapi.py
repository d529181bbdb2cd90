"""OpenAPI: the checked-in document is current, and schemathesis finds no server errors
or schema violations against the live service (bounded examples)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from auditlog.embedded import free_port
from infra.db import create_pool
from query_api.openapi import CHECKED_IN, render
from tests.conftest import create_database
from tests.integration.test_query_api import make_event, store

pytestmark = pytest.mark.integration
ADMIN = "schemathesis-admin-token-0123456789"


def test_checked_in_openapi_is_current() -> None:
    assert CHECKED_IN.read_text() == render(), "run: python -m query_api.openapi"


async def _seed(dsn: str) -> None:
    pool = await create_pool(dsn, max_size=1)
    try:
        await store(pool, [make_event("acme", i) for i in range(30)])
    finally:
        await pool.close()


@pytest.fixture(scope="module")
def live_service(pg_server_url, template_db, nats_url, tmp_path_factory):
    async def prepare() -> str:
        dsn = await create_database(pg_server_url, template_db)
        await _seed(dsn)
        return dsn

    dsn = asyncio.run(prepare())
    port = free_port()
    tag = f"OAS{os.getpid()}"
    env = dict(os.environ, AUDIT_DATABASE_URL=dsn, AUDIT_NATS_URL=nats_url,
               AUDIT_ADMIN_TOKEN=ADMIN, AUDIT_HTTP_PORT=str(port), AUDIT_GRPC_PORT=str(free_port()),
               AUDIT_STATE_DIR=str(tmp_path_factory.mktemp("oas")), AUDIT_STREAM=tag,
               AUDIT_SUBJECT=f"{tag}.events", AUDIT_DLQ_STREAM=f"{tag}_DLQ",
               AUDIT_DLQ_SUBJECT=f"{tag}.dlq", AUDIT_LOG_LEVEL="WARNING",
               AUDIT_COMMIT_SUBJECT=f"{tag}.committed", AUDIT_WRITE_TIMEOUT_S="5")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "auditlog.cli", "run"], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=2)
            break
        except OSError:
            time.sleep(0.2)
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def api_schema(live_service):
    return schemathesis.openapi.from_url(f"{live_service}/openapi.json")


def test_api_conforms_to_its_openapi(api_schema) -> None:
    """Every operation, bounded examples, all of schemathesis's default checks."""
    ran = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def check(case) -> None:
            # Every default check but "schema-valid request rejected": semantic rules a
            # schema cannot express (a page token this service did not sign, start_time
            # after end_time, the admin naming no tenant) are correctly answered 400.
            case.call_and_validate(
                headers={"Authorization": f"Bearer {ADMIN}"},
                excluded_checks=[positive_data_acceptance],
            )

        check()
        ran += 1
    assert ran >= 9


def test_spec_served_equals_checked_in(live_service) -> None:
    with urllib.request.urlopen(f"{live_service}/openapi.json") as r:
        assert json.loads(r.read()) == json.loads(Path(CHECKED_IN).read_text())
