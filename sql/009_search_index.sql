-- 009: `q` through a search table of its own, kept up to date behind the ingest transaction.
--
-- The GIN index over audit.search_text(...) on audit.events cost about two thirds of
-- PostgreSQL's time per ingested row, inside the transaction holding chain-head locks, and
-- queries never used it: `@@` is not leakproof, so under row-level security PostgreSQL may
-- not evaluate it in an index before the tenant policy (every search walked the tenant's
-- events computing the text vector row by row). Now:
--   * audit.search holds (tenant_id, occurred_at, id, doc) per event, partitioned by month
--     like audit.events; a process holding the indexer lease fills it in bulk, tenant by
--     tenant, from the events after audit.search_progress.indexed_seq (index_search);
--   * audit.search_keys(q) answers the keys of the current tenant's events that `q`
--     matches: through the GIN index for what is indexed, and by the old expression over
--     the not-yet-indexed tail, in one snapshot, so results are exact whatever the lag;
--   * the index is dropped from audit.events; progress starts at 0, so the indexer
--     backfills existing events in the background after this migration commits.
SET LOCAL ROLE auditlog_owner;

-- A lexeme naming the tenant in every doc, so one GIN scan finds a word within a tenant
-- (no btree_gin needed). It starts with a space: websearch_to_tsquery never makes such a
-- lexeme from user text, so `q` can never match it or be widened by it.
CREATE FUNCTION audit.tenant_lexeme(tenant_id text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT ' ' || md5(tenant_id) $$;

CREATE FUNCTION audit.tenant_query(tenant_id text) RETURNS tsquery
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ('''' || audit.tenant_lexeme(tenant_id) || '''')::tsquery
$$;

-- What is indexed per event: exactly what `q` searched before (audit.search_text), plus
-- the tenant lexeme (no positions: phrase matching of `q` is unchanged).
CREATE FUNCTION audit.search_doc(tenant_id text, action text, description text,
                                 actor_name text, resource_name text) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT audit.search_text(action, description, actor_name, resource_name)
        || array_to_tsvector(ARRAY[audit.tenant_lexeme(tenant_id)])
$$;

CREATE TABLE audit.search (
    tenant_id    text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    id           uuid        NOT NULL,
    doc          tsvector    NOT NULL
) PARTITION BY RANGE (occurred_at);
COMMENT ON TABLE audit.search IS
    'Full-text search documents of audit.events, filled behind ingestion by the indexer;'
    ' retention drops a month of it with the events of that month.';
-- fastupdate: rows go to the pending list in bulk; the indexer merges the pending lists
-- after each batch (gin_clean_pending_list), so searches never scan a long one.
CREATE INDEX search_doc ON audit.search USING gin (doc) WITH (fastupdate = on);
ALTER TABLE audit.search ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit.search
    USING (tenant_id = current_setting('audit.tenant_id', true)
           AND occurred_at >= coalesce(nullif(current_setting('audit.visible_from', true), ''),
                                       '-infinity')::timestamptz);
GRANT SELECT ON audit.search TO auditlog_app;

-- Per tenant: every event with seq <= indexed_seq is in audit.search.
CREATE TABLE audit.search_progress (
    tenant_id    text        PRIMARY KEY,
    indexed_seq  bigint      NOT NULL CHECK (indexed_seq >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT ON audit.search_progress TO auditlog_app;

-- Every event committed before caught_up_at is indexed (the start of the last indexer
-- call that left nothing due): the oldest unindexed event is younger than now() minus it.
CREATE TABLE audit.search_indexer (
    singleton     boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    caught_up_at  timestamptz NOT NULL
);
INSERT INTO audit.search_indexer (caught_up_at) VALUES (now());
GRANT SELECT ON audit.search_indexer TO auditlog_app;

-- A search partition for every month that has an events partition.
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bounds
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'audit.events'::regclass
    LOOP
        EXECUTE format('CREATE TABLE audit.%I PARTITION OF audit.search %s',
                       'search' || substr(p.relname, length('events') + 1), p.bounds);
    END LOOP;
END $$;

-- Every new month gets both partitions (the events one and the search one).
CREATE OR REPLACE FUNCTION audit.ensure_partition(ts timestamptz) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, audit AS $$
DECLARE
    month_start timestamp := date_trunc('month', ts AT TIME ZONE 'UTC');
    suffix      text := to_char(month_start, 'YYYY_MM');
    part_name   text := 'events_' || suffix;
    search_name text := 'search_' || suffix;
    bounds      text := format('FOR VALUES FROM (%L) TO (%L)',
        to_char(month_start, 'YYYY-MM-DD HH24:MI:SS') || '+00',
        to_char(month_start + interval '1 month', 'YYYY-MM-DD HH24:MI:SS') || '+00');
BEGIN
    IF to_regclass('audit.' || part_name) IS NOT NULL
       AND to_regclass('audit.' || search_name) IS NOT NULL THEN
        RETURN part_name;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('auditlog.partition.' || part_name));
    BEGIN
        EXECUTE format('CREATE TABLE audit.%I PARTITION OF audit.events %s', part_name, bounds);
        -- The pipeline COPYs straight into partitions (COPY FROM is not allowed on a table
        -- with row-level security); it gets INSERT only, never SELECT, on them.
        EXECUTE format('GRANT INSERT ON audit.%I TO auditlog_app', part_name);
        EXECUTE format('CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON audit.%I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change()', part_name);
    EXCEPTION WHEN duplicate_table THEN
        -- Another session made it while we waited (an advisory lock does not refresh
        -- this session's catalog cache, so the check above can miss it).
        NULL;
    END;
    BEGIN
        EXECUTE format('CREATE TABLE audit.%I PARTITION OF audit.search %s', search_name, bounds);
    EXCEPTION WHEN duplicate_table THEN
        NULL;
    END;
    RETURN part_name;
END $$;
REVOKE ALL ON FUNCTION audit.ensure_partition(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit.ensure_partition(timestamptz) TO auditlog_app;

-- Out of the ingest transaction from now on. Dropping an index is a catalog change (it
-- waits only for the flushes in flight); the backfill is the indexer's, not this file's.
DROP INDEX audit.events_search;

-- One indexer call: up to about max_rows events of the tenants behind, those least behind
-- first and whole (live tenants stay under a second behind while a backfill takes what
-- is left), each tenant's events in seq order, then progress; one statement, so one
-- snapshot: a tenant's chain head and its events up to it are committed together. Returns NULL when another
-- session holds the indexer lease (a transaction-scoped advisory lock: one indexer at a
-- time, whatever calls it), else how many events it indexed and whether any stay due.
CREATE FUNCTION audit.index_search(max_rows integer, OUT indexed bigint, OUT more boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, audit AS $$
DECLARE
    months timestamp[];
    m      timestamp;
BEGIN
    IF NOT pg_try_advisory_xact_lock(7022629598041564280) THEN  -- "auditidx": the lease
        RETURN;
    END IF;
    WITH due AS (
        SELECT h.tenant_id, coalesce(p.indexed_seq, 0) AS done, h.last_seq,
               h.last_seq - coalesce(p.indexed_seq, 0) AS lag
        FROM audit.chain_heads h LEFT JOIN audit.search_progress p USING (tenant_id)
        WHERE h.last_seq > coalesce(p.indexed_seq, 0)
    ), ranked AS (  -- lag counts seqs: it bounds the rows (retention gaps only make fewer)
        SELECT *, row_number() OVER w AS k, count(*) OVER () AS n,
               coalesce(sum(lag) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                        0) AS before
        FROM due WINDOW w AS (ORDER BY lag, tenant_id)
    ), level AS (
        -- Water-filling: the k tenants least behind are indexed whole while the others
        -- could still get as much each; those get an equal share of what is left. All
        -- that is due fits whole when it is no more than max_rows (then nothing stays due).
        SELECT coalesce(max(k), 0) AS whole, coalesce(max(before + lag), 0) AS used
        FROM ranked WHERE before + (n - k + 1) * lag <= max_rows
    ), sized AS (
        SELECT r.*, CASE WHEN r.k <= l.whole THEN r.lag ELSE least(r.lag, greatest(
                   floor((max_rows - l.used) / greatest(r.n - l.whole, 1)), 10))::bigint
               END AS quota
        FROM ranked r, level l
    ), picked AS (
        SELECT * FROM (SELECT *, sum(quota) OVER (ORDER BY lag, tenant_id) AS upto
                       FROM sized) s
        WHERE upto - quota < max_rows
    ), found AS MATERIALIZED (
        SELECT p.tenant_id, e.occurred_at, e.id, e.seq,
               audit.search_doc(e.tenant_id, e.action, e.description, e.actor_display_name,
                                e.resource_display_name) AS doc
        FROM picked p CROSS JOIN LATERAL (
            SELECT * FROM audit.events e WHERE e.tenant_id = p.tenant_id AND e.seq > p.done
              AND e.seq <= p.last_seq ORDER BY e.seq LIMIT p.quota) e
    ), per_tenant AS (
        SELECT tenant_id, count(*) AS n, max(seq) AS top FROM found GROUP BY tenant_id
    ), stored AS (
        INSERT INTO audit.search (tenant_id, occurred_at, id, doc)
        SELECT tenant_id, occurred_at, id, doc FROM found
    ), moved AS (
        -- Fewer rows than the quota: the tenant is indexed up to its head.
        INSERT INTO audit.search_progress (tenant_id, indexed_seq)
        SELECT p.tenant_id, CASE WHEN coalesce(t.n, 0) < p.quota THEN p.last_seq ELSE t.top END
        FROM picked p LEFT JOIN per_tenant t USING (tenant_id)
        ON CONFLICT (tenant_id) DO UPDATE
            SET indexed_seq = EXCLUDED.indexed_seq, updated_at = now()
    )
    SELECT (SELECT count(*) FROM found),
           (SELECT count(*) FROM due) > (SELECT count(*) FROM picked)
           OR EXISTS (SELECT 1 FROM picked p JOIN per_tenant t USING (tenant_id)
                      WHERE t.n >= p.quota AND t.top < p.last_seq),
           (SELECT array_agg(DISTINCT date_trunc('month', occurred_at AT TIME ZONE 'UTC'))
            FROM found)
    INTO indexed, more, months;
    IF NOT more THEN
        UPDATE audit.search_indexer SET caught_up_at = now();
    END IF;
    FOREACH m IN ARRAY coalesce(months, '{}') LOOP  -- merge the pending lists it filled
        PERFORM gin_clean_pending_list(x.indexrelid::regclass) FROM pg_index x
        WHERE x.indrelid = to_regclass('audit.search_' || to_char(m, 'YYYY_MM'));
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION audit.index_search(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit.index_search(integer) TO auditlog_app;

-- How far the index is behind: events committed and not yet indexed, and an upper bound
-- of the oldest one's age in seconds (0 when none).
CREATE FUNCTION audit.search_lag(OUT events bigint, OUT seconds double precision)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, audit AS $$
    SELECT l.n, CASE WHEN l.n > 0
                THEN greatest(extract(epoch FROM now() - i.caught_up_at)::float8, 0) ELSE 0 END
    FROM (SELECT coalesce(sum(h.last_seq - coalesce(p.indexed_seq, 0)), 0)::bigint AS n
          FROM audit.chain_heads h LEFT JOIN audit.search_progress p USING (tenant_id)
          WHERE h.last_seq > coalesce(p.indexed_seq, 0)) l,
         audit.search_indexer i
$$;
REVOKE ALL ON FUNCTION audit.search_lag() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit.search_lag() TO auditlog_app;

-- The keys of the current tenant's (audit.tenant_id) visible (audit.visible_from) events
-- that q matches, each once: indexed ones through the GIN index, the tail after
-- indexed_seq by the same expression the index holds. The tenant comes from the
-- transaction's setting, never from an argument, so no caller can ask for another's.
-- plpgsql so that its plans are cached per session.
CREATE FUNCTION audit.search_keys(q tsquery)
RETURNS TABLE (occurred_at timestamptz, id uuid)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, audit ROWS 100 AS $$
DECLARE
    tenant text := nullif(current_setting('audit.tenant_id', true), '');
    since  timestamptz := coalesce(nullif(current_setting('audit.visible_from', true), ''),
                                   '-infinity');
    done   bigint;
BEGIN
    IF tenant IS NULL OR numnode(q) = 0 THEN  -- an empty query matches nothing, as before
        RETURN;
    END IF;
    SELECT p.indexed_seq INTO done FROM audit.search_progress p WHERE p.tenant_id = tenant;
    RETURN QUERY
        SELECT s.occurred_at, s.id FROM audit.search s
        WHERE s.doc @@ (q && audit.tenant_query(tenant)) AND s.tenant_id = tenant
          AND s.occurred_at >= since
        UNION ALL
        SELECT e.occurred_at, e.id FROM audit.events e
        WHERE e.tenant_id = tenant AND e.seq > coalesce(done, 0) AND e.occurred_at >= since
          AND audit.search_text(e.action, e.description, e.actor_display_name,
                                e.resource_display_name) @@ q;
END $$;
REVOKE ALL ON FUNCTION audit.search_keys(tsquery) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit.search_keys(tsquery) TO auditlog_app;
