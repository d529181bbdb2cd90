-- 011: the indexer makes each tenant's lexeme once per call, not once per event.
--
-- audit.search_doc(tenant_id, ...) is audit.search_text(...) || the tenant's lexeme
-- (' ' || md5(tenant_id), as a tsvector): per event, an md5, an array and a tsvector
-- built for the same few tenants again and again (~1 µs of PostgreSQL per event, measured
-- alone). audit.index_search now builds it once per tenant it picks and appends it to
-- every document of that tenant: the documents are the same as before, byte for byte
-- (audit.search_doc stays the definition; tests/integration/test_search_index.py checks
-- stored documents against it). Only the function changes; its grants stay.
SET LOCAL ROLE auditlog_owner;

CREATE OR REPLACE FUNCTION audit.index_search(max_rows integer, OUT indexed bigint, OUT more boolean)
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
    ), picked AS MATERIALIZED (  -- (materialized: the tenant's lexeme made once here)
        SELECT *, array_to_tsvector(ARRAY[audit.tenant_lexeme(tenant_id)]) AS lexeme
        FROM (SELECT *, sum(quota) OVER (ORDER BY lag, tenant_id) AS upto FROM sized) s
        WHERE upto - quota < max_rows
    ), found AS MATERIALIZED (
        -- audit.search_doc(e.tenant_id, ...), its tenant lexeme taken from picked
        SELECT p.tenant_id, e.occurred_at, e.id, e.seq,
               audit.search_text(e.action, e.description, e.actor_display_name,
                                 e.resource_display_name) || p.lexeme AS doc
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
