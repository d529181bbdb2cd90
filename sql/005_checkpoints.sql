-- 005: signed checkpoints over each tenant's log (RFC 6962 Merkle tree over its event
-- hashes, in seq order), the tree's stored interior hashes (tiles), and the public keys
-- that signed them. Written by the one process holding the checkpointer lease.
SET LOCAL ROLE auditlog_owner;

-- Events of a tenant by seq: the checkpointer reads only what is new since its last
-- checkpoint; verification, proofs and bundles walk or look up by seq.
CREATE INDEX events_tenant_seq ON audit.events (tenant_id, seq);

-- Public keys that have signed checkpoints; a rotation retires the previous key (its
-- checkpoints stay valid under it).
CREATE TABLE audit.signing_keys (
    key_id       text        PRIMARY KEY,          -- hex key hash of the signed note
    name         text        NOT NULL,             -- the signed note's key name
    public_key   bytea       NOT NULL CHECK (length(public_key) = 32),
    verifier_key text        NOT NULL,             -- <name>+<hash>+<base64 key>
    created_at   timestamptz NOT NULL DEFAULT now(),
    retired_at   timestamptz
);
GRANT SELECT, INSERT ON audit.signing_keys TO auditlog_app;
GRANT UPDATE (retired_at) ON audit.signing_keys TO auditlog_app;

-- The Merkle tree of each tenant so far: its size and the roots of its complete
-- subtrees (a compact range), to extend it without reading it.
CREATE TABLE audit.merkle_state (
    tenant_id   text        PRIMARY KEY,
    size        bigint      NOT NULL CHECK (size >= 0),
    frontier    bytea[]     NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE ON audit.merkle_state TO auditlog_app;

-- Tiles (C2SP tlog-tiles' layout): tile (level L, index N) holds the hashes of the
-- nodes at tree level 8*L with indices 256*N .. 256*N+255, 32 bytes each, concatenated;
-- the rightmost tile of a level is partial until its nodes exist. Any node hash is at
-- most 128 hashes away, so proofs cost O(log n) reads.
CREATE TABLE audit.merkle_tiles (
    tenant_id   text        NOT NULL,
    level       smallint    NOT NULL CHECK (level >= 0),
    idx         bigint      NOT NULL CHECK (idx >= 0),
    hashes      bytea       NOT NULL CHECK (length(hashes) % 32 = 0 AND length(hashes) <= 8192),
    PRIMARY KEY (tenant_id, level, idx)
);
GRANT SELECT, INSERT, UPDATE ON audit.merkle_tiles TO auditlog_app;

-- Signed checkpoints: C2SP signed notes of C2SP tlog-checkpoints, one per tenant and
-- size. Immutable like the events.
CREATE TABLE audit.checkpoints (
    tenant_id   text        NOT NULL,
    size        bigint      NOT NULL CHECK (size > 0),
    root        bytea       NOT NULL CHECK (length(root) = 32),
    key_id      text        NOT NULL,
    signed_at   timestamptz NOT NULL,
    note        text        NOT NULL,
    PRIMARY KEY (tenant_id, size)
);
GRANT SELECT, INSERT ON audit.checkpoints TO auditlog_app;
CREATE TRIGGER checkpoints_immutable BEFORE UPDATE OR DELETE ON audit.checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON audit.checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
