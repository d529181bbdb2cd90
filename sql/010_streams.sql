-- 010: streams out: each tenant's committed events delivered, in seq order, to webhooks,
-- Splunk HTTP Event Collectors and S3-compatible buckets (pipeline/streams.py).
--
-- A stream belongs to one tenant (a tenant may have several). Managed by the admin API
-- only, like audit.api_keys and audit.tenant_policies, so these tables have no row-level
-- security; every event a stream delivers is read in a transaction that sets
-- audit.tenant_id to the stream's tenant, so the events policy keeps it to that tenant.
SET LOCAL ROLE auditlog_owner;

CREATE TABLE audit.streams (
    stream_id       text        PRIMARY KEY CHECK (stream_id ~ '^st_[0-9a-f]{16}$'),
    tenant_id       text        NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('webhook', 'splunk_hec', 's3')),
    description     text        NOT NULL DEFAULT '',
    -- Where to (URL, bucket, region...), never a secret: shown by the API as it is.
    destination     jsonb       NOT NULL,
    -- {"severities": [...], "categories": [...], "actions": [...]}; empty: everything.
    filters         jsonb       NOT NULL DEFAULT '{}',
    -- The stream's secrets (webhook signing secrets with their overlap, an HEC token, S3
    -- credentials), AES-256-GCM under the service's stream key (pipeline/stream_secrets.py);
    -- the API never returns them after creation.
    secrets         bytea       NOT NULL,
    secret_rotated_at timestamptz,
    -- The cursor: every event of the tenant with seq <= last_seq was delivered (or was
    -- filtered out, or dropped by retention with a gap record delivered instead).
    last_seq        bigint      NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    last_delivered_at timestamptz,
    state           text        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'paused')),
    paused_reason   text,
    paused_until    timestamptz,       -- NULL while paused: until an operator resumes it
    failures        integer     NOT NULL DEFAULT 0,   -- consecutive failed attempts
    failing_since   timestamptz,
    last_error      text,
    last_error_at   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((state = 'paused') = (paused_reason IS NOT NULL))
);
CREATE INDEX streams_tenant ON audit.streams (tenant_id);
GRANT SELECT, INSERT, DELETE ON audit.streams TO auditlog_app;
GRANT UPDATE (secrets, secret_rotated_at, last_seq, last_delivered_at, state, paused_reason,
              paused_until, failures, failing_since, last_error, last_error_at)
    ON audit.streams TO auditlog_app;

-- The latest delivery attempts of each stream (pruned to about a hundred per stream), for
-- `auditlog streams list` and GET .../streams/{id}.
CREATE TABLE audit.stream_attempts (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id     text        NOT NULL REFERENCES audit.streams ON DELETE CASCADE,
    attempted_at  timestamptz NOT NULL DEFAULT now(),
    first_seq     bigint      NOT NULL,
    last_seq      bigint      NOT NULL,
    records       integer     NOT NULL,
    ok            boolean     NOT NULL,
    status        integer,            -- the receiver's HTTP status, when it answered
    error         text,
    duration_ms   integer     NOT NULL
);
CREATE INDEX stream_attempts_stream ON audit.stream_attempts (stream_id, id);
GRANT SELECT, INSERT, DELETE ON audit.stream_attempts TO auditlog_app;
