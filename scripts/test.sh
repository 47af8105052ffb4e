#!/usr/bin/env bash
# Runs Ferry's whole test suite: formatting, lints, unit tests, the store
# conformance suite on SQLite and PostgreSQL, and the integration tests
# (in-process harness and the real binaries).
#
# Installs and starts what the tests need, idempotently: a PostgreSQL server
# on 127.0.0.1:55432 (scripts/ensure-postgres.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "==> PostgreSQL for the store tests" >&2
eval "$(bash scripts/ensure-postgres.sh)"

echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check

echo "==> cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> build the binaries (the end-to-end tests run them)" >&2
cargo build --workspace --bins --locked

echo "==> tests" >&2
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
