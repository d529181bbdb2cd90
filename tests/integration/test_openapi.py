"""OpenAPI: the checked-in document is current, and schemathesis with every check finds
nothing against the live service (bounded examples), in-process and through its CLI, both
under the checked-in ``schemathesis.toml`` (the rules no schema can say)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi import stateful

from auditlog.embedded import free_port
from infra.db import create_pool
from query_api.openapi import CHECKED_IN, OPERATIONS, render
from tests.support.databases import create_database
from tests.support.events import ROOT
from tests.support.service import make_event, store
from tests.support.waits import eventually_sync

pytestmark = pytest.mark.integration
ADMIN = "schemathesis-admin-token-0123456789"
CONFIG = ROOT / "schemathesis.toml"  # what `st run` picks up from the repository root


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

    def healthz() -> int:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
            return r.status

    eventually_sync(healthz, timeout=60, interval=0.2, ignore=(OSError,),
                    what=f"{url}/healthz answers")  # fmt: skip
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def api_schema(live_service):
    return schemathesis.openapi.from_url(f"{live_service}/openapi.json",
                                         config=SchemathesisConfig.from_path(CONFIG))  # fmt: skip


AUTH = {"Authorization": f"Bearer {ADMIN}"}
load_all_checks()
ALL_CHECKS = CHECKS.get_all()
EXAMPLES = 25
CLI_EXAMPLES = 20


def test_api_conforms_to_its_openapi(api_schema) -> None:
    """Every operation, bounded seeded examples, every schemathesis check (positive data
    accepted, negative data refused, status codes, headers, response schemas...)."""
    ran = 0
    seen: list[tuple[str, int]] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def check(case) -> None:
            response = case.call_and_validate(headers=_auth_unless_mutated(case),
                                              checks=ALL_CHECKS)  # fmt: skip
            seen.append((case.operation.label, response.status_code))

        check()
        ran += 1
    assert ran == len(OPERATIONS)
    # Not vacuous: every operation ran its examples, and most of them got past validation.
    labels = {label for label, _ in seen}
    assert len(labels) == len(OPERATIONS), labels
    ok = [label for label, status in seen if status < 300]
    print(f"{len(seen)} calls, {len(ok)} answered 2xx")
    assert {label for label in ok} >= {
        "POST /v1/audit/events",
        "GET /v1/audit/events",
        "POST /v1/admin/keys",
        "GET /v1/audit/stats",
    }, ok


def _auth_unless_mutated(case) -> dict[str, str]:
    """The admin token, except for a case whose headers schemathesis made invalid on
    purpose (e.g. without Authorization): adding it would turn that case valid."""
    meta = case.meta
    for location, info in meta.components.items() if meta else ():
        if getattr(location, "name", str(location)).lower() == "header" and \
                not info.mode.is_positive:  # fmt: skip
            return {}
    return AUTH


def _root(operation, node, produced) -> bool:
    # schemathesis's own rule for where sequences start, without its guess that a body's
    # tenant_id is a foreign key to a "Tenant" resource no operation creates (which would
    # keep every sequence from starting at a write).
    return operation.method == "post" or (
        operation.method == "get" and not operation.path_parameters
    )


def test_api_conforms_statefully(api_schema, monkeypatch) -> None:
    """Sequences of calls linked by the document (a written event read back, a created key
    listed and revoked) with every check on each response."""
    monkeypatch.setattr(stateful, "is_likely_root_transition", _root)
    # The document's own links only (inference guesses links from field names).
    api_schema.config.phases.stateful.inference.algorithms = []
    base = api_schema.as_state_machine()
    seen: set[tuple[str, int]] = set()

    class Workflow(base):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case):
            return {"headers": _auth_unless_mutated(case)}

        def validate_response(self, response, case, **kwargs):
            seen.add((case.operation.label, response.status_code))
            case.validate_response(response, checks=ALL_CHECKS)

    Workflow.run(settings=settings(max_examples=EXAMPLES, stateful_step_count=5,
                                   deadline=None, database=None, derandomize=True,
                                   suppress_health_check=list(HealthCheck)))  # fmt: skip
    print(sorted(seen))
    # The links were followed: a created key revoked, a written event read back.
    assert ("DELETE /v1/admin/keys/{key_id}", 200) in seen
    assert ("GET /v1/audit/events/{id}", 200) in seen


def test_spec_served_equals_checked_in(live_service) -> None:
    with urllib.request.urlopen(f"{live_service}/openapi.json") as r:
        assert json.loads(r.read()) == json.loads(Path(CHECKED_IN).read_text())


def test_cli_with_every_check_passes(live_service) -> None:
    """The command the README gives, bounded: `st run <url>/openapi.json --checks all` with
    the admin token, run from the repository root so the checked-in schemathesis.toml
    applies (every phase: coverage, fuzzing, stateful)."""
    cli = Path(sys.executable).with_name("st")
    cmd = [str(cli), "run", f"{live_service}/openapi.json", "--checks", "all",
           "-H", f"Authorization: Bearer {ADMIN}", "--max-examples", str(CLI_EXAMPLES),
           "--seed", "1"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, NO_COLOR="1"))  # fmt: skip
    print(done.stdout[-3000:])
    assert f"Configuration:    {CONFIG}" in done.stdout, done.stdout[-20000:]
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
