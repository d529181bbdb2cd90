"""Signed checkpoints and verification against real PostgreSQL and NATS.

Each tampering is done as the database superuser with triggers disabled
(``session_replication_role = replica``), the way an insider with the owner's or the
superuser's credentials would, and each must be named by verification.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from infra.db import create_pool
from infra.settings import Settings
from infra.signing import Signer, load_signer, trusted_verifiers
from ledger.checkpoints import Checkpointer, origin
from ledger.verify import LogReport, read_witness, verify_log
from pipeline.source_nats import connect
from schemas import tlog
from schemas.canonical import canonical_bytes, chain_hash
from schemas.rows import COLUMNS, ROW_SELECT
from tests.support.service import make_event, store
from tests.support.waits import eventually

pytestmark = pytest.mark.integration
N = 8


class Rig:
    """A tenant with N events, checkpointed and witnessed; tamper and verify."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, nc: Any, tenant: str) -> None:
        self.settings, self.pool, self.nc, self.tenant = settings, pool, nc, tenant
        self.signer = load_signer(settings)
        self.checkpointer = Checkpointer(settings, pool, nc, self.signer)

    async def setup(self, n: int = N) -> None:
        await self.checkpointer.start()
        await store(self.pool, [make_event(self.tenant, i) for i in range(n)])
        made = await self.checkpointer.cycle()
        assert [(m.tenant_id, m.size) for m in made] == [(self.tenant, n)]

    async def verify(self, verifiers: list[tlog.Verifier] | None = None) -> LogReport:
        witness = await read_witness(self.nc, self.settings, self.tenant)
        keys = trusted_verifiers(self.settings) if verifiers is None else verifiers
        async with self.pool.acquire() as conn:
            return await verify_log(conn, self.settings, self.tenant, keys, witness)

    async def superuser(self, *statements: tuple[str, ...]) -> None:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            await conn.execute("SET session_replication_role = replica")  # triggers off
            for sql, *args in statements:
                await conn.execute(sql, *args)
        finally:
            await conn.close()

    async def rows(self) -> list[dict[str, Any]]:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            recs = await conn.fetch(f"SELECT {ROW_SELECT} FROM audit.events WHERE tenant_id = $1"
                                    " ORDER BY seq", self.tenant)  # fmt: skip
            return [dict(r) for r in recs]
        finally:
            await conn.close()


@pytest.fixture
async def rig(db_url, settings_factory, request):
    settings = settings_factory(db_url)
    pool = await create_pool(db_url, max_size=2)
    nc = await connect(settings.nats_url, "checkpoints-test", settings)
    name = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)
    r = Rig(settings, pool, nc, f"cp-{name[:60]}")
    await r.setup()
    try:
        yield r
    finally:
        await nc.close()
        await pool.close()


async def test_an_untouched_log_verifies_with_its_checkpoint_and_witness(rig: Rig) -> None:
    report = await rig.verify()
    assert report.status == "intact" and report.exit_code == 0, report
    assert (report.events, report.checkpoints, report.latest_checkpoint) == (N, 1, N)
    assert report.witnessed_size == N
    # The stored note is a C2SP checkpoint of this tenant's origin, signed by our key.
    async with rig.pool.acquire() as conn:
        note = await conn.fetchval("SELECT note FROM audit.checkpoints WHERE tenant_id = $1",
                                   rig.tenant)  # fmt: skip
    opened = tlog.open_note(note, [tlog.Verifier.parse(rig.signer.verifier_key)])
    cp = tlog.Checkpoint.parse(opened.text)
    assert cp.origin == origin(rig.settings, rig.tenant) and cp.size == N
    (stamp,) = cp.extensions  # the signing time is signed
    signed_at = datetime.fromisoformat(stamp.removeprefix("time ").replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - signed_at).total_seconds()) < 60


async def test_new_events_extend_the_tree_and_old_checkpoints_stay_consistent(rig: Rig) -> None:
    await store(rig.pool, [make_event(rig.tenant, 100 + i) for i in range(300)])
    made = await rig.checkpointer.cycle()
    assert [m.size for m in made] == [N + 300]
    assert await rig.checkpointer.cycle() == []  # nothing new, nothing signed
    report = await rig.verify()
    assert report.status == "intact" and report.checkpoints == 2, report


@pytest.mark.parametrize("kind", ["edited", "deleted_middle", "reordered"])
async def test_row_tampering_is_named_at_its_seq(rig: Rig, kind: str) -> None:
    t = rig.tenant
    if kind == "edited":
        await rig.superuser(("UPDATE audit.events SET description = 'nothing happened'"
                             " WHERE tenant_id = $1 AND seq = 3", t))  # fmt: skip
        want = (3, "hash_mismatch")
    elif kind == "deleted_middle":
        await rig.superuser(("DELETE FROM audit.events WHERE tenant_id = $1 AND seq = 3", t))
        want = (3, "seq_gap")
    else:
        await rig.superuser(
            ("UPDATE audit.events SET seq = 100 WHERE tenant_id = $1 AND seq = 3", t),
            ("UPDATE audit.events SET seq = 3 WHERE tenant_id = $1 AND seq = 4", t),
            ("UPDATE audit.events SET seq = 4 WHERE tenant_id = $1 AND seq = 100", t),
        )  # fmt: skip
        want = (3, "hash_mismatch")
    report = await rig.verify()
    assert report.status == "tampered" and report.exit_code == 1
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.kind) == want, report


async def test_an_inserted_row_with_a_recomputed_hash_is_found(rig: Rig) -> None:
    rows = await rig.rows()
    forged = dict(rows[2], description="forged", seq=3, id=uuid.uuid4())
    forged["hash"] = chain_hash(rows[1]["hash"], canonical_bytes(forged))
    await rig.superuser(
        ("UPDATE audit.events SET seq = seq + 1 WHERE tenant_id = $1 AND seq >= 3", rig.tenant),
        (f"INSERT INTO audit.events ({', '.join(COLUMNS)}) VALUES "
         f"({', '.join(f'${i + 1}' for i in range(len(COLUMNS)))})",
         *[forged[c] for c in COLUMNS]),
        ("UPDATE audit.chain_heads SET last_seq = last_seq + 1 WHERE tenant_id = $1",
         rig.tenant),
    )  # fmt: skip
    report = await rig.verify()
    assert report.first_break is not None, report
    assert (report.first_break.seq, report.first_break.kind) == (4, "hash_mismatch")


async def test_a_cut_tail_with_the_head_moved_back_is_truncation(rig: Rig) -> None:
    rows = await rig.rows()
    await rig.superuser(
        ("DELETE FROM audit.events WHERE tenant_id = $1 AND seq > 6", rig.tenant),
        ("UPDATE audit.chain_heads SET last_seq = 6, last_hash = $2 WHERE tenant_id = $1",
         rig.tenant, rows[5]["hash"]),
    )  # fmt: skip
    report = await rig.verify()
    assert report.first_break is not None, report
    assert (report.first_break.seq, report.first_break.kind) == (7, "truncated")


async def test_a_rewrite_that_recomputes_every_later_hash_and_the_head_is_found(
    rig: Rig,
) -> None:
    rows = await rig.rows()
    rows[2]["description"] = "rewritten"
    statements: list[tuple] = []
    prev = rows[1]["hash"]
    for row in rows[2:]:
        row["hash"] = chain_hash(prev, canonical_bytes(row))
        prev = row["hash"]
        statements.append(("UPDATE audit.events SET description = $3, hash = $4"
                           " WHERE tenant_id = $1 AND seq = $2", rig.tenant, row["seq"],
                           row["description"], row["hash"]))  # fmt: skip
    statements.append(("UPDATE audit.chain_heads SET last_hash = $2 WHERE tenant_id = $1",
                       rig.tenant, prev))  # fmt: skip
    await rig.superuser(*statements)
    async with rig.pool.acquire() as conn:  # the chain alone no longer tells
        from ledger.chain import verify_tenant

        assert (await verify_tenant(conn, rig.tenant)).ok
    report = await rig.verify()
    assert report.first_break is not None, report
    assert (report.first_break.seq, report.first_break.kind) == (N, "checkpoint_mismatch")


async def test_a_tenant_deleted_with_its_head_and_checkpoints_is_missing(rig: Rig) -> None:
    t = rig.tenant
    await rig.superuser(*[(f"DELETE FROM audit.{table} WHERE tenant_id = $1", t) for table in
                          ("events", "event_ids", "chain_heads", "checkpoints",
                           "merkle_state", "merkle_tiles")])  # fmt: skip
    report = await rig.verify()
    assert report.status == "tampered" and report.events == 0 and report.witnessed_size == N
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.kind) == (1, "truncated")


@pytest.mark.parametrize("how", ["own_key", "edited_root"])
async def test_a_forged_checkpoint_is_named(rig: Rig, how: str) -> None:
    t = rig.tenant
    if how == "own_key":  # the insider signs a checkpoint of his own
        mallory = Signer(rig.signer.name, Ed25519PrivateKey.generate())
        note = mallory.sign(tlog.Checkpoint(origin(rig.settings, t), N + 1, bytes(32)).text())
        await rig.superuser(("INSERT INTO audit.checkpoints VALUES ($1, $2, $3, $4, now(), $5)",
                             t, N + 1, bytes(32), mallory.key_id, note))  # fmt: skip
        want = N + 1
    else:  # a stored checkpoint's root changed (its signature still over the old one)
        await rig.superuser(("UPDATE audit.checkpoints SET root = $2 WHERE tenant_id = $1",
                             t, bytes(32)))  # fmt: skip
        want = N
    report = await rig.verify()
    assert report.first_break is not None, report
    assert (report.first_break.seq, report.first_break.kind) == (want, "forged_checkpoint")


async def test_without_a_trusted_key_it_says_it_cannot_check(rig: Rig) -> None:
    report = await rig.verify(verifiers=[])
    assert report.status == "unverifiable" and report.exit_code == 3
    assert "no trusted public key" in report.cannot_check[0]


async def test_the_checkpointer_signs_on_its_interval_and_once_more_at_stop(
    db_url, settings_factory
) -> None:
    settings = settings_factory(db_url, checkpoint_interval_s=0.2)
    pool = await create_pool(db_url, max_size=2)
    try:
        checkpointer = Checkpointer(settings, pool, None, load_signer(settings))
        stop = asyncio.Event()
        task = asyncio.create_task(checkpointer.run(stop))
        await store(pool, [make_event("cp-interval", i) for i in range(5)])
        await eventually(lambda: checkpointer.made, timeout=5, what="a checkpoint made")
        assert checkpointer.made == 1
        await store(pool, [make_event("cp-interval", 10 + i) for i in range(3)])
        stop.set()  # the last events are signed before run() returns
        await asyncio.wait_for(task, 10)
        async with pool.acquire() as conn:
            sizes = await conn.fetch("SELECT size FROM audit.checkpoints WHERE tenant_id ="
                                     " 'cp-interval' ORDER BY size")  # fmt: skip
        assert [r["size"] for r in sizes][-1] == 8
    finally:
        await pool.close()


async def test_checkpoint_completion_is_exported_only_by_the_lease_holder(
    db_url, settings_factory
) -> None:
    """auditlog_checkpoint_completed_timestamp_seconds moves when a round signs everything,
    and stays put in a process that did not get the lease (the alert takes the max)."""
    from infra.metrics import Metrics
    from ledger.checkpoints import LEASE_KEY

    settings = settings_factory(db_url)
    pool = await create_pool(db_url, max_size=2)
    metrics = Metrics()
    gauge = "auditlog_checkpoint_completed_timestamp_seconds"
    try:
        checkpointer = Checkpointer(settings, pool, None, load_signer(settings), metrics)
        await store(pool, [make_event("cp-metric", i) for i in range(3)])
        before = time.time()
        assert [m.size for m in await checkpointer.cycle()] == [3]
        done = metrics.registry.get_sample_value(gauge)
        assert done is not None and before <= done <= time.time()
        await store(pool, [make_event("cp-metric", 10 + i) for i in range(2)])
        holder = await asyncpg.connect(db_url)
        try:
            async with holder.transaction():  # another process holds the lease
                await holder.execute("SELECT pg_advisory_xact_lock($1)", LEASE_KEY)
                assert await checkpointer.cycle() == []
                assert metrics.registry.get_sample_value(gauge) == done
        finally:
            await holder.close()
        assert [m.size for m in await checkpointer.cycle()] == [5]
        assert metrics.registry.get_sample_value(gauge) > done
    finally:
        await pool.close()


def _cli(rig: Rig, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    s = rig.settings
    base = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    base.update(AUDIT_DATABASE_URL=s.database_url, AUDIT_NATS_URL=s.nats_url,
                AUDIT_STATE_DIR=s.state_dir, AUDIT_CHECKPOINT_STREAM=s.checkpoint_stream,
                AUDIT_CHECKPOINT_SUBJECT=s.checkpoint_subject)  # fmt: skip
    base.update(env)
    return subprocess.run([sys.executable, "-m", "auditlog.cli", "verify", *args], env=base,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


async def test_the_cli_exit_codes(rig: Rig, tmp_path) -> None:
    ok = await asyncio.to_thread(_cli, rig, rig.tenant)
    assert ok.returncode == 0 and ok.stdout.startswith(f"ok: {N} events"), ok
    as_json = json.loads((await asyncio.to_thread(_cli, rig, rig.tenant, "--json")).stdout)
    assert as_json["status"] == "intact" and as_json["witnessed_size"] == N
    away = await asyncio.to_thread(_cli, rig, rig.tenant, AUDIT_NATS_URL="nats://127.0.0.1:1")
    assert away.returncode == 3 and "witness stream unavailable" in away.stdout, away
    skip = await asyncio.to_thread(_cli, rig, rig.tenant, "--no-witness",
                                   AUDIT_NATS_URL="nats://127.0.0.1:1")  # fmt: skip
    assert skip.returncode == 0, skip
    bad_key = await asyncio.to_thread(_cli, rig, rig.tenant, "--public-key", "nonsense")
    assert bad_key.returncode == 2 and "--public-key" in bad_key.stderr
    nowhere = "postgresql://u:p@127.0.0.1:1/x"
    no_db = await asyncio.to_thread(_cli, rig, rig.tenant, AUDIT_DATABASE_URL=nowhere)
    assert no_db.returncode == 3 and "CANNOT CHECK" in no_db.stderr
    other_state = await asyncio.to_thread(_cli, rig, rig.tenant,
                                          AUDIT_STATE_DIR=str(tmp_path))  # fmt: skip
    assert other_state.returncode == 3  # no trusted key here...
    key = rig.signer.verifier_key
    trusted = await asyncio.to_thread(_cli, rig, rig.tenant, "--public-key", key,
                                      AUDIT_STATE_DIR=str(tmp_path))  # fmt: skip
    assert trusted.returncode == 0, trusted  # ...unless one is given
    await rig.superuser(("UPDATE audit.events SET action = 'user.logout'"
                         " WHERE tenant_id = $1 AND seq = 5", rig.tenant))  # fmt: skip
    bad = await asyncio.to_thread(_cli, rig, rig.tenant)
    assert bad.returncode == 1 and bad.stdout.startswith("TAMPERED at seq 5 (hash_mismatch)")


async def test_inclusion_and_consistency_proofs_check_out_for_a_third_party(rig: Rig) -> None:
    from ledger import proofs
    from query_api.sql import tenant_tx

    await store(rig.pool, [make_event(rig.tenant, 100 + i) for i in range(600)])
    await rig.checkpointer.cycle()  # a second checkpoint at N + 600, tiles past one level
    keys = [tlog.Verifier.parse(rig.signer.verifier_key)]
    log_origin = origin(rig.settings, rig.tenant)
    rows = await rig.rows()
    async with tenant_tx(rig.pool, rig.tenant) as conn:
        for row in (rows[0], rows[7], rows[300], rows[-1]):
            p = await proofs.inclusion(conn, rig.tenant, row["id"])
            assert isinstance(p, proofs.InclusionProof) and p.seq == row["seq"]
            assert p.checkpoint.size == N + 600 and len(p.proof) <= 10  # logarithmic
            assert proofs.inclusion_problem(p, keys, log_origin) is None
            forged = msgspec.structs.replace(p, canonical=p.canonical.replace("event", "evnt"))
            assert proofs.inclusion_problem(forged, keys, log_origin)
            assert proofs.inclusion_problem(p, [], log_origin)  # untrusted key
        c = await proofs.consistency(conn, rig.tenant, N, N + 600)
        assert isinstance(c, proofs.ConsistencyProof)
        old = tlog.Checkpoint.parse(tlog.open_note(c.old.note, keys).text)
        new = tlog.Checkpoint.parse(tlog.open_note(c.new.note, keys).text)
        path = [base64.b64decode(h) for h in c.proof]
        assert tlog.verify_consistency(old.size, new.size, old.root, new.root, path)
        assert await proofs.consistency(conn, rig.tenant, N, N + 1) is proofs.NoProof.NOT_FOUND
        await store(rig.pool, [make_event(rig.tenant, 5000)])
        late = (await rig.rows())[-1]
        assert await proofs.inclusion(conn, rig.tenant, late["id"]) is proofs.NoProof.NOT_SIGNED


async def test_a_bundle_verifies_offline_and_any_change_to_it_does_not(rig: Rig, tmp_path) -> None:
    from auditlog.bundle_cmd import export_bundle
    from schemas import bundle

    await store(rig.pool, [make_event(rig.tenant, 100 + i) for i in range(300)])
    await rig.checkpointer.cycle()
    whole, part = tmp_path / "whole.json", tmp_path / "part.json"
    await asyncio.to_thread(export_bundle, rig.settings, rig.tenant, 1, None, whole)
    await asyncio.to_thread(export_bundle, rig.settings, rig.tenant, 5, N + 300, part)
    key = [rig.signer.verifier_key]
    for path, events in ((whole, N + 300), (part, N + 296)):
        report = bundle.verify(path.read_bytes(), key)
        assert report.status == "intact" and report.events == events, report
        assert report.signed_up_to == N + 300
    doc = json.loads(part.read_bytes())
    changes = {
        "event": lambda d: d["events"][3].__setitem__(2, d["events"][3][2].replace("e", "E", 1)),
        "dropped event": lambda d: d["events"].pop(10),
        "prev_hash": lambda d: d.__setitem__("prev_hash", "00" * 32),
        "frontier": lambda d: d["frontier"].__setitem__(0, base64.b64encode(bytes(32)).decode()),
        "checkpoint": lambda d: d["checkpoints"].__setitem__(-1, d["checkpoints"][-1].replace(
            f"\n{N + 300}\n", f"\n{N + 299}\n")),
    }  # fmt: skip
    for what, change in changes.items():
        d = json.loads(json.dumps(doc))
        change(d)
        report = bundle.verify(json.dumps(d).encode(), key)
        assert report.status == "tampered", (what, report)
    stranger = Signer("someone", Ed25519PrivateKey.generate()).verifier_key
    assert bundle.verify(part.read_bytes(), [stranger]).status == "tampered"  # not pinned
    offline = {"PATH": os.environ["PATH"]}  # no database, no NATS: the file and a key
    cli = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "auditlog.cli",
                                  "verify-bundle", str(part), "--public-key", key[0]],
                                  capture_output=True, text=True, env=offline)  # fmt: skip
    assert cli.returncode == 0 and cli.stdout.startswith(f"ok: {N + 296} events"), cli


async def test_a_restore_from_an_older_backup_reports_truncation(rig: Rig) -> None:
    """A restore from a backup taken at N, when the witness has seen N + 50: verify says
    exactly what is missing (README "Restores")."""
    rows_before = await rig.rows()
    await store(rig.pool, [make_event(rig.tenant, 100 + i) for i in range(50)])
    await rig.checkpointer.cycle()
    t = rig.tenant
    # What the backup holds: the log as it was at N (events, head, tree, checkpoints).
    await rig.superuser(
        ("DELETE FROM audit.events WHERE tenant_id = $1 AND seq > $2", t, N),
        ("DELETE FROM audit.checkpoints WHERE tenant_id = $1 AND size > $2", t, N),
        ("UPDATE audit.chain_heads SET last_seq = $2, last_hash = $3 WHERE tenant_id = $1",
         t, N, rows_before[-1]["hash"]),
        ("DELETE FROM audit.merkle_state WHERE tenant_id = $1", t),
    )  # fmt: skip
    report = await rig.verify()
    assert report.status == "tampered" and report.witnessed_size == N + 50
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.kind) == (N + 1, "truncated")
    assert f"cover {N + 50} events; the database holds {N}" in report.first_break.detail


async def test_the_api_serves_the_key_the_report_and_proofs(rig: Rig) -> None:
    from ledger import proofs
    from tests.support.service import serving_app

    settings = rig.settings.replace(admin_token="checkpoint-admin-token-0123456789")
    auth = {"Authorization": f"Bearer {settings.admin_token}"}
    async with serving_app(settings) as api:
        r = await api.get("/v1/audit/public-key")  # no token needed
        body = await r.json()
        assert r.status == 200 and body["verifier_key"] == rig.signer.verifier_key
        assert [k["key_id"] for k in body["keys"] if k["retired_at"] is None] == [rig.signer.key_id]
        r = await api.get("/v1/audit/verify", params={"tenant_id": rig.tenant}, headers=auth)
        report = await r.json()
        assert r.status == 200 and report["status"] == "intact" and report["events"] == N
        assert (await api.get("/v1/audit/verify", params={"tenant_id": rig.tenant})).status == 401
        event_id = str((await rig.rows())[2]["id"])
        r = await api.get(f"/v1/audit/events/{event_id}/proof",
                          params={"tenant_id": rig.tenant}, headers=auth)  # fmt: skip
        proof = msgspec.convert(await r.json(), proofs.InclusionProof)
        keys = [tlog.Verifier.parse(rig.signer.verifier_key)]
        assert proofs.inclusion_problem(proof, keys, origin(settings, rig.tenant)) is None
        await rig.superuser(("UPDATE audit.events SET description = 'x' WHERE tenant_id = $1"
                             " AND seq = 2", rig.tenant))  # fmt: skip
        r = await api.get("/v1/audit/verify", params={"tenant_id": rig.tenant}, headers=auth)
        report = await r.json()
        assert report["status"] == "tampered" and report["first_break"]["seq"] == 2


async def test_a_rotated_key_keeps_old_checkpoints_checkable_and_the_file_copy(
    db_url, settings_factory, tmp_path
) -> None:
    copy = tmp_path / "checkpoints.txt"
    settings = settings_factory(db_url, checkpoint_file=str(copy))
    pool = await create_pool(db_url, max_size=2)
    nc = await connect(settings.nats_url, "rotation-test", settings)
    try:
        rig = Rig(settings, pool, nc, "cp-rotation")
        await rig.setup()
        old_key = rig.signer.verifier_key
        new_key = tlog.signer_key("auditlog.local", Ed25519PrivateKey.generate())
        (tmp_path / "new-key").write_text(new_key)
        rotated = settings.replace(signing_key_file=str(tmp_path / "new-key"))
        rig2 = Rig(rotated, pool, nc, "cp-rotation")
        await rig2.checkpointer.start()
        await store(pool, [make_event("cp-rotation", 100 + i) for i in range(5)])
        await rig2.checkpointer.cycle()
        report = await rig2.verify()  # both keys are remembered in the state dir
        assert report.status == "intact" and report.checkpoints == 2, report
        async with pool.acquire() as conn:
            keys = {r["verifier_key"]: r["retired_at"] for r in await conn.fetch(
                "SELECT verifier_key, retired_at FROM audit.signing_keys")}  # fmt: skip
        assert keys[old_key] is not None and keys[rig2.signer.verifier_key] is None
        only_new = [tlog.Verifier.parse(rig2.signer.verifier_key)]
        report = await rig2.verify(verifiers=only_new)  # old checkpoint: not trusted now
        assert report.first_break is not None and report.first_break.kind == "forged_checkpoint"
        text = copy.read_text()  # each signed note, then an empty line
        assert text.count("\n\u2014 auditlog.local ") == 2 and text.endswith("\n\n")
    finally:
        await nc.close()
        await pool.close()
