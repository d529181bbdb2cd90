"""Retention against real PostgreSQL (and NATS where the pipeline runs): what reads see,
legal holds, keys that expire, dropping expired months with signed gaps (verify, proofs
and bundles cross them), claims going with their month, archives written and verified
before a drop (a directory, and a local S3-compatible server), and a drop while the
pipeline ingests. The access trail is in ``test_access_log.py``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from ledger.checkpoints import origin
from tests.support.api import ADMIN, auth
from tests.support.metrics import sample
from tests.support.service import make_event, store
from tests.support.waits import eventually

pytestmark = pytest.mark.integration
DAY = 24 * 60  # make_event's offsets are minutes before now


async def _ids(api, path: str, tenant: str, token: str = ADMIN) -> tuple[int, list[str]]:
    r = await api.get(path, params={"tenant_id": tenant}, headers=auth(token))
    if r.status != 200:
        return r.status, []
    body = await r.json()
    return 200, [e["id"] for e in body.get("events", [])]


async def test_a_shorter_retention_hides_older_events_from_every_read_path(api) -> None:
    t = "ret-short"
    fresh, old = make_event(t, 10 * DAY), make_event(t, 60 * DAY)
    await store(api.pool, [fresh, old])
    assert len((await _ids(api, "/v1/audit/events", t))[1]) == 2  # default: 7 years
    r = await api.put(f"/v1/admin/tenants/{t}/retention", json={"retention_days": 30},
                      headers=auth(ADMIN))  # fmt: skip
    policy = await r.json()
    assert r.status == 200 and policy["retention_days"] == 30, policy
    assert policy["effective_retention_days"] == 30 and policy["legal_hold"] is None
    _, ids = await _ids(api, "/v1/audit/events", t)
    assert ids == [str(fresh.event.id)]  # right away, in this process
    old_id = str(old.event.id)
    r = await api.get(f"/v1/audit/events/{old_id}", params={"tenant_id": t},
                      headers=auth(ADMIN))  # fmt: skip
    assert r.status == 404
    since = (datetime.now(UTC) - timedelta(days=90)).isoformat()
    r = await api.get("/v1/audit/stats", headers=auth(ADMIN),
                      params={"tenant_id": t, "start_time": since})  # fmt: skip
    assert (await r.json())["total"] == 1
    r = await api.get("/v1/audit/export", params={"tenant_id": t}, headers=auth(ADMIN))
    assert (await r.read()).count(b"\n") == 1 and old_id.encode() not in await r.read()
    r = await api.get(f"/v1/audit/events/{old_id}/proof", params={"tenant_id": t},
                      headers=auth(ADMIN))  # fmt: skip
    assert r.status == 404
    # Back to the global retention: visible again (nothing was deleted).
    r = await api.put(f"/v1/admin/tenants/{t}/retention", json={"retention_days": None},
                      headers=auth(ADMIN))  # fmt: skip
    assert (await r.json())["effective_retention_days"] == 2557
    # Archiving before drops: the tenant's override, else AUDIT_RETENTION_ARCHIVE (unset here).
    assert (await r.json())["archive"] is None
    assert (await r.json())["archive_before_drop"] is False
    r = await api.put(f"/v1/admin/tenants/{t}/retention", headers=auth(ADMIN),
                      json={"retention_days": None, "archive": True})  # fmt: skip
    assert (await r.json())["archive"] is True and (await r.json())["archive_before_drop"]
    r = await api.put(f"/v1/admin/tenants/{t}/retention", headers=auth(ADMIN),
                      json={"retention_days": None, "archive": "yes"})  # fmt: skip
    assert r.status == 400
    assert len((await _ids(api, "/v1/audit/events", t))[1]) == 2


async def test_a_legal_hold_shows_everything_until_it_is_released(api) -> None:
    t = "ret-hold"
    await store(api.pool, [make_event(t, 1 * DAY), make_event(t, 90 * DAY)])
    await api.put(f"/v1/admin/tenants/{t}/retention", json={"retention_days": 30},
                  headers=auth(ADMIN))  # fmt: skip
    assert len((await _ids(api, "/v1/audit/events", t))[1]) == 1
    r = await api.put(f"/v1/admin/tenants/{t}/legal-hold", json={"reason": "case 2026-17"},
                      headers=auth(ADMIN))  # fmt: skip
    hold = (await r.json())["legal_hold"]
    assert hold["reason"] == "case 2026-17" and hold["set_by"] == "admin" and hold["set_at"]
    assert len((await _ids(api, "/v1/audit/events", t))[1]) == 2
    r = await api.delete(f"/v1/admin/tenants/{t}/legal-hold", headers=auth(ADMIN))
    assert (await r.json())["legal_hold"] is None
    assert len((await _ids(api, "/v1/audit/events", t))[1]) == 1


async def test_policies_are_the_admins_and_are_validated(api) -> None:
    r = await api.post("/v1/admin/keys", json={"tenant_id": "ret-x", "scopes": ["read"]},
                       headers=auth(ADMIN))  # fmt: skip
    key = (await r.json())["token"]
    calls = (("get", "retention", None), ("put", "retention", {"retention_days": 1}),
             ("put", "legal-hold", {"reason": "x"}))  # fmt: skip
    for method, path, body in calls:
        r = await api.request(method, f"/v1/admin/tenants/ret-x/{path}", json=body,
                              headers=auth(key))  # fmt: skip
        assert r.status == 403
    for body in ({"retention_days": 0}, {"retention_days": 40000}, {"retention_days": "9"},
                 {"retention_days": 9.5}, {}, {"days": 9}):  # fmt: skip
        r = await api.put("/v1/admin/tenants/ret-x/retention", json=body, headers=auth(ADMIN))
        assert r.status == 400, body
    r = await api.put("/v1/admin/tenants/ret-x/retention", json={"retention_days": 9.0},
                      headers=auth(ADMIN))  # fmt: skip
    assert r.status == 200  # JSON Schema's integers include 9.0
    r = await api.put("/v1/admin/tenants/ret-x/legal-hold", json={"reason": ""},
                      headers=auth(ADMIN))  # fmt: skip
    assert r.status == 400


async def test_keys_expire_and_show_their_last_use(api) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    body = {"tenant_id": "ret-k", "scopes": ["read"], "expires_at": soon}
    r = await api.post("/v1/admin/keys", headers=auth(ADMIN), json=body)
    created = await r.json()
    assert r.status == 201 and created["expires_at"] and created["last_used_at"] is None
    assert (await _ids(api, "/v1/audit/events", "ret-k", created["token"]))[0] == 200

    async def listed() -> dict:
        r = await api.get("/v1/admin/keys", params={"tenant_id": "ret-k"}, headers=auth(ADMIN))
        return (await r.json())["keys"][0]

    # The last use is written off the request's path.
    await eventually(listed, lambda key: key["last_used_at"] is not None, timeout=2.5,
                     what="the key's last use listed")  # fmt: skip
    await asyncio.sleep(2.2)
    assert (await _ids(api, "/v1/audit/events", "ret-k", created["token"]))[0] == 401
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    r = await api.post("/v1/admin/keys", headers=auth(ADMIN),
                       json={"tenant_id": "ret-k", "expires_at": past})  # fmt: skip
    assert r.status == 400 and (await r.json())["error"]["field"] == "expires_at"


# -- dropping expired months ---------------------------------------------------------------
class Log:
    """A database with one tenant's log, checkpointed; drop what retention says."""

    def __init__(self, settings, pool, tenant: str) -> None:
        from infra.signing import load_signer
        from ledger.checkpoints import Checkpointer

        self.settings, self.pool, self.tenant = settings, pool, tenant
        self.signer = load_signer(settings)
        self.checkpointer = Checkpointer(settings, pool, None, self.signer)

    async def add(self, minutes_ago: list[int]) -> None:
        for m in minutes_ago:  # one batch each: seq follows this order
            await store(self.pool, [make_event(self.tenant, m)])
        await self.checkpointer.register_key()
        await self.checkpointer.cycle()

    async def superuser(self, sql: str, *args: object) -> None:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            await conn.execute("SET session_replication_role = replica")
            await conn.execute(sql, *args)
        finally:
            await conn.close()

    async def plan(self):
        from ledger import retention

        conn = await asyncpg.connect(self.settings.database_url)
        try:
            return await retention.plan(conn, self.settings)
        finally:
            await conn.close()

    async def apply(self) -> list[str]:
        from ledger import retention

        due = [m for m in await self.plan() if m.due]
        for m in due:
            await retention.drop(self.settings.database_url, self.settings, self.signer, m)
        return [m.name for m in due]

    async def verify(self):
        from infra.signing import trusted_verifiers
        from ledger.verify import Witness, verify_log

        async with self.pool.acquire() as conn:
            return await verify_log(conn, self.settings, self.tenant,
                                    trusted_verifiers(self.settings), Witness(None))  # fmt: skip

    async def bundle(self, from_seq: int, to_seq: int | None):
        from ledger.proofs import build_bundle
        from query_api.sql import tenant_tx

        async with tenant_tx(self.pool, self.tenant) as conn:
            return await build_bundle(conn, self.tenant, origin(self.settings, self.tenant),
                                      from_seq, to_seq)  # fmt: skip

    async def count(self, table: str) -> int:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            return await conn.fetchval(f"SELECT count(*) FROM audit.{table} WHERE tenant_id = $1",
                                       self.tenant)  # fmt: skip
        finally:
            await conn.close()


@pytest.fixture
async def log(db_url, settings_factory):
    from infra.db import create_pool

    pool = await create_pool(db_url, max_size=2)
    yield Log(settings_factory(db_url), pool, "ret-drop")
    await pool.close()


def _gap_forgeries(b):
    """The ways an insider could try to pass off a bundle with a gap that is not the one
    retention recorded: each must come out tampered."""
    import copy

    from schemas import bundle

    def edit(change):
        c = copy.deepcopy(b)
        change(c)
        return c

    g0 = b.gaps[0]
    other = bundle.BundleEvent(4, b.events[3].hash, b.events[3].canonical)
    yield edit(lambda c: setattr(c.gaps[0], "last_seq", g0.last_seq + 1))  # hides seq 7
    yield edit(lambda c: setattr(c.gaps[0], "nodes", [(0, c.gaps[0].nodes[0][1])]))
    yield edit(lambda c: setattr(c.gaps[0], "nodes", [(lv, "A" * 43 + "=")
                                                      for lv, _ in g0.nodes]))  # fmt: skip
    yield edit(lambda c: setattr(c.gaps[0], "prev_hash", "00" * 32))
    yield edit(lambda c: c.gaps.clear())  # the gap denied: seqs missing
    yield edit(lambda c: c.events.insert(3, other))  # an event slipped into the gap


OLD = 100 * DAY  # a month that ended long before a 30-day retention


async def test_dropping_a_prefix_keeps_the_log_verifiable(log: Log) -> None:
    await log.add([OLD + 5, OLD + 4, OLD + 3, OLD + 2, OLD + 1, 50, 40, 30, 20, 10])
    await log.superuser("INSERT INTO audit.tenant_policies (tenant_id, retention_days)"
                        " VALUES ($1, 30)", log.tenant)  # fmt: skip
    assert len(await log.apply()) == 1
    assert await log.count("events") == 5 and await log.count("event_ids") == 5  # claims too
    report = await log.verify()
    assert report.status == "intact" and (report.events, report.dropped) == (5, 5), report
    # Proofs for what is left still check out (seq 6's predecessor is in the gap record).
    from ledger import proofs
    from query_api.sql import tenant_tx
    from schemas import tlog

    async with tenant_tx(log.pool, log.tenant) as conn:
        first_left = await conn.fetchval("SELECT id FROM audit.events WHERE seq = 6")
        p = await proofs.inclusion(conn, log.tenant, first_left)
    assert isinstance(p, proofs.InclusionProof) and p.seq == 6
    keys = [tlog.Verifier.parse(log.signer.verifier_key)]
    assert proofs.inclusion_problem(p, keys, origin(log.settings, log.tenant)) is None
    # Tampering after the drop is still found.
    await log.superuser("UPDATE audit.events SET description = 'x' WHERE seq = 8")
    report = await log.verify()
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.kind) == (8, "hash_mismatch")


async def test_dropping_a_mid_chain_month_leaves_a_signed_gap(log: Log) -> None:
    for part in ([30, 20, 10], [OLD + 3, OLD + 2], [OLD + 1, 9, 8, 7]):  # backdated 4..6
        await log.add(part)  # checkpoints at 3, 5 (inside the dropped range) and 9
    await log.superuser("INSERT INTO audit.tenant_policies (tenant_id, retention_days)"
                        " VALUES ($1, 30)", log.tenant)  # fmt: skip
    assert len(await log.apply()) == 1
    report = await log.verify()
    assert report.status == "intact" and (report.events, report.dropped) == (6, 3), report
    # An auditor bundle spans the gap: the signed record and the tree nodes stand for the
    # dropped events, and every checkpoint (5 included) is checked.
    from schemas import bundle

    whole = await log.bundle(1, None)
    assert [(g.first_seq, g.last_seq) for g in whole.gaps] == [(4, 6)]
    pinned = [log.signer.verifier_key]
    report = bundle.verify(bundle.encode(whole), pinned)
    assert report.status == "intact", report
    assert (report.events, report.dropped, report.checkpoints) == (6, 3, 3)
    tail = bundle.verify(bundle.encode(await log.bundle(4, None)), pinned)  # starts with the gap
    assert (tail.status, tail.events, tail.dropped) == ("intact", 3, 3), tail
    with pytest.raises(ValueError, match="dropped by retention"):
        await log.bundle(5, None)
    for forge in _gap_forgeries(whole):
        assert bundle.verify(bundle.encode(forge), pinned).status == "tampered"
    # A gap record rewritten by an insider no longer verifies.
    await log.superuser("UPDATE audit.retention_gaps SET last_seq = 5")
    report = await log.verify()
    assert report.first_break is not None and report.first_break.kind == "forged_gap"


async def test_a_legal_hold_or_a_longer_retention_keeps_the_month(log: Log) -> None:
    await log.add([OLD, 10])
    months = {m.name: m for m in await log.plan() if m.tenants}
    old = next(m for m in months.values() if m.end < datetime.now(UTC) - timedelta(days=60))
    assert not old.due and "retention (2557 days)" in old.why_not  # the default: 7 years
    await log.superuser("INSERT INTO audit.tenant_policies (tenant_id, retention_days,"
                        " hold_reason, hold_set_by, hold_set_at) VALUES ($1, 30, 'case 9',"
                        " 'admin', now())", log.tenant)  # fmt: skip
    months = {m.name: m for m in await log.plan()}
    assert not months[old.name].due and "legal hold" in months[old.name].why_not
    assert await log.apply() == []
    assert await log.count("events") == 2


async def test_the_retention_job_drops_and_reports_in_metrics(log: Log) -> None:
    from infra.metrics import Metrics
    from ledger.retention import run_job

    await log.add([OLD + 1, OLD, 5])
    await log.superuser("INSERT INTO audit.tenant_policies (tenant_id, retention_days)"
                        " VALUES ($1, 30)", log.tenant)  # fmt: skip
    metrics = Metrics()
    assert await run_job(log.settings.database_url, log.settings, log.signer, metrics) == 1
    assert sample(metrics, "auditlog_retention_partitions_dropped_total") == 1
    assert sample(metrics, "auditlog_retention_freed_bytes_total") > 0
    # The recent month becomes due 30 days after it ends.
    assert (
        sample(metrics, "auditlog_retention_next_drop_timestamp_seconds")
        > datetime.now(UTC).timestamp()
    )
    assert await run_job(log.settings.database_url, log.settings, log.signer, metrics) == 0
    assert (await log.verify()).status == "intact"


# -- archive before drop -------------------------------------------------------------------
async def _archived_log(log: Log, dest: str, **kw: object) -> Log:
    log.settings = log.settings.replace(retention_archive=dest, **kw)
    await log.add([OLD + 2, OLD + 1, 10])
    await log.superuser("INSERT INTO audit.tenant_policies (tenant_id, retention_days)"
                        " VALUES ($1, 30)", log.tenant)  # fmt: skip
    return log


def _check_archive(data: bytes, log: Log, events: int) -> None:
    import gzip

    from schemas import bundle

    report = bundle.verify(gzip.decompress(data), [log.signer.verifier_key])
    assert (report.status, report.tenant_id, report.events) == ("intact", log.tenant, events)


async def test_a_month_is_archived_and_verified_before_it_is_dropped(log: Log, tmp_path) -> None:
    await _archived_log(log, str(tmp_path / "archive"))
    (month,) = [m for m in await log.plan() if m.due]
    assert month.archive == [log.tenant]
    assert await log.apply() == [month.name]
    files = list((tmp_path / "archive").rglob("*.bundle.json.gz"))
    # seqs 1-2 are the month's; the bundle runs to the checkpoint that signs them (3).
    assert [f.name for f in files] == [f"{month.name}-1-3.bundle.json.gz"], files
    _check_archive(files[0].read_bytes(), log, 3)
    assert await log.count("events") == 1 and (await log.verify()).status == "intact"


async def test_no_drop_without_a_verified_archive(log: Log, tmp_path, monkeypatch) -> None:
    from infra.errors import ArchiveError
    from ledger import archive, retention

    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the archive directory should be")
    await _archived_log(log, str(blocked))
    (month,) = [m for m in await log.plan() if m.due]
    with pytest.raises(ArchiveError):
        await retention.drop(log.settings.database_url, log.settings, log.signer, month)
    assert await log.count("events") == 3 and await log.count("event_ids") == 3

    # Storage that hands back other bytes than it was given (bit rot, a wrong object).
    class Rotten(archive.DirDestination):
        def get(self, name: str) -> bytes:
            import gzip

            data = bytearray(gzip.decompress(super().get(name)))
            data[data.index(b'"events":[[1,"') + 20] ^= 1  # inside seq 1's hash
            return gzip.compress(bytes(data))

    monkeypatch.setattr(archive, "destination", lambda s: Rotten(str(tmp_path / "rot")))
    with pytest.raises(ArchiveError, match="does not verify"):
        await retention.drop(log.settings.database_url, log.settings, log.signer, month)
    assert await log.count("events") == 3
    # The job keeps the month, counts the failure, and goes on.
    from infra.metrics import Metrics

    metrics = Metrics()
    assert await retention.run_job(log.settings.database_url, log.settings, log.signer,
                                   metrics) == 0  # fmt: skip
    assert sample(metrics, "auditlog_retention_archive_failures_total") == 1
    assert await log.count("events") == 3


async def test_a_tenant_that_asks_for_an_archive_is_never_dropped_without_one(log: Log) -> None:
    await _archived_log(log, "")  # no destination configured
    await log.superuser("UPDATE audit.tenant_policies SET archive = true")
    months = [m for m in await log.plan() if m.tenants]
    old = next(m for m in months if m.archive)
    assert not old.due and "AUDIT_RETENTION_ARCHIVE" in old.why_not
    await log.superuser("UPDATE audit.tenant_policies SET archive = false")
    log.settings = log.settings.replace(retention_archive="/nonexistent/never/written")
    (due,) = [m for m in await log.plan() if m.due]
    assert due.archive == []  # this tenant opted out: dropped without an archive
    assert len(await log.apply()) == 1


async def test_archives_go_to_an_s3_compatible_bucket(log: Log, monkeypatch) -> None:
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is a dev extra")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for var, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                           ("AWS_DEFAULT_REGION", "us-east-1")):  # fmt: skip
            monkeypatch.setenv(var, value)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="audit-archive")
        await _archived_log(log, "s3://audit-archive/retention", archive_s3_endpoint=endpoint)
        (name,) = await log.apply()
        listed = s3.list_objects_v2(Bucket="audit-archive")["Contents"]
        key = f"retention/{log.tenant}/{name}-1-3.bundle.json.gz"
        assert [o["Key"] for o in listed] == [key]
        _check_archive(s3.get_object(Bucket="audit-archive", Key=key)["Body"].read(), log, 3)
    finally:
        server.stop()


# -- dropping while the pipeline ingests -----------------------------------------------------
STALL_BOUND_S = 2.0  # README "Retention": ingestion never pauses longer than this for a drop


async def test_ingestion_goes_on_while_a_month_is_dropped(log: Log) -> None:
    """A month of 20,000 events of 200 tenants is dropped while a worker ingests a steady
    stream: commits keep coming (no gap above STALL_BOUND_S), nothing is lost."""
    import itertools
    import json
    import time

    from ledger import retention
    from schemas.ids import tenant_subject
    from tests.support.events import README_EVENT
    from tests.support.service import admin_count, running_worker

    old = [make_event(f"ret-bulk-{i % 200}", OLD + i // 200) for i in range(20_000)]
    await store(log.pool, old)
    await log.checkpointer.register_key()
    await log.checkpointer.cycle()
    log.settings = log.settings.replace(retention_days=30)
    due = [m for m in await log.plan() if m.due]
    assert due and sum(m.events for m in due) == 20_000

    commits: list[float] = []

    async def on_commit(stored: list, duplicates: list, rejected: list) -> None:
        # Called after every committed batch (the runtime's worker names only the keys a
        # writer waits for: none here, these events carry no idempotency key).
        commits.append(time.monotonic())

    published = 0
    async with running_worker(log.settings, on_commit=on_commit) as w:
        js = w.nc.jetstream()
        subject = tenant_subject(log.settings.subject, "ret-live")
        stop = asyncio.Event()

        async def produce() -> None:
            nonlocal published
            doc = json.loads(README_EVENT)
            doc.pop("occurred_at", None)
            doc["tenant_id"] = "ret-live"
            while not stop.is_set():
                for _ in range(5):
                    await js.publish(subject, json.dumps(doc).encode())
                    published += 1
                await asyncio.sleep(0.01)

        producer = asyncio.create_task(produce())
        await asyncio.sleep(0.5)
        started = time.monotonic()
        for m in due:
            await retention.drop(log.settings.database_url, log.settings, log.signer, m)
        ended = time.monotonic()
        await asyncio.sleep(0.5)
        stop.set()
        await producer
        await eventually(
            lambda: admin_count(log.settings.database_url, "SELECT count(*) FROM audit.events"
                                " WHERE tenant_id = 'ret-live'"),
            lambda live: live == published, timeout=10,
            what="every event published during the drop stored",
        )  # fmt: skip
    during = [t for t in commits if started - 0.2 <= t <= ended + 0.2]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    print(
        f"drop took {ended - started:.2f} s; {len(during)} commits meanwhile; "
        f"longest pause {max(gaps, default=0):.3f} s"
    )  # shown with -s
    assert len(during) >= 3 and max(gaps) < STALL_BOUND_S, (ended - started, max(gaps))
    assert await admin_count(log.settings.database_url, "SELECT count(*) FROM audit.events"
                             " WHERE tenant_id LIKE 'ret-bulk-%'") == 0  # fmt: skip


async def test_a_drop_takes_the_months_search_index_with_it(log: Log) -> None:
    """The search documents of a dropped month (``audit.search``, pipeline/indexer.py) go
    with its events; a search partition that a failed round left behind goes next time."""
    from ledger.retention import drop_search_months
    from pipeline.indexer import SearchIndexer
    from query_api import sql
    from query_api.filters import EventQuery

    await log.add([OLD + 2, OLD + 1, 20, 10])
    assert await SearchIndexer(log.settings, log.pool).cycle() == 4
    assert await log.count("search") == 4
    old = [m.name for m in await log.plan()
           if m.tenants and m.end < datetime.now(UTC) - timedelta(days=60)]  # fmt: skip
    await log.superuser("INSERT INTO audit.tenant_policies (tenant_id, retention_days)"
                        " VALUES ($1, 30)", log.tenant)  # fmt: skip
    assert await log.apply() == old and len(old) == 1
    assert await log.count("search") == 2
    conn = await asyncpg.connect(log.settings.database_url)
    try:
        gone = "audit.search" + old[0].removeprefix("events")
        assert await conn.fetchval("SELECT to_regclass($1)", gone) is None
        # What is left is still found, through the index.
        async with sql.tenant_tx(log.pool, log.tenant) as tx:
            rows = await sql.list_events(tx, EventQuery(q="event number"), log.tenant, None)
        assert len(rows) == 2
        await conn.execute(
            "CREATE TABLE audit.search_1999_01 PARTITION OF audit.search"
            " FOR VALUES FROM ('1999-01-01 00:00+00') TO ('1999-02-01 00:00+00')"
        )
        assert await drop_search_months(conn) == ["search_1999_01"]
        assert await drop_search_months(conn) == []
    finally:
        await conn.close()
