#!/bin/sh
# Runs once, on the first start of deploy/compose.yaml's PostgreSQL (empty data volume):
# the owner login `auditlog_admin` (CREATEROLE, not a superuser) and the database it owns.
# `auditlog migrate` does the rest with it: roles auditlog_owner/auditlog_app, the schema,
# and the runtime login auditlog_runtime (README "Database credentials").
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v owner_password="$AUDIT_OWNER_PASSWORD" <<'SQL'
CREATE ROLE auditlog_admin LOGIN CREATEROLE PASSWORD :'owner_password';
CREATE DATABASE auditlog OWNER auditlog_admin;
SQL
