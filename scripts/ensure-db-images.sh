#!/usr/bin/env bash
# Makes the database server images the tests run in containers (a
# PostgreSQL and a MariaDB "inside a container of the app", as the Tecket
# and Nx runbooks have them). No image can be pulled here, so each is a
# Debian root filesystem made with `debootstrap --variant=minbase` against
# the apt source this machine already uses, with the server installed from
# Debian's packages, then `docker import`ed:
#
#   ferry-test-postgres:<recipe>   PostgreSQL 15 (Debian's postgresql-15)
#   ferry-test-mariadb:<recipe>    MariaDB 10.11 (Debian's mariadb-server)
#
# <recipe> is a hash of this script. The slow part, the root filesystem
# with the server's packages (minutes), is a base image named by a hash of
# its package list alone, so a change to an entrypoint below rebuilds in
# seconds; each is built once and reused by every later run (CI builds it
# once per machine). Prints as its last stdout line:
#
#   export FERRY_TEST_POSTGRES_IMAGE=... FERRY_TEST_MARIADB_IMAGE=...
#
# so that `eval "$(bash scripts/ensure-db-images.sh)"` sets up a shell;
# everything else goes to stderr.
#
# Both images take the settings their upstream images take, so a test (or a
# user's compose file) reads the same:
#   PostgreSQL: POSTGRES_PASSWORD (required), POSTGRES_USER (postgres),
#               POSTGRES_DB (= user); listens on 5432, data in
#               /var/lib/postgresql/data.
#   MariaDB:    MARIADB_ROOT_PASSWORD (required), MARIADB_DATABASE,
#               MARIADB_USER, MARIADB_PASSWORD; listens on 3306, data in
#               /var/lib/mysql.
set -euo pipefail

log() { printf 'ensure-db-images: %s\n' "$*" >&2; }

recipe=$(sha256sum "$0" | cut -c1-12)
PG_IMAGE="ferry-test-postgres:$recipe"
MARIADB_IMAGE="ferry-test-mariadb:$recipe"

# The first deb822 or one-line apt source of this machine: the mirror the
# packages come from.
mirror() {
  local uri
  uri=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | awk '{print $2}')
  [ -n "$uri" ] || uri=$(grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | head -n1 | awk '{print $2}')
  echo "${uri:-http://deb.debian.org/debian}"
}

ensure_debootstrap() {
  command -v debootstrap >/dev/null && return 0
  log "installing debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq debootstrap >&2 || { apt-get update -qq >&2 && apt-get install -y -qq debootstrap >&2; }
}

# base PACKAGES PORT: prints the name of a Debian root filesystem image with
# PACKAGES installed, building it when missing.
base() {
  local packages=$1 port=$2 image
  image="ferry-test-base:$(printf 'bookworm minbase %s' "$packages" | sha256sum | cut -c1-12)"
  if docker image inspect "$image" >/dev/null 2>&1; then
    echo "$image"
    return 0
  fi
  ensure_debootstrap
  local root
  root=$(mktemp -d /tmp/ferry-rootfs.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$root'" RETURN
  log "debootstrap bookworm with $packages into $root (a few minutes, once)"
  debootstrap --variant=minbase --include="$packages" bookworm "$root" "$(mirror)" >&2
  # Package caches are not needed at run time.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  log "importing $image"
  tar -C "$root" -c . | docker import --change "EXPOSE $port" --change 'ENV LANG=C.UTF-8' - "$image" >&2
  echo "$image"
}

# build IMAGE PACKAGES ENTRYPOINT_SCRIPT PORT: the base with the entrypoint.
build() {
  local image=$1 packages=$2 entry=$3 port=$4
  if docker image inspect "$image" >/dev/null 2>&1; then
    log "$image is there"
    return 0
  fi
  local from ctx
  from=$(base "$packages" "$port")
  ctx=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$ctx'" RETURN
  printf '%s\n' "$entry" > "$ctx/ferry-entrypoint"
  chmod 0755 "$ctx/ferry-entrypoint"
  printf 'FROM %s\nCOPY ferry-entrypoint /usr/local/bin/ferry-entrypoint\nENTRYPOINT ["/usr/local/bin/ferry-entrypoint"]\n' "$from" > "$ctx/Dockerfile"
  log "building $image from $from"
  docker build -q -t "$image" "$ctx" >&2
}

PG_ENTRY='#!/bin/sh
# PostgreSQL 15 in a container: initialise on first start, then run in the
# foreground as the postgres user.
set -eu
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"
data=/var/lib/postgresql/data
bin=/usr/lib/postgresql/15/bin
mkdir -p "$data" /run/postgresql
chown -R postgres:postgres "$data" /run/postgresql
chmod 0700 "$data"
if [ ! -s "$data/PG_VERSION" ]; then
  pw=$(mktemp)
  printf "%s\n" "$POSTGRES_PASSWORD" > "$pw"
  chown postgres "$pw"
  su postgres -s /bin/sh -c "$bin/initdb -D $data -U $user --pwfile=$pw --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8" >/dev/null
  rm -f "$pw"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$data/pg_hba.conf"
  echo "host all all ::/0 scram-sha-256" >> "$data/pg_hba.conf"
  if [ "$db" != postgres ]; then
    su postgres -s /bin/sh -c "$bin/postgres --single -D $data postgres" >/dev/null <<SQL
CREATE DATABASE "$db" OWNER "$user";
SQL
  fi
fi
exec su postgres -s /bin/sh -c "exec $bin/postgres -D $data -c listen_addresses=* -c unix_socket_directories=/run/postgresql"'

MARIADB_ENTRY='#!/bin/sh
# MariaDB in a container: initialise on first start (root password,
# optional database and user), then run in the foreground.
set -eu
: "${MARIADB_ROOT_PASSWORD:?set MARIADB_ROOT_PASSWORD}"
data=/var/lib/mysql
mkdir -p "$data" /run/mysqld
chown -R mysql:mysql "$data" /run/mysqld
if [ ! -d "$data/mysql" ]; then
  mariadb-install-db --user=mysql --datadir="$data" --auth-root-authentication-method=normal >/dev/null
  init=$(mktemp)
  {
    # No anonymous accounts: they would shadow user@'%' from localhost.
    echo "DELETE FROM mysql.global_priv WHERE User='"'"''"'"';"
    echo "FLUSH PRIVILEGES;"
    echo "ALTER USER root@localhost IDENTIFIED BY '"'"'$MARIADB_ROOT_PASSWORD'"'"';"
    echo "CREATE USER root@'"'"'%'"'"' IDENTIFIED BY '"'"'$MARIADB_ROOT_PASSWORD'"'"';"
    echo "GRANT ALL ON *.* TO root@'"'"'%'"'"' WITH GRANT OPTION;"
    if [ -n "${MARIADB_DATABASE:-}" ]; then
      echo "CREATE DATABASE IF NOT EXISTS \`$MARIADB_DATABASE\`;"
    fi
    if [ -n "${MARIADB_USER:-}" ]; then
      echo "CREATE USER '"'"'$MARIADB_USER'"'"'@'"'"'%'"'"' IDENTIFIED BY '"'"'${MARIADB_PASSWORD:-}'"'"';"
      [ -n "${MARIADB_DATABASE:-}" ] && echo "GRANT ALL ON \`$MARIADB_DATABASE\`.* TO '"'"'$MARIADB_USER'"'"'@'"'"'%'"'"';"
    fi
  } > "$init"
  chown mysql "$init"
  set -- --init-file="$init"
fi
exec mariadbd --user=mysql --datadir="$data" --bind-address=0.0.0.0 --port=3306 "$@"'

docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || {
  log "the Docker engine is not reachable"
  exit 1
}
build "$PG_IMAGE" "postgresql-15,postgresql-client-15" "$PG_ENTRY" 5432
build "$MARIADB_IMAGE" "mariadb-server,mariadb-client" "$MARIADB_ENTRY" 3306

echo "export FERRY_TEST_POSTGRES_IMAGE=$PG_IMAGE FERRY_TEST_MARIADB_IMAGE=$MARIADB_IMAGE"
