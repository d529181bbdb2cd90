"""Signed checkpoints: each tenant's log as an RFC 6962 Merkle tree over its event hashes,
signed as C2SP checkpoints, stored in PostgreSQL and copied to a witness stream.

Every ``AUDIT_CHECKPOINT_INTERVAL_S`` (and at shutdown) the process holding the lease (a
transaction-scoped PostgreSQL advisory lock: one signer at a time, whatever the number of
workers or replicas) extends each tenant's tree with the event hashes stored since its
last checkpoint (``seq`` order; leaf index = seq - 1), stores the tree's new tiles and
frontier, and signs ``<origin>/<tenant token>``, the size and the root. After the commit
the signed note is published to the ``AUDIT_CHECKPOINTS`` stream (subject
``<checkpoint subject>.<tenant token>``, no age limit: a copy outside the database) and,
with ``AUDIT_CHECKPOINT_FILE``, appended to that file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import nats.js.api as jsapi
from nats.js.errors import NoStreamResponseError, NotFoundError

from infra.metrics import Metrics
from infra.nats_streams import create_stream, ensure_replicas
from infra.settings import Settings
from infra.signing import Signer
from ledger.merkle import TILE_HEIGHT, tile_of
from ledger.merkle import extend as extend_tree
from schemas import tlog
from schemas.ids import tenant_token

log = logging.getLogger(__name__)

LEASE_KEY = 0x6175_6469_7463_6B70  # pg advisory lock id of the checkpointer lease
TENANTS_PER_CYCLE = 500
T = TypeVar("T")


def origin(settings: Settings, tenant_id: str) -> str:
    """The checkpoint origin (log name) of a tenant's log."""
    return f"{settings.log_origin}/{tenant_token(tenant_id)}"


def witness_subject(settings: Settings, tenant_id: str) -> str:
    """The witness stream subject of a tenant's checkpoints."""
    return f"{settings.checkpoint_subject}.{tenant_token(tenant_id)}"


async def ensure_checkpoint_stream(nc: Any, settings: Settings) -> None:
    """Create the witness stream when missing (file storage, no age or size limit, with
    ``AUDIT_STREAM_REPLICAS`` copies), or raise its replicas (``infra.nats_streams``)."""
    js = nc.jetstream()
    try:
        info = await js.stream_info(settings.checkpoint_stream)
    except NotFoundError:
        await create_stream(
            js, settings, name=settings.checkpoint_stream,
            subjects=[settings.checkpoint_subject + ".*"], storage=jsapi.StorageType.FILE,
            retention=jsapi.RetentionPolicy.LIMITS, discard=jsapi.DiscardPolicy.OLD,
        )  # fmt: skip
    else:
        await ensure_replicas(js, settings, info)


# -- tiles -------------------------------------------------------------------------------
class Tiles:
    """Node hashes read from ``audit.merkle_tiles`` of one tenant, fetched on demand.

    :meth:`run` evaluates a computation over a :data:`schemas.tlog.NodeGetter`, fetching
    the tiles it turned out to need and trying again (a few rounds at most: proofs touch
    O(log n) tiles).
    """

    def __init__(self, conn: asyncpg.Connection, tenant_id: str) -> None:
        self.conn = conn
        self.tenant_id = tenant_id
        self.tiles: dict[tuple[int, int], bytes] = {}

    def _get(self, missing: set[tuple[int, int]]) -> tlog.NodeGetter:
        def get(level: int, index: int) -> bytes:
            base = level - level % TILE_HEIGHT
            width = 1 << (level - base)
            first = index * width
            tl, ti, pos = tile_of(base, first)
            data = self.tiles.get((tl, ti))
            if data is None or len(data) < (pos + width) * 32:
                missing.add((tl, ti))
                return bytes(32)
            nodes = [data[(pos + k) * 32 : (pos + k + 1) * 32] for k in range(width)]
            return tlog.root_of(nodes)

        return get

    async def run(self, compute: Callable[[tlog.NodeGetter], T]) -> T:
        """``compute(get)`` with every node it reads present.

        Raises:
            LookupError: a node the stored tiles do not hold (beyond the stored tree).
        """
        for _ in range(64):
            missing: set[tuple[int, int]] = set()
            result = compute(self._get(missing))
            if not missing:
                return result
            fetched = missing - self.tiles.keys()
            if not fetched:
                raise LookupError("the stored tree does not reach that far")
            rows = await self.conn.fetch(
                "SELECT level, idx, hashes FROM audit.merkle_tiles WHERE tenant_id = $1"
                " AND (level, idx) IN (SELECT * FROM unnest($2::smallint[], $3::bigint[]))",
                self.tenant_id, [m[0] for m in fetched], [m[1] for m in fetched],
            )  # fmt: skip
            for r in rows:
                self.tiles[(r["level"], r["idx"])] = bytes(r["hashes"])
            for m in fetched:
                self.tiles.setdefault(m, b"")
        raise LookupError("tiles did not converge")


# -- the checkpointer ----------------------------------------------------------------------
@dataclass(frozen=True)
class Made:
    """A checkpoint just signed and stored."""

    tenant_id: str
    size: int
    note: str


class Checkpointer:
    """Makes checkpoints while it holds the lease (see the module docstring).

    Args:
        settings: interval, origin, witness stream and file.
        pool: app-role pool.
        nc: NATS client for the witness stream (None: database only, e.g. in tests).
        signer: the signing key.
    """

    def __init__(self, settings: Settings, pool: asyncpg.Pool, nc: Any, signer: Signer,
                 metrics: Metrics | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.pool = pool
        self.nc = nc
        self.signer = signer
        self.metrics = metrics
        self.unpublished: list[Made] = []
        self.made = 0
        self.last_cycle = 0.0
        # Start of the last cycle that held the lease and left nothing due (0: none yet).
        self.completed_at = 0.0

    async def register_key(self) -> None:
        """List this key in ``audit.signing_keys``; any other active key is retired."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO audit.signing_keys (key_id, name, public_key, verifier_key)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (key_id) DO NOTHING",
                self.signer.key_id, self.signer.name, self.signer.public_key,
                self.signer.verifier_key,
            )  # fmt: skip
            await conn.execute(
                "UPDATE audit.signing_keys SET retired_at = now()"
                " WHERE key_id <> $1 AND retired_at IS NULL", self.signer.key_id,
            )  # fmt: skip

    async def start(self) -> None:
        """Register the key and make sure the witness stream exists."""
        await self.register_key()
        if self.nc is not None:
            await ensure_checkpoint_stream(self.nc, self.settings)

    async def run(self, stop: asyncio.Event) -> None:
        """Checkpoint every interval until ``stop``, then once more (nothing new is left
        unsigned at a clean shutdown). Errors are logged and retried next interval."""
        await _retrying(self.start, stop, "register the signing key and witness stream")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.checkpoint_interval_s)
            try:
                await self.cycle()
            except Exception as exc:
                log.warning("checkpointing failed (retrying next interval): %r", exc)

    async def cycle(self) -> list[Made]:
        """One round over the tenants with new events; returns the checkpoints made."""
        made: list[Made] = []
        started = time.time()
        while True:
            batch = await self._round()
            if batch is None:  # another process holds the lease and signs
                break
            made.extend(batch)
            if len(batch) < TENANTS_PER_CYCLE:
                self.completed_at = started  # everything committed before it is signed
                if self.metrics is not None:
                    self.metrics.checkpoint_completed.set(started)
                break
        self.last_cycle = time.time()
        self.made += len(made)
        self.unpublished.extend(made)
        await self.publish()
        return made

    async def _round(self) -> list[Made] | None:
        """Sign up to TENANTS_PER_CYCLE due tenants; None when another process holds the
        lease."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", LEASE_KEY):
                return None
            due = await conn.fetch(
                "SELECT h.tenant_id, h.last_seq, coalesce(m.size, 0) AS size, m.frontier"
                " FROM audit.chain_heads h LEFT JOIN audit.merkle_state m USING (tenant_id)"
                " WHERE h.last_seq > coalesce(m.size, 0) ORDER BY h.tenant_id LIMIT $1",
                TENANTS_PER_CYCLE,
            )  # fmt: skip
            now = datetime.now(UTC).replace(microsecond=0)
            return [await self._extend(conn, r, now) for r in due]

    async def _extend(self, conn: asyncpg.Connection, row: asyncpg.Record,
                      now: datetime) -> Made:  # fmt: skip
        tenant, size = row["tenant_id"], row["size"]
        frontier = tlog.Frontier(size, [bytes(h) for h in row["frontier"] or ()])
        await conn.execute("SELECT set_config('audit.tenant_id', $1, true)", tenant)
        hashes = await conn.fetch(
            "SELECT seq, hash FROM audit.events WHERE tenant_id = $1 AND seq > $2"
            " AND seq <= $3 ORDER BY seq", tenant, size, row["last_seq"],
        )  # fmt: skip
        seqs = [r[0] for r in hashes]
        if seqs != list(range(size + 1, size + 1 + len(seqs))):
            expected = next(k for k, s in enumerate(seqs, start=size + 1) if s != k)
            raise RuntimeError(f"{tenant}: seq {expected} missing from the chain")
        tiles = extend_tree(frontier, [r[1] for r in hashes])
        await conn.execute(
            "INSERT INTO audit.merkle_tiles (tenant_id, level, idx, hashes)"
            " SELECT $1, l, i, h FROM unnest($2::smallint[], $3::bigint[], $4::bytea[])"
            " AS t(l, i, h) ON CONFLICT (tenant_id, level, idx)"
            " DO UPDATE SET hashes = audit.merkle_tiles.hashes || EXCLUDED.hashes",
            tenant, [k[0] for k in tiles], [k[1] for k in tiles],
            [bytes(v) for v in tiles.values()],
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO audit.merkle_state (tenant_id, size, frontier) VALUES ($1, $2, $3)"
            " ON CONFLICT (tenant_id) DO UPDATE SET size = $2, frontier = $3, updated_at = now()",
            tenant, frontier.size, frontier.hashes,
        )  # fmt: skip
        root = frontier.root()
        # The signing time is signed too (an extension line): it is the cryptographic
        # timestamp of every event up to this size.
        stamp = (f"time {tlog.utc_stamp(now)}",)
        note = self.signer.sign(tlog.Checkpoint(origin(self.settings, tenant), frontier.size,
                                                root, stamp).text())  # fmt: skip
        await conn.execute(
            "INSERT INTO audit.checkpoints (tenant_id, size, root, key_id, signed_at, note)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            tenant, frontier.size, root, self.signer.key_id, now, note,
        )  # fmt: skip
        return Made(tenant, frontier.size, note)

    async def publish(self) -> None:
        """Copy the checkpoints not yet copied to the witness stream and the file; what
        fails stays queued for the next cycle."""
        pending, self.unpublished = self.unpublished, []
        for i, made in enumerate(pending):
            try:
                if self.nc is not None:
                    await self._witness(made)
                if self.settings.checkpoint_file:
                    await asyncio.to_thread(_append, self.settings.checkpoint_file, made.note)
            except Exception as exc:
                log.warning("checkpoint of %s at %d not copied yet: %r", made.tenant_id,
                            made.size, exc)  # fmt: skip
                self.unpublished.extend(pending[i:])
                return

    async def _witness(self, made: Made) -> None:
        js = self.nc.jetstream()
        args = (witness_subject(self.settings, made.tenant_id), made.note.encode())
        headers = {"Nats-Msg-Id": f"{made.tenant_id}:{made.size}"}
        try:
            await js.publish(*args, headers=headers, timeout=5)
        except NoStreamResponseError:  # the stream is gone: make it again, then retry
            await ensure_checkpoint_stream(self.nc, self.settings)
            await js.publish(*args, headers=headers, timeout=5)


def _append(path: str, note: str) -> None:
    with Path(path).open("a") as f:
        f.write(note + "\n")


async def _retrying(step: Callable[[], Awaitable[Any]], stop: asyncio.Event, what: str) -> None:
    delay = 1.0
    while not stop.is_set():
        try:
            await step()
            return
        except Exception as exc:
            log.warning("cannot %s yet (retrying in %.0f s): %r", what, delay, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 30.0)
