-- 001: roles, schema, the partitioned events table, immutability and row-level security.
--
-- Roles (cluster-wide, created once, NOLOGIN; the connecting user is granted both):
--   auditlog_owner  owns every object: migrations and partition maintenance.
--   auditlog_app    the service at run time: INSERT and SELECT on events, never
--                   UPDATE/DELETE/TRUNCATE; sees only the tenant set for its transaction.
DO $$
BEGIN
    CREATE ROLE auditlog_owner NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
DO $$
BEGIN
    CREATE ROLE auditlog_app NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
GRANT auditlog_owner TO CURRENT_USER;
GRANT auditlog_app TO CURRENT_USER;

CREATE SCHEMA audit AUTHORIZATION auditlog_owner;
SET LOCAL ROLE auditlog_owner;

CREATE TABLE audit.events (
    tenant_id              text        NOT NULL,
    occurred_at            timestamptz NOT NULL,
    id                     uuid        NOT NULL,
    seq                    bigint      NOT NULL,
    received_at            timestamptz NOT NULL,
    action                 text        NOT NULL,
    category               text        NOT NULL,
    severity               text        NOT NULL,
    actor_type             text        NOT NULL,
    actor_id               text        NOT NULL,
    actor_display_name     text        NOT NULL DEFAULT '',
    resource_type          text        NOT NULL DEFAULT '',
    resource_id            text        NOT NULL DEFAULT '',
    resource_display_name  text        NOT NULL DEFAULT '',
    related_resources      jsonb       NOT NULL DEFAULT '[]',
    description            text        NOT NULL DEFAULT '',
    -- json, not jsonb: the exact canonical text that was hashed is kept verbatim.
    metadata               json        NOT NULL DEFAULT '{}',
    changes                json,
    ip                     text        NOT NULL DEFAULT '',
    user_agent             text        NOT NULL DEFAULT '',
    request_id             text        NOT NULL DEFAULT '',
    trace_id               text        NOT NULL DEFAULT '',
    hash                   bytea       NOT NULL,
    -- Serves tenant-scoped newest-first scans (backwards) as well as uniqueness.
    PRIMARY KEY (tenant_id, occurred_at, id)
) PARTITION BY RANGE (occurred_at);

COMMENT ON TABLE audit.events IS
    'Immutable audit events, one partition per UTC month; only retention drops partitions.';

-- (tenant_id, id) is stored once whatever occurred_at says: the pipeline inserts here
-- first (ON CONFLICT DO NOTHING) and only stores the events this insert returned.
CREATE TABLE audit.event_ids (
    tenant_id    text        NOT NULL,
    id           uuid        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

-- Per-tenant head of the hash chain, locked FOR UPDATE by each flush transaction.
CREATE TABLE audit.chain_heads (
    tenant_id   text        PRIMARY KEY,
    last_seq    bigint      NOT NULL,
    last_hash   bytea       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION audit.refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are immutable: % on %.% refused',
        TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'AL001',
              HINT = 'retention drops whole expired partitions; rows are never changed';
END $$;

CREATE TRIGGER events_immutable BEFORE UPDATE OR DELETE ON audit.events
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON audit.events
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER event_ids_immutable BEFORE UPDATE OR DELETE ON audit.event_ids
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER event_ids_no_truncate BEFORE TRUNCATE ON audit.event_ids
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();

-- Creates the UTC month partition holding ts, if missing. Safe under concurrency.
-- SECURITY DEFINER so the app role can make the month a batch needs, and nothing else.
CREATE FUNCTION audit.ensure_partition(ts timestamptz) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, audit AS $$
DECLARE
    month_start timestamp := date_trunc('month', ts AT TIME ZONE 'UTC');
    part_name   text := 'events_' || to_char(month_start, 'YYYY_MM');
BEGIN
    IF to_regclass('audit.' || part_name) IS NOT NULL THEN
        RETURN part_name;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('auditlog.partition.' || part_name));
    BEGIN
        EXECUTE format(
            'CREATE TABLE audit.%I PARTITION OF audit.events FOR VALUES FROM (%L) TO (%L)',
            part_name,
            to_char(month_start, 'YYYY-MM-DD HH24:MI:SS') || '+00',
            to_char(month_start + interval '1 month', 'YYYY-MM-DD HH24:MI:SS') || '+00');
    EXCEPTION WHEN duplicate_table THEN
        -- Another session made it while we waited (an advisory lock does not refresh
        -- this session's catalog cache, so the check above can miss it).
        RETURN part_name;
    END;
    -- The pipeline COPYs straight into partitions (COPY FROM is not allowed on a table
    -- with row-level security); it gets INSERT only, never SELECT, on them.
    EXECUTE format('GRANT INSERT ON audit.%I TO auditlog_app', part_name);
    EXECUTE format('CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON audit.%I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change()', part_name);
    RETURN part_name;
END $$;
REVOKE ALL ON FUNCTION audit.ensure_partition(timestamptz) FROM PUBLIC;

-- Lists partitions with their bounds, for `auditlog partitions list`.
CREATE VIEW audit.partitions AS
SELECT c.relname AS name,
       pg_get_expr(c.relpartbound, c.oid) AS bounds,
       pg_total_relation_size(c.oid) AS bytes
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'audit.events'::regclass;

GRANT USAGE ON SCHEMA audit TO auditlog_app;
GRANT SELECT, INSERT ON audit.events TO auditlog_app;
GRANT SELECT, INSERT ON audit.event_ids TO auditlog_app;
GRANT SELECT, INSERT, UPDATE ON audit.chain_heads TO auditlog_app;
GRANT SELECT ON audit.partitions TO auditlog_app;
GRANT EXECUTE ON FUNCTION audit.ensure_partition(timestamptz) TO auditlog_app;

-- Row-level security: the app role sees only the tenant set for its transaction with
-- set_config('audit.tenant_id', <tenant>, true). Unset means no rows.
ALTER TABLE audit.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit.events
    USING (tenant_id = current_setting('audit.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('audit.tenant_id', true));
