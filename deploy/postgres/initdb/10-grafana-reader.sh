#!/bin/sh
# Run once by the postgres image, when it initialises an empty data directory: a read-only
# login for Grafana. The workers create the tables later (migrations, as POSTGRES_USER), so the
# grant is a default privilege on what POSTGRES_USER creates in the public schema.
set -eu
psql -v ON_ERROR_STOP=1 \
     --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     --set reader="$GRAFANA_DB_USER" --set password="$GRAFANA_DB_PASSWORD" \
     --set owner="$POSTGRES_USER" --set db="$POSTGRES_DB" <<'SQL'
CREATE ROLE :"reader" LOGIN PASSWORD :'password';
GRANT CONNECT ON DATABASE :"db" TO :"reader";
GRANT USAGE ON SCHEMA public TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
ALTER ROLE :"reader" SET default_transaction_read_only = on;
ALTER ROLE :"reader" SET statement_timeout = '30s';
SQL
