-- 002: partitions for the current month and the next three (later months are created
-- ahead of time by the service and on demand by the pipeline).
SET LOCAL ROLE auditlog_owner;
SELECT audit.ensure_partition(now() + make_interval(months => m))
FROM generate_series(-1, 3) AS m;
