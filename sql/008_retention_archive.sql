-- 008: archive before drop, per tenant. NULL: archive when AUDIT_RETENTION_ARCHIVE names a
-- destination; false: this tenant's months are dropped without an archive; true: a month
-- of this tenant is never dropped unless its archive was written and verified.
SET LOCAL ROLE auditlog_owner;

ALTER TABLE audit.tenant_policies ADD COLUMN archive boolean;
