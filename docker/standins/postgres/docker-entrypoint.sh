#!/bin/bash
# Entrypoint of the PostgreSQL stand-in image (see the Dockerfile beside it).
set -Eeuo pipefail

if [[ "${1:-}" != postgres ]]; then
    exec "$@"
fi
shift

# As root: own the data directory, then run this script again as postgres.
if [[ "$(id -u)" == 0 ]]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" postgres "$@"
fi

export POSTGRES_USER="${POSTGRES_USER:-postgres}"
export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
    if [[ -z "${POSTGRES_PASSWORD:-}" ]]; then
        echo "error: the database is uninitialised and POSTGRES_PASSWORD is not set" >&2
        exit 1
    fi
    echo "initialising the database in $PGDATA"
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 -D "$PGDATA" >/dev/null
    printf "listen_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
    printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"

    # A server reachable only through its socket while the init scripts run, so that nothing
    # (healthchecks over TCP included) sees a half-initialised database.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -k /var/run/postgresql" -w start >/dev/null
    export PGHOST=/var/run/postgresql PGUSER="$POSTGRES_USER"
    if [[ "$POSTGRES_DB" != postgres ]]; then
        psql -v ON_ERROR_STOP=1 -XqA --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        [[ -e "$f" ]] || continue
        case "$f" in
        *.sh)
            echo "running $f"
            # shellcheck disable=SC1090 # the init scripts are the user's
            if [[ -x "$f" ]]; then "$f"; else . "$f"; fi
            ;;
        *.sql)
            echo "running $f"
            psql -v ON_ERROR_STOP=1 -Xq --dbname "$POSTGRES_DB" -f "$f"
            ;;
        *) echo "ignoring $f" ;;
        esac
    done
    unset PGHOST PGUSER
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "initialisation complete"
fi

exec postgres -D "$PGDATA" "$@"
