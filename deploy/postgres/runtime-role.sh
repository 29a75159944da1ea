#!/bin/sh
# Run once by the postgres image when it initialises an empty data volume: the role the
# gateway's services log in as (`attest_runtime`). `attest` owns the tables and runs the
# migrations; the init service's `attest-gateway db grant --runtime-role attest_runtime` gives
# this role what the gateway needs, the audit log read and append only (docs/operations.md,
# "Audit log"). On a volume made before this file existed, create the role by hand once:
#   docker compose exec postgres psql -U attest -d attest \
#     -c "CREATE ROLE attest_runtime LOGIN PASSWORD '<POSTGRES_RUNTIME_PASSWORD>'"
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v password="$POSTGRES_RUNTIME_PASSWORD" <<'SQL'
CREATE ROLE attest_runtime LOGIN PASSWORD :'password';
SQL
