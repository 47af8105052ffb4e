#!/usr/bin/env bash
# Makes a PostgreSQL server available for Ferry's tests on 127.0.0.1:55432,
# installing and initialising one if needed, and prints as its last line:
#
#   export FERRY_TEST_DATABASE_URL=postgres://ferry:ferry@127.0.0.1:55432/postgres
#
# so that `eval "$(scripts/ensure-postgres.sh)"` sets up a shell. Idempotent:
# a server already listening on the port is left alone. Everything else it
# says goes to stderr. Needs root (it may apt-get install, and runs the server
# as the `postgres` system user, since initdb refuses to run as root).
#
# FERRY_PG_DIR: the data directory (default /tmp/ferry-pg); the `postgres`
# user must be able to reach it, so not somewhere under /root.
set -euo pipefail

PORT=55432
DATA_DIR="${FERRY_PG_DIR:-/tmp/ferry-pg}"
EXPORT_LINE="export FERRY_TEST_DATABASE_URL=postgres://ferry:ferry@127.0.0.1:${PORT}/postgres"

log() { printf 'ensure-postgres: %s\n' "$*" >&2; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/${PORT}") 2>/dev/null; }

# The newest installed server's binaries; Debian keeps them off PATH.
server_bindir() {
    local initdb
    initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)
    [[ -n "$initdb" ]] && dirname "$initdb"
}

if listening; then
    log "a server is already listening on 127.0.0.1:${PORT}"
    echo "$EXPORT_LINE"
    exit 0
fi

# The postgres user cannot read root's home, which may be the current
# directory; psql and pg_ctl complain when they cannot return to it.
cd /

if ! bindir=$(server_bindir); then
    log "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y postgresql >&2; then
        log "install failed; refreshing the package lists and retrying"
        apt-get update >&2
        apt-get install -y postgresql >&2
    fi
    bindir=$(server_bindir) || {
        log "postgresql installed, but no /usr/lib/postgresql/*/bin/initdb found"
        exit 1
    }
fi
log "using server binaries in $bindir"

as_postgres() { runuser -u postgres -- "$@"; }

mkdir -p "$DATA_DIR"
chown -R postgres:postgres "$DATA_DIR"
chmod 700 "$DATA_DIR"

if [[ ! -s "$DATA_DIR/PG_VERSION" ]]; then
    log "initialising a cluster in $DATA_DIR"
    # A throwaway test server: the local socket is trusted, which gives this
    # script its way in to create the role; TCP connections need a password.
    as_postgres "$bindir/initdb" -D "$DATA_DIR" -U postgres -E UTF8 --no-locale \
        --auth-local=trust --auth-host=scram-sha-256 >&2
fi

if as_postgres "$bindir/pg_ctl" -D "$DATA_DIR" status >/dev/null 2>&1; then
    log "a server runs on $DATA_DIR but does not listen on 127.0.0.1:${PORT}; stop it first:"
    log "  runuser -u postgres -- $bindir/pg_ctl -D $DATA_DIR stop"
    exit 1
fi

log "starting the server on 127.0.0.1:${PORT} (log: $DATA_DIR/server.log)"
as_postgres "$bindir/pg_ctl" -D "$DATA_DIR" -l "$DATA_DIR/server.log" -w \
    -o "-p ${PORT} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" \
    start >&2

psql_admin() {
    as_postgres "$bindir/psql" -h /tmp -p "$PORT" -U postgres -d postgres \
        -v ON_ERROR_STOP=1 -X -A -t -q "$@"
}

if [[ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'ferry'")" != 1 ]]; then
    log "creating role ferry"
    psql_admin -c "CREATE ROLE ferry WITH LOGIN CREATEDB SUPERUSER PASSWORD 'ferry'" >&2
fi

echo "$EXPORT_LINE"
