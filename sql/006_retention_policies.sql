-- 006: per-tenant retention and legal hold; API keys that expire and show their last use.
SET LOCAL ROLE auditlog_owner;

-- A tenant's retention override (NULL: the global AUDIT_RETENTION_DAYS) and legal hold.
CREATE TABLE audit.tenant_policies (
    tenant_id       text        PRIMARY KEY,
    retention_days  integer     CHECK (retention_days BETWEEN 1 AND 36500),
    hold_reason     text,       -- NULL: no legal hold
    hold_set_by     text,
    hold_set_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((hold_reason IS NULL) = (hold_set_at IS NULL))
);
GRANT SELECT, INSERT, UPDATE ON audit.tenant_policies TO auditlog_app;

-- Reads see a tenant's events from audit.visible_from on (set per transaction by the read
-- API from the tenant's retention; unset for the pipeline, the checkpointer and
-- verification, which see every stored row). PostgreSQL enforces it on every read path.
ALTER POLICY tenant_isolation ON audit.events
    USING (tenant_id = current_setting('audit.tenant_id', true)
           AND occurred_at >= coalesce(nullif(current_setting('audit.visible_from', true), ''),
                                       '-infinity')::timestamptz)
    WITH CHECK (tenant_id = current_setting('audit.tenant_id', true));

ALTER TABLE audit.api_keys ADD COLUMN expires_at timestamptz;
ALTER TABLE audit.api_keys ADD COLUMN last_used_at timestamptz;
GRANT UPDATE (last_used_at) ON audit.api_keys TO auditlog_app;
