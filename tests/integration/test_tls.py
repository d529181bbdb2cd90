"""TLS on the service's listeners (AUDIT_TLS_CERT/_KEY/_CLIENT_CA) with certificates made
here: HTTPS and gRPC over TLS work, plain connections are refused, mutual TLS refuses
clients without a certificate its CA signed; the CLI reaches an HTTPS service; asyncpg
honours ``sslmode``/``sslrootcert`` in a PostgreSQL DSN."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest
from aiohttp import web

from auditlog.embedded import PG_SYSTEM_USER, free_port
from infra.db import ensure_database, with_database
from infra.settings import Settings
from schemas.audit.v1 import audit_pb2 as pb
from schemas.audit.v1 import audit_pb2_grpc
from tests.support.databases import create_database
from tests.support.waits import eventually_sync
from tests.tlscerts import Pki, make_pki

pytestmark = pytest.mark.integration
ADMIN = "tls-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@dataclass
class Service:
    http: int
    grpc: int
    env: dict[str, str]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _context(pki: Pki, client: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if client:
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx


def get(url: str, context: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, Any]:  # fmt: skip
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5, context=context) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def refused(url: str, context: ssl.SSLContext | None = None) -> BaseException:
    """The error of a request that must get no HTTP response at all."""
    try:
        get(url, context)
    except urllib.error.HTTPError as exc:  # an HTTP status is a response: not refused
        raise AssertionError(f"{url} answered {exc.code}") from exc
    except (OSError, http.client.HTTPException) as exc:
        return exc
    raise AssertionError(f"{url} answered")


@contextlib.contextmanager
def service(pg_server_url: str, template_db: str, nats_url: str, state: Path,
            client: ssl.SSLContext, **tls: str) -> Iterator[Service]:  # fmt: skip
    """``auditlog api`` (no worker) with the TLS settings ``tls``, until the block ends
    (ready once ``client`` gets 200 from /readyz)."""
    dsn = asyncio.run(create_database(pg_server_url, template_db))
    port, grpc_port = free_port(), free_port()
    tag = f"TLS{os.getpid()}_{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env.update(AUDIT_DATABASE_URL=dsn, AUDIT_NATS_URL=nats_url, AUDIT_ADMIN_TOKEN=ADMIN,
               AUDIT_HTTP_PORT=str(port), AUDIT_GRPC_PORT=str(grpc_port),
               AUDIT_STATE_DIR=str(state), AUDIT_STREAM=tag, AUDIT_SUBJECT=f"{tag}.events",
               AUDIT_DLQ_STREAM=f"{tag}_DLQ", AUDIT_DLQ_SUBJECT=f"{tag}.dlq",
               AUDIT_COMMIT_SUBJECT=f"{tag}.committed", AUDIT_CHECKPOINT_STREAM=f"{tag}_CP",
               AUDIT_CHECKPOINT_SUBJECT=f"{tag}.checkpoints", **tls)  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "auditlog.cli", "api"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:

        def readyz() -> tuple[int, Any]:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            return get(f"https://127.0.0.1:{port}/readyz", client)

        eventually_sync(readyz, lambda r: r[0] == 200, timeout=60, interval=0.2,
                        ignore=(OSError, http.client.HTTPException),
                        what=f"/readyz on {port} answers 200")  # fmt: skip
        yield Service(port, grpc_port, env)
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
        assert proc.returncode == 0, out
    assert f"listening on https://127.0.0.1:{port}" in out, out


@pytest.fixture(scope="module")
def tls_service(pki, pg_server_url, template_db, nats_url, tmp_path_factory) -> Iterator[Service]:
    files = {"AUDIT_TLS_CERT": str(pki.server_cert), "AUDIT_TLS_KEY": str(pki.server_key)}
    state = tmp_path_factory.mktemp("tls")
    with service(pg_server_url, template_db, nats_url, state, _context(pki), **files) as svc:
        yield svc


@pytest.fixture(scope="module")
def mtls_service(pki, pg_server_url, template_db, nats_url, tmp_path_factory) -> Iterator[Service]:
    files = {"AUDIT_TLS_CERT": str(pki.server_cert), "AUDIT_TLS_KEY": str(pki.server_key),
             "AUDIT_TLS_CLIENT_CA": str(pki.ca)}  # fmt: skip
    state, client = tmp_path_factory.mktemp("mtls"), _context(pki, client=True)
    with service(pg_server_url, template_db, nats_url, state, client, **files) as svc:
        yield svc


def _health(target: str, creds: grpc.ChannelCredentials | None) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target) as ch:
        return (
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        )


def test_https_and_an_authenticated_call_work_with_the_ca(tls_service: Service, pki: Pki) -> None:
    base = f"https://127.0.0.1:{tls_service.http}"
    status, body = get(f"{base}/readyz", _context(pki))
    assert status == 200, body
    status, body = get(f"{base}/v1/audit/events?tenant_id=acme", _context(pki), AUTH)
    assert status == 200 and body["events"] == []
    # The server is checked: without the CA (system trust only) the client refuses it.
    assert "CERTIFICATE_VERIFY_FAILED" in str(
        refused(f"{base}/readyz", ssl.create_default_context())
    )


def test_plain_http_on_the_tls_port_gets_no_response(tls_service: Service) -> None:
    refused(f"http://127.0.0.1:{tls_service.http}/readyz")
    refused(f"http://127.0.0.1:{tls_service.http}/v1/audit/events?tenant_id=acme")


def test_grpc_over_tls_and_no_plaintext(tls_service: Service, pki: Pki) -> None:
    target = f"127.0.0.1:{tls_service.grpc}"
    creds = grpc.ssl_channel_credentials(pki.ca.read_bytes())
    assert _health(target, creds) == 1  # SERVING
    with grpc.secure_channel(target, creds) as ch:
        page = audit_pb2_grpc.AuditServiceStub(ch).ListEvents(
            pb.ListEventsRequest(tenant_id="acme"), timeout=10,
            metadata=(("authorization", f"Bearer {ADMIN}"),))  # fmt: skip
    assert list(page.events) == []
    with pytest.raises(grpc.RpcError) as err:
        _health(target, None)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_doctor_reaches_the_https_service(
    tls_service: Service, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    from auditlog.cli_ops import _check_http

    base = f"https://127.0.0.1:{tls_service.http}"
    monkeypatch.setenv("AUDIT_API_CA", str(pki.ca))
    _, ok, detail = _check_http(base)
    assert ok, detail
    monkeypatch.delenv("AUDIT_API_CA")
    assert not _check_http(base)[1]  # not trusted without the CA


def test_mutual_tls_refuses_clients_without_a_certificate_it_signed(
    mtls_service: Service, pki: Pki
) -> None:
    base = f"https://127.0.0.1:{mtls_service.http}"
    status, body = get(f"{base}/v1/audit/events?tenant_id=acme", _context(pki, client=True), AUTH)
    assert status == 200 and body["events"] == []
    refused(f"{base}/readyz", _context(pki))  # no client certificate
    stranger = _context(pki)
    stranger.load_cert_chain(str(pki.stranger_cert), str(pki.stranger_key))
    refused(f"{base}/readyz", stranger)  # signed by another CA
    refused(f"http://127.0.0.1:{mtls_service.http}/readyz")

    target = f"127.0.0.1:{mtls_service.grpc}"
    ca = pki.ca.read_bytes()
    with_cert = grpc.ssl_channel_credentials(ca, pki.client_key.read_bytes(),
                                             pki.client_cert.read_bytes())  # fmt: skip
    assert _health(target, with_cert) == 1
    with pytest.raises(grpc.RpcError) as err:
        _health(target, grpc.ssl_channel_credentials(ca))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_cli_presents_its_client_certificate(mtls_service: Service, pki: Pki) -> None:
    env = dict(mtls_service.env, AUDIT_API_CA=str(pki.ca), AUDIT_API_CERT=str(pki.client_cert),
               AUDIT_API_KEY=str(pki.client_key))  # fmt: skip
    cmd = [sys.executable, "-m", "auditlog.cli", "events", "list", "--tenant-id", "acme",
           "-o", "json"]  # fmt: skip
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == []
    del env["AUDIT_API_CERT"], env["AUDIT_API_KEY"]
    no_cert = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert no_cert.returncode != 0 and "cannot reach" in no_cert.stderr


async def test_metrics_only_listener_uses_the_same_tls(pki: Pki) -> None:
    """Pipeline-only workers serve /metrics over TLS too (same certificate, same client CA)."""
    from auditlog.runtime import _listen

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text="up 1\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    port = free_port()
    settings = Settings(metrics_port=port, tls_cert=str(pki.server_cert),
                        tls_key=str(pki.server_key), tls_client_ca=str(pki.ca))  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        await _listen(app, settings, False, stack)
        url = f"https://127.0.0.1:{port}/metrics"
        async with aiohttp.ClientSession() as session:
            async with session.get(url, ssl=_context(pki, client=True)) as resp:
                assert resp.status == 200 and "up 1" in await resp.text()
            with pytest.raises(aiohttp.ClientError):
                async with session.get(url.replace("https", "http")) as resp:
                    pytest.fail(f"plain HTTP answered {resp.status}")
            with pytest.raises(aiohttp.ClientError):
                async with session.get(url, ssl=_context(pki)) as resp:
                    pytest.fail(f"no client certificate, answered {resp.status}")


def _ssl_postgres_bindir() -> Path | None:
    """PostgreSQL binaries built with OpenSSL: AUDIT_TEST_PG_SSL_BINDIR, else the newest
    of /usr/lib/postgresql/*/bin (pgserver's wheel is built without SSL)."""
    named = os.environ.get("AUDIT_TEST_PG_SSL_BINDIR")
    if named:
        return Path(named)
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/postgres")]
    return max(found, key=lambda p: int(p.parent.name), default=None)


@contextlib.contextmanager
def postgres_with_tls(pki: Pki, root: Path) -> Iterator[str]:
    """A throwaway PostgreSQL with ``ssl = on`` and the test's server certificate; yields
    the superuser's DSN (no ssl parameters)."""
    bindir = _ssl_postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL built with OpenSSL (set AUDIT_TEST_PG_SSL_BINDIR)")
    user = None
    data, root = root / "data", root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    (root / "pw").write_text("tls-test-password\n")
    for name in ("server.pem", "server-key.pem"):
        shutil.copy(pki.server_cert.parent / name, root / name)
        (root / name).chmod(0o600)
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
            from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

        user = PG_SYSTEM_USER
        ensure_user_exists(user)
        ensure_prefix_permissions(root)
        for path in (root, *root.iterdir()):
            shutil.chown(path, user, user)

    def run(*cmd: str) -> None:
        subprocess.run([str(bindir / cmd[0]), *cmd[1:]], check=True, user=user, cwd=root,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60)  # fmt: skip

    port = free_port()
    run("initdb", "-D", str(data), "-U", "postgres", "--auth-host=scram-sha-256",
        f"--pwfile={root / 'pw'}", "--no-instructions")  # fmt: skip
    run("pg_ctl", "-D", str(data), "-w", "-l", str(root / "log"), "start", "-o",
        f"-h 127.0.0.1,127.0.0.2 -p {port} -c unix_socket_directories='' -c ssl=on "
        f"-c ssl_cert_file={root}/server.pem -c ssl_key_file={root}/server-key.pem")  # fmt: skip
    try:
        yield f"postgresql://postgres:tls-test-password@127.0.0.1:{port}/postgres"
    finally:
        run("pg_ctl", "-D", str(data), "-m", "immediate", "stop")


async def _over_tls(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
    finally:
        await conn.close()


async def test_postgresql_dsn_sslmode_verify_full_and_sslrootcert(pki: Pki, tmp_path: Path) -> None:
    """What the README promises for AUDIT_DATABASE_URL: asyncpg reads ``sslmode`` and
    ``sslrootcert`` from the DSN, verifies the server's certificate and name, and refuses a
    server its CA did not sign; the service's own DSN rewrites keep those parameters."""
    with postgres_with_tls(pki, tmp_path / "pg") as plain:
        dsn = f"{plain}?sslmode=verify-full&sslrootcert={pki.ca}"
        assert await _over_tls(dsn)
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncpg.connect(f"{plain}?sslmode=verify-full&sslrootcert={pki.other_ca}")
        # A name the certificate does not carry: verify-full refuses, verify-ca does not.
        other_name = plain.replace("127.0.0.1", "127.0.0.2")
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncpg.connect(f"{other_name}?sslmode=verify-full&sslrootcert={pki.ca}")
        made = with_database(dsn, "made_over_tls")
        await ensure_database(made)  # connects to "postgres" through with_database(dsn)
        assert await _over_tls(made)
