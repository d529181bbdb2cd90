"""Archiving a month before retention drops it: for each tenant with events in the month,
an auditor bundle (``schemas.bundle``) of the seq range that holds them, gzipped, written
to a directory or an S3-compatible bucket, then read back from there and verified with
the service's own verifier keys (the verifier's choice: never the keys an archive names
itself). :func:`archive_month` returns only when every archive verifies; anything else
raises, and the drop does not happen.

Object names: ``<tenant token>/<partition>-<from seq>-<to seq>.bundle.json.gz`` under the
destination (a tenant id with ``.`` written ``~``). The range runs from the tenant's first
seq in the month to the first signed checkpoint at or after its last, so it may hold
events of other months too (backdated events, later ones) and cross earlier drops' gaps:
the bundle verifies on its own with ``auditlog verify-bundle``.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from infra.errors import ArchiveError
from infra.settings import Settings
from ledger.checkpoints import origin
from ledger.proofs import build_bundle
from schemas import bundle
from schemas.ids import tenant_token

log = logging.getLogger(__name__)


class Destination(Protocol):
    """Where archives go (blocking calls; run in a thread)."""

    def put(self, name: str, data: bytes) -> None: ...
    def get(self, name: str) -> bytes: ...
    def where(self, name: str) -> str: ...


class DirDestination:
    """A local (or mounted) directory; files are written whole (temporary file, fsync,
    rename), so a crash leaves no half archive under the final name."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def put(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def get(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def where(self, name: str) -> str:
        return str(self.root / name)


class S3Destination:
    """An S3 bucket (or any S3-compatible server, ``AUDIT_ARCHIVE_S3_ENDPOINT``)."""

    def __init__(self, url: str, endpoint: str = "") -> None:
        import boto3  # only when archiving to S3

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client: Any = boto3.client("s3", endpoint_url=endpoint or None)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data,
                               ContentType="application/json", ContentEncoding="gzip")  # fmt: skip

    def get(self, name: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        return body

    def where(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name)}"


def destination(settings: Settings) -> Destination | None:
    """The configured destination (``AUDIT_RETENTION_ARCHIVE``), or None."""
    url = settings.retention_archive
    if not url:
        return None
    if url.startswith("s3://"):
        return S3Destination(url, settings.archive_s3_endpoint)
    return DirDestination(url.removeprefix("file://"))


async def _signed_end(conn: asyncpg.Connection, tenant: str, last: int) -> int:
    """The first checkpoint size at or after ``last`` that does not fall inside a dropped
    range (a bundle ends where a signed root can be checked).

    Raises:
        ArchiveError: none (the plan only lets signed months be dropped).
    """
    while True:
        size = await conn.fetchval("SELECT min(size) FROM audit.checkpoints WHERE tenant_id = $1"
                                   " AND size >= $2", tenant, last)  # fmt: skip
        if size is None:
            raise ArchiveError(f"{tenant}: no signed checkpoint covers seq {last} yet")
        gap_end = await conn.fetchval(
            "SELECT last_seq FROM audit.retention_gaps WHERE tenant_id = $1 AND first_seq <= $2"
            " AND last_seq > $2", tenant, size,
        )  # fmt: skip
        if gap_end is None:
            return int(size)
        last = gap_end


async def archive_month(conn: asyncpg.Connection, settings: Settings, partition: str,
                        tenants: Sequence[str], dest: Destination,
                        trusted: Sequence[str]) -> list[str]:  # fmt: skip
    """Archive ``tenants``' events of ``partition`` to ``dest`` and verify each archive as
    read back; returns where each went.

    ``conn`` is an owner connection (a member of ``auditlog_app``). ``trusted``: the
    verifier keys an archive must be signed by (the archive's own ``public_keys`` never
    count).

    Raises:
        ArchiveError: no ``trusted`` key, or a write, a read-back or a verification failed.
    """
    if not trusted:
        raise ArchiveError("no verifier key to check archives with: nothing is archived")
    written = []
    for tenant in tenants:
        first, last = await conn.fetchrow(f"SELECT min(seq), max(seq) FROM audit.{partition}"
                                          " WHERE tenant_id = $1", tenant)  # fmt: skip
        last = await _signed_end(conn, tenant, last)
        try:
            async with conn.transaction(readonly=True, isolation="repeatable_read"):
                await conn.execute("SET LOCAL ROLE auditlog_app")
                await conn.execute("SELECT set_config('audit.tenant_id', $1, true)", tenant)
                b = await build_bundle(conn, tenant, origin(settings, tenant), first, last)
        except ValueError as exc:
            raise ArchiveError(f"cannot archive {partition} of {tenant}: {exc}") from exc
        name = f"{tenant_token(tenant)}/{partition}-{first}-{last}.bundle.json.gz"
        data = await asyncio.to_thread(gzip.compress, bundle.encode(b), 6)
        try:
            await asyncio.to_thread(dest.put, name, data)
            back = await asyncio.to_thread(dest.get, name)
            report = await asyncio.to_thread(bundle.verify, gzip.decompress(back), trusted)
        except Exception as exc:  # any storage failure: the drop must not happen
            raise ArchiveError(f"archive {dest.where(name)}: {exc!r}") from exc
        if (report.status != "intact" or report.trusted != bundle.TRUST_PINNED
                or report.events != b.manifest.events):  # fmt: skip
            raise ArchiveError(f"archive {dest.where(name)} does not verify as read back: "
                               f"{report.first_break or report.cannot_check}")  # fmt: skip
        log.info("retention: archived %s of %s to %s (%d events, %d bytes)", partition, tenant,
                 dest.where(name), report.events, len(data))  # fmt: skip
        written.append(dest.where(name))
    return written
