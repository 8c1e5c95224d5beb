#!/bin/bash
# First start of the PostgreSQL container only (/docker-entrypoint-initdb.d): order's and
# pay's databases, each owned by its own user, who can reach only that database. The services
# run their migrations at start-up as those owners.
#
# ORDER_DB_PASSWORD and PAY_DB_PASSWORD come from docker-compose.yml, which puts the same
# values into ORDER_DATABASE_URL and PAY_DATABASE_URL (crates/system-tests/tests/api/compose.rs
# checks that the user and database names here are the ones those URLs name).
set -euo pipefail

: "${ORDER_DB_PASSWORD:?ORDER_DB_PASSWORD must be set}"
: "${PAY_DB_PASSWORD:?PAY_DB_PASSWORD must be set}"

psql -v ON_ERROR_STOP=1 -X --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    --set order_password="$ORDER_DB_PASSWORD" --set pay_password="$PAY_DB_PASSWORD" <<'SQL'
CREATE ROLE order_user LOGIN PASSWORD :'order_password';
CREATE ROLE pay_user LOGIN PASSWORD :'pay_password';
CREATE DATABASE order_db OWNER order_user;
CREATE DATABASE pay_db OWNER pay_user;
-- By default every role may connect to every database: only the owner (and superusers) may.
REVOKE ALL ON DATABASE order_db FROM PUBLIC;
REVOKE ALL ON DATABASE pay_db FROM PUBLIC;
REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
REVOKE CONNECT ON DATABASE template1 FROM PUBLIC;
SQL
