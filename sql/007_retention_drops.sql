-- 007: dropping expired months. What a drop removes from a tenant's chain is recorded as
-- signed gaps, so verification continues across them; claims go with their events.
SET LOCAL ROLE auditlog_owner;

-- One row per run of consecutive seqs of a tenant removed by a partition drop: the hash
-- before the run and the hash of its last event, signed (a C2SP signed note over the
-- line "gap <origin> <first> <last> <b64 prev> <b64 last> <time>").
CREATE TABLE audit.retention_gaps (
    tenant_id   text        NOT NULL,
    first_seq   bigint      NOT NULL CHECK (first_seq >= 1),
    last_seq    bigint      NOT NULL CHECK (last_seq >= first_seq),
    prev_hash   bytea       NOT NULL CHECK (length(prev_hash) = 32),
    last_hash   bytea       NOT NULL CHECK (length(last_hash) = 32),
    partition   text        NOT NULL,
    dropped_at  timestamptz NOT NULL,
    note        text        NOT NULL,
    PRIMARY KEY (tenant_id, first_seq)
);
GRANT SELECT ON audit.retention_gaps TO auditlog_app;
CREATE TRIGGER retention_gaps_immutable BEFORE UPDATE OR DELETE ON audit.retention_gaps
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();

CREATE TABLE audit.dropped_partitions (
    name        text        PRIMARY KEY,
    dropped_at  timestamptz NOT NULL DEFAULT now(),
    events      bigint      NOT NULL,
    bytes       bigint      NOT NULL
);
GRANT SELECT ON audit.dropped_partitions TO auditlog_app;

-- Claims may go only with their events, by the owner, while it drops their month: the
-- retention job sets audit.retention_drop = 'on' in its transaction. The runtime role can
-- set that too, but is no member of auditlog_owner, so it is still refused.
CREATE OR REPLACE FUNCTION audit.refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'event_ids'
       AND current_setting('audit.retention_drop', true) = 'on'
       AND pg_has_role(session_user, 'auditlog_owner', 'MEMBER') THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit events are immutable: % on %.% refused',
        TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'AL001',
              HINT = 'retention drops whole expired partitions; rows are never changed';
END $$;
GRANT DELETE ON audit.event_ids TO auditlog_owner;
