#!/usr/bin/env bash
# Runs Ferry's whole test suite: formatting, lints, unit tests, the store
# conformance suite on SQLite and PostgreSQL, and the integration tests
# (in-process harness and the real binaries), including those that drive the
# Docker engine.
#
# Installs and starts what the tests need, idempotently: a PostgreSQL server
# on 127.0.0.1:55432 (scripts/ensure-postgres.sh), a static busybox for test
# images, systemd-analyze for the unit checks, a Docker registry with basic
# auth on 127.0.0.1:5000 (scripts/ensure-registry.sh), an nginx under
# /tmp/ferry-nginx on 127.0.0.1:18080 (scripts/ensure-nginx.sh), a
# second Docker engine standing in for a second host
# (scripts/ensure-docker2.sh), and PostgreSQL and MariaDB server images
# built from Debian's packages, for the tests of databases in containers
# (scripts/ensure-db-images.sh; minutes the first time, cached after).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Installs a Debian package unless `path` exists (root; apt-get update only
# when the first attempt fails, as on a fresh machine).
ensure_pkg() {
  local path=$1 pkg=$2
  [ -e "$path" ] && return 0
  echo "==> installing $pkg" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "$pkg" >&2 || { apt-get update -qq >&2 && apt-get install -y -qq "$pkg" >&2; }
}

echo "==> PostgreSQL for the store tests" >&2
eval "$(bash scripts/ensure-postgres.sh)"

echo "==> Docker engine and a static busybox for test images" >&2
ensure_pkg /bin/busybox busybox-static
[ -x /bin/busybox ] || { echo "error: /bin/busybox missing after installing busybox-static" >&2; exit 1; }
docker version --format 'Docker engine {{.Server.Version}}' >&2 || {
  echo "error: the Docker engine is not reachable; the deploy tests need it" >&2
  exit 1
}

echo "==> systemd-analyze, to check the systemd units as installed" >&2
ensure_pkg /usr/bin/systemd-analyze systemd

echo "==> a local Docker registry with credentials, for pull tests" >&2
eval "$(bash scripts/ensure-registry.sh)"

echo "==> a private nginx on 127.0.0.1:18080, for the blue-green tests" >&2
eval "$(bash scripts/ensure-nginx.sh)"

echo "==> a second Docker engine, standing in for a second host in rollout tests" >&2
eval "$(bash scripts/ensure-docker2.sh)"

echo "==> PostgreSQL and MariaDB server images, for databases in containers" >&2
eval "$(bash scripts/ensure-db-images.sh)"

echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check

echo "==> cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> build the binaries (the end-to-end tests run them)" >&2
cargo build --workspace --bins --locked

echo "==> tests" >&2
if cargo nextest --version >/dev/null 2>&1; then
  # In CI, the `ci` profile of .config/nextest.toml: flaky tests are retried
  # and reported as such.
  profile=default
  [ -n "${CI:-}" ] && profile=ci
  cargo nextest run --workspace --locked --no-fail-fast --profile "$profile"
else
  cargo test --workspace --locked --no-fail-fast
fi
