"""Tenant-bound producers: NATS users limited to their tenant's subject cannot write for others.

A nats-server with users and permissions (a config this test writes) shows the setup the
README describes: the service connects with its own credentials (``AUDIT_NATS_USER`` /
``AUDIT_NATS_PASSWORD``), each producer may publish only on ``<subject>.<tenant token>``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.errors import Error as NatsError

from auditlog.embedded import free_port, nats_server_binary
from schemas.ids import tenant_subject
from tests.support.events import README_EVENT
from tests.support.service import admin_count, dead_letters, running_worker, wait_count
from tests.support.waits import eventually

pytestmark = pytest.mark.integration


def _users(subject: str) -> str:
    def producer(name: str, tenant: str) -> str:
        allow = json.dumps([tenant_subject(subject, tenant)])
        return (f'{{user: "{name}", password: "{name}-pw", permissions: {{'
                f'publish: {{allow: {allow}}}, subscribe: {{allow: ["_INBOX.>"]}}}}}}')  # fmt: skip

    service = '{user: "service", password: "service-pw"}'
    a, b = producer("producer-a", "tenant-a"), producer("producer-b", "tenant-b")
    return ", ".join([service, a, b])


@contextlib.contextmanager
def nats_with_users(root: Path, subject: str) -> Iterator[str]:
    port = free_port()
    conf = root / "nats-auth.conf"
    conf.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'jetstream {{ store_dir: "{root / "js"}" }}\n'
        f"accounts {{ AUDIT {{ jetstream: enabled, users: [{_users(subject)}] }} }}\n"
    )
    proc = subprocess.Popen([nats_server_binary(), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def event(tenant: str) -> bytes:
    doc = json.loads(README_EVENT)
    doc["tenant_id"] = tenant
    return json.dumps(doc).encode()


async def connect_as(url: str, user: str) -> nats.NATS:
    """A connection as ``user`` (the server may still be starting)."""
    return await eventually(
        lambda: nats.connect(url, user=user, password=f"{user}-pw", allow_reconnect=False,
                             error_cb=_quiet),
        timeout=10, interval=0.1, ignore=(OSError, NatsError), what=f"connected as {user}",
    )  # fmt: skip


async def _quiet(exc: Exception) -> None:  # permission violations are expected here
    return None


async def test_a_producer_cannot_write_into_another_tenant(db_url, settings_factory, tmp_path):
    base = settings_factory(db_url)
    with nats_with_users(tmp_path, base.subject) as url:
        await connect_as(url, "service")  # wait until it listens
        settings = base.replace(nats_url=url, nats_user="service", nats_password="service-pw")
        async with running_worker(settings):
            a = await connect_as(url, "producer-a")
            b = await connect_as(url, "producer-b")
            try:
                js_a, js_b = a.jetstream(timeout=1), b.jetstream(timeout=1)
                await js_a.publish(tenant_subject(settings.subject, "tenant-a"), event("tenant-a"))
                await js_b.publish(tenant_subject(settings.subject, "tenant-b"), event("tenant-b"))
                # Not allowed: another tenant's subject, or the shared one.
                for subject in (tenant_subject(settings.subject, "tenant-b"), settings.subject):
                    with pytest.raises((NatsError, TimeoutError)):
                        await js_a.publish(subject, event("tenant-b"))
                # Allowed subject, another tenant's event: dead-lettered, never stored.
                await js_a.publish(tenant_subject(settings.subject, "tenant-a"), event("tenant-b"))
                assert await wait_count(db_url, 2) == 2
                await eventually(lambda: _dead(url, settings), timeout=10, interval=0.1,
                                 what="a dead letter")  # fmt: skip
            finally:
                await a.close()
                await b.close()
        letters = await _dead(url, settings)
    assert [m.headers["Audit-Dlq-Reason"] for m in letters] == ["tenant_mismatch"]
    sql = "SELECT count(*) FROM audit.events WHERE tenant_id = $1"
    assert await admin_count(db_url, sql, "tenant-a") == 1
    assert await admin_count(db_url, sql, "tenant-b") == 1


async def _dead(url: str, settings) -> list:
    with contextlib.suppress(Exception):
        return await dead_letters(url, settings)
    return []
