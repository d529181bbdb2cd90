"""Receivers for the streams-out tests, all over TLS with certificates the tests make
(``tests.tlscerts``): an HTTPS server that records what it is sent and answers as a test
says (``Receiver``: webhooks and an HEC-shaped collector), and an S3-compatible server (moto)
behind TLS (``TlsMoto``)."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from auditlog.embedded import free_port
from tests.tlscerts import Pki


@dataclass
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int = 0  # what was answered (0: the client went away first)

    @property
    def stream_id(self) -> str:
        return self.headers.get("Audit-Stream-Id", "")

    def records(self) -> list[dict[str, Any]]:
        """The records of a webhook delivery."""
        return json.loads(self.body)["records"]


Behaviour = Callable[[web.Request, "Receiver"], Awaitable[web.StreamResponse | None]]


@dataclass
class Receiver:
    """An HTTPS server on 127.0.0.1 (``url``: ``https://localhost:<port>``) recording every
    request. ``behaviour``, when set, may answer instead of the default 200 (or wait first);
    it can be changed while the server runs. ``inflight`` / ``max_inflight`` count requests
    in progress per ``Audit-Stream-Id`` (concurrency of one stream's deliveries)."""

    pki: Pki
    behaviour: Behaviour | None = None
    requests: list[Received] = field(default_factory=list)
    inflight: dict[str, int] = field(default_factory=dict)
    max_inflight: dict[str, int] = field(default_factory=dict)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        got = Received(request.path_qs, dict(request.headers), await request.read(), time.time())
        self.requests.append(got)
        key = got.stream_id or request.headers.get("Authorization", "")
        self.inflight[key] = self.inflight.get(key, 0) + 1
        self.max_inflight[key] = max(self.max_inflight.get(key, 0), self.inflight[key])
        try:
            resp = await self.behaviour(request, self) if self.behaviour else None
            resp = resp or web.json_response({"text": "Success", "code": 0})
            got.status = resp.status
            return resp
        finally:
            self.inflight[key] -= 1

    async def start(self) -> Receiver:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=ctx).start()
        self.url = f"https://localhost:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def taken(self, stream_id: str | None = None) -> list[Received]:
        """The requests answered 2xx (of one stream), in arrival order."""
        return [r for r in self.requests if 200 <= r.status < 300
                and (stream_id is None or r.stream_id == stream_id)]  # fmt: skip


class TlsMoto:
    """moto's S3-compatible server behind TLS (the server certificate of ``pki``), in a
    thread; ``endpoint`` is ``https://localhost:<port>``."""

    def __init__(self, pki: Pki) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(pki.server_cert, pki.server_key)
        port = free_port()
        app = DomainDispatcherApplication(create_backend_app)
        self.server = make_server("127.0.0.1", port, app, threaded=True, ssl_context=ctx)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.endpoint = f"https://localhost:{port}"
        self.ca = str(pki.ca)

    def __enter__(self) -> TlsMoto:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join(10)

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test-secret-key-0123",
                            verify=self.ca)  # fmt: skip
