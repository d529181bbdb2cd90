"""Streams out, the network: sends one batch to a webhook, a Splunk HTTP Event Collector or
an S3-compatible bucket, and says how it went. The only module of the stream that speaks
HTTP (as a client; ``pyproject.toml``'s import-linter contract names it).

Every request goes through one :class:`Outbound` session, which:

- resolves names itself and connects only to addresses :class:`AddressPolicy` allows,
  checked on every new connection (not only when the stream was made: a name that starts
  resolving to a private address is refused then — DNS rebinding);
- speaks TLS only, verifying against ``AUDIT_STREAMS_CA_FILE`` when set (else the system's
  trust store);
- never follows a redirect (a 3xx is a refused delivery that says where it pointed);
- times out (``AUDIT_STREAMS_TIMEOUT_S`` for the whole request, connecting within 5 s);
- reads at most ``AUDIT_STREAMS_MAX_RESPONSE_BYTES`` of any answer, and ignores proxies
  from the environment.

S3 requests are signed with SigV4 by botocore's signer and sent by this same session, so
they get the same checks (boto3's own HTTP client would resolve names by itself).
"""

from __future__ import annotations

import hashlib
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from infra.settings import Settings
from pipeline import stream_format as fmt
from pipeline.stream_rules import AddressPolicy, DestinationError, numeric_host

USER_AGENT = "auditlog-streams/1"


@dataclass(frozen=True)
class Outcome:
    """How one delivery went.

    Attributes:
        ok: the receiver took the batch (2xx): the cursor may move.
        status: the receiver's HTTP status (None: no answer).
        error: why not, for the stream's state and log ("" when ok).
        refused: retrying cannot help until something changes (a redirect, a refused
            address): the stream pauses at once.
        retry_after: seconds the receiver asked to wait (429/503 ``Retry-After``).
        seconds: how long the attempt took.
    """

    ok: bool
    status: int | None = None
    error: str = ""
    refused: bool = False
    retry_after: float | None = None
    seconds: float = 0.0


class SafeResolver(AbstractResolver):
    """Resolves with aiohttp's default resolver, then refuses the whole answer when any
    address is not allowed (:meth:`AddressPolicy.check_host`)."""

    def __init__(self, policy: AddressPolicy, base: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.base = base or DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: Any = 0) -> list[ResolveResult]:  # fmt: skip
        found = await self.base.resolve(host, port, family)
        self.policy.check_host(host, [r["host"] for r in found])
        return found

    async def close(self) -> None:
        await self.base.close()


def client_ssl(settings: Settings) -> ssl.SSLContext:
    """Verifying TLS context: ``AUDIT_STREAMS_CA_FILE`` when set, else the system's CAs."""
    return ssl.create_default_context(cafile=settings.streams_ca_file or None)


class Outbound:
    """The session every stream delivery goes through (see the module docstring)."""

    def __init__(self, settings: Settings, resolver: AbstractResolver | None = None) -> None:
        self.settings = settings
        self.policy = AddressPolicy(settings.streams_allow_private)
        self.max_response = settings.streams_max_response_bytes
        connector = aiohttp.TCPConnector(
            resolver=SafeResolver(self.policy, resolver), ssl=client_ssl(settings),
            limit=0, ttl_dns_cache=10,
        )  # fmt: skip
        total = settings.streams_timeout_s
        self.session = aiohttp.ClientSession(
            connector=connector, trust_env=False, auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=total, connect=min(5.0, total)),
            headers={"User-Agent": USER_AGENT},
        )  # fmt: skip

    async def close(self) -> None:
        """Close the session and its connections."""
        await self.session.close()

    def _check_literal(self, url: str) -> None:
        """Hosts written as addresses never reach the resolver: check them here."""
        host = urlsplit(url).hostname or ""
        ip = numeric_host(host)
        if ip is not None:
            why = self.policy.refusal(ip)
            if why is not None:
                raise DestinationError(f"{host}: {why}")

    async def send(self, method: str, url: str, body: bytes,
                   headers: dict[str, str]) -> Outcome:  # fmt: skip
        """One request; never raises for what a receiver or the network does."""
        started = time.monotonic()
        try:
            if not url.startswith("https://"):
                raise DestinationError("only https:// destinations are delivered to")
            self._check_literal(url)
            async with self.session.request(method, url, data=body, headers=headers,
                                            allow_redirects=False) as resp:  # fmt: skip
                answer = await self._read_some(resp)
                return self._outcome(resp, answer, time.monotonic() - started)
        except DestinationError as exc:
            return Outcome(False, error=f"refused: {exc}", refused=True,
                           seconds=time.monotonic() - started)  # fmt: skip
        except TimeoutError:
            return Outcome(False, error=f"timed out after {self.settings.streams_timeout_s:g}s",
                           seconds=time.monotonic() - started)  # fmt: skip
        except aiohttp.ClientSSLError as exc:
            return Outcome(False, error=f"TLS failed: {exc}", seconds=time.monotonic() - started)
        except (aiohttp.ClientError, OSError) as exc:
            return Outcome(False, error=f"{type(exc).__name__}: {exc}"[:500],
                           seconds=time.monotonic() - started)  # fmt: skip

    async def _read_some(self, resp: aiohttp.ClientResponse) -> bytes:
        """At most ``max_response`` bytes of the answer (the rest is never read: the
        connection is dropped instead of drained)."""
        out = b""
        while len(out) < self.max_response:
            chunk = await resp.content.read(self.max_response - len(out))
            if not chunk:
                return out
            out += chunk
        resp.close()
        return out

    def _outcome(self, resp: aiohttp.ClientResponse, answer: bytes, seconds: float) -> Outcome:
        status = resp.status
        if 200 <= status < 300:
            return Outcome(True, status, seconds=seconds)
        text = answer[:300].decode("utf-8", "replace").strip()
        if 300 <= status < 400:
            where = resp.headers.get("Location", "nowhere")[:300]
            return Outcome(False, status, f"answered {status} (redirect to {where}): redirects"
                           " are not followed; point the stream at the final URL", refused=True,
                           seconds=seconds)  # fmt: skip
        retry = None
        if status in (429, 503):
            value = resp.headers.get("Retry-After", "")
            retry = float(value) if value.isdigit() else None
        return Outcome(False, status, f"answered {status}" + (f": {text}" if text else ""),
                       retry_after=retry, seconds=seconds)  # fmt: skip


# -- the three kinds -------------------------------------------------------------------------
async def send_webhook(out: Outbound, url: str, signing_secrets: list[str],
                       batch: fmt.Batch, now: float | None = None) -> Outcome:  # fmt: skip
    """POST the batch as JSON, signed with every secret in ``signing_secrets``."""
    body = fmt.webhook_body(batch)
    stamp = int(now if now is not None else time.time())
    headers = {"Content-Type": "application/json",
               fmt.SIGNATURE_HEADER: fmt.signature(signing_secrets, stamp, body),
               "Audit-Stream-Id": batch.stream_id,
               "Audit-Batch": f"{batch.first_seq}-{batch.last_seq}"}  # fmt: skip
    return await out.send("POST", url, body, headers)


def hec_url(url: str) -> str:
    """The collector's event endpoint: ``url`` as given, or with
    ``/services/collector/event`` when it names no path."""
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        return url.rstrip("/") + "/services/collector/event"
    return url


async def send_hec(out: Outbound, url: str, token: str, batch: fmt.Batch,
                   source_type: str = "auditlog", index: str = "") -> Outcome:  # fmt: skip
    """POST the batch to a Splunk HTTP Event Collector (``Authorization: Splunk <token>``)."""
    body = fmt.hec_body(batch, source_type, index)
    # HEC wants a GUID channel when the token has indexer acknowledgement on: one per stream.
    channel = str(uuid.uuid5(uuid.NAMESPACE_URL, f"auditlog:stream:{batch.stream_id}"))
    headers = {"Authorization": f"Splunk {token}", "Content-Type": "application/json",
               "X-Splunk-Request-Channel": channel}  # fmt: skip
    return await out.send("POST", hec_url(url), body, headers)


def s3_object_url(endpoint: str, bucket: str, region: str, key: str) -> str:
    """Path-style under a custom endpoint; AWS virtual-hosted style otherwise (path style
    for bucket names with dots, which a wildcard certificate does not cover)."""
    path = quote(key, safe="/-_.~")
    if endpoint:
        return f"{endpoint.rstrip('/')}/{bucket}/{path}"
    if "." in bucket:
        return f"https://s3.{region}.amazonaws.com/{bucket}/{path}"
    return f"https://{bucket}.s3.{region}.amazonaws.com/{path}"


def sigv4_headers(url: str, body: bytes, region: str, access_key_id: str,
                  secret_access_key: str, content_type: str) -> dict[str, str]:  # fmt: skip
    """The headers of a SigV4-signed S3 ``PUT`` of ``body`` to ``url`` (botocore's
    signer; the payload hash is signed too)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="PUT", url=url, data=body, headers={
        "Content-Type": content_type,
        "X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest(),
    })  # fmt: skip
    S3SigV4Auth(Credentials(access_key_id, secret_access_key), "s3", region).add_auth(request)
    return {k: v for k, v in request.headers.items() if k.lower() != "host"}


async def put_s3(out: Outbound, destination: dict[str, Any], secret_access_key: str,
                 batch: fmt.Batch) -> Outcome:  # fmt: skip
    """PUT the batch as one gzipped NDJSON object (:func:`stream_format.object_key`)."""
    key = fmt.object_key(destination.get("prefix", ""), batch)
    url = s3_object_url(destination.get("endpoint") or "", destination["bucket"],
                        destination.get("region") or "us-east-1", key)  # fmt: skip
    body = fmt.ndjson_gz(batch)
    headers = sigv4_headers(url, body, destination.get("region") or "us-east-1",
                            destination["access_key_id"], secret_access_key,
                            "application/gzip")  # fmt: skip
    return await out.send("PUT", url, body, headers)
