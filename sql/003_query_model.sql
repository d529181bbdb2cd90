-- 003: the read model: API keys, text search, and the event's JSON form.
SET LOCAL ROLE auditlog_owner;

-- Tenant API keys. The token is shown once; only its SHA-256 is stored.
CREATE TABLE audit.api_keys (
    key_id      text        PRIMARY KEY,
    tenant_id   text        NOT NULL,
    scopes      text[]      NOT NULL,
    token_hash  bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK (scopes <@ ARRAY['read', 'write']::text[] AND cardinality(scopes) > 0)
);
CREATE INDEX api_keys_tenant ON audit.api_keys (tenant_id);
GRANT SELECT, INSERT ON audit.api_keys TO auditlog_app;
GRANT UPDATE (revoked_at) ON audit.api_keys TO auditlog_app;

-- `q`: indexed full-text search over action, description and display names. The
-- 'simple' configuration (no stemming, no stop words) suits identifiers and names.
CREATE FUNCTION audit.search_text(action text, description text, actor_name text,
                                  resource_name text) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_tsvector('simple'::regconfig,
        translate(action, '._:-', '    ') || ' ' || description || ' ' ||
        actor_name || ' ' || resource_name)
$$;
CREATE INDEX events_search ON audit.events USING gin
    (audit.search_text(action, description, actor_display_name, resource_display_name))
    WITH (fastupdate = on);

-- The API's JSON form of a row (proto3 JSON names; timestamps RFC 3339 UTC).
CREATE FUNCTION audit.ts_json(ts timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

CREATE FUNCTION audit.event_json(e audit.events) RETURNS json
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT json_build_object(
        'id', e.id,
        'tenant_id', e.tenant_id,
        'seq', e.seq,
        'action', e.action,
        'category', e.category,
        'severity', e.severity,
        'actor', json_build_object('type', e.actor_type, 'id', e.actor_id,
                                   'display_name', e.actor_display_name),
        'primary_resource', CASE WHEN e.resource_type = '' THEN NULL ELSE
            json_build_object('type', e.resource_type, 'id', e.resource_id,
                              'display_name', e.resource_display_name) END,
        'related_resources', e.related_resources,
        'description', e.description,
        'metadata', e.metadata,
        'changes', e.changes,
        'occurred_at', audit.ts_json(e.occurred_at),
        'received_at', audit.ts_json(e.received_at),
        'ip', e.ip,
        'user_agent', e.user_agent,
        'request_id', e.request_id,
        'trace_id', e.trace_id,
        'hash', encode(e.hash, 'hex'))
$$;
GRANT EXECUTE ON FUNCTION audit.search_text(text, text, text, text) TO auditlog_app;
GRANT EXECUTE ON FUNCTION audit.ts_json(timestamptz) TO auditlog_app;
GRANT EXECUTE ON FUNCTION audit.event_json(audit.events) TO auditlog_app;
