#!/usr/bin/env bash
# Builds the Docker image ferry-example:TAG of the example app
# (deploy/example/app) without pulling anything: the binary is compiled
# statically on this machine and copied into a FROM scratch image.
#
#   deploy/example/build-image.sh TAG          (from any directory)
#
# Prints the image id as its last (and only) stdout line; progress goes to
# stderr. Idempotent and quick on a rerun: cargo and Docker's layer cache
# make a second build of the same sources a no-op, and every tag shares one
# binary layer (the tag is baked in as ENV APP_VERSION, not compiled in, so
# a new tag never recompiles).
#
# Environment:
#   FAIL_HEALTH=1      bake ENV FAIL_HEALTH=1 into the image: a release whose
#                      /health answers 503, for failed-deploy tests
#   HEALTHCHECK_CMD=1  add a Docker HEALTHCHECK running `ferry-example
#                      healthcheck` (the image has no curl)
#   CARGO_TARGET_DIR   honoured, as by cargo (default: <repo>/target)
#   CARGO              the cargo to run (default: cargo)
set -euo pipefail

log() { printf 'build-image: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[[ $# -eq 1 && -n "$1" ]] || die "usage: $0 TAG"
TAG=$1
# Docker's rule for tags; checked here so a bad tag fails before the build.
[[ "$TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] ||
    die "invalid tag '$TAG' (letters, digits, _ . -; at most 128; not starting with . or -)"

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TRIPLE=x86_64-unknown-linux-gnu
IMAGE="ferry-example:${TAG}"
CARGO_BIN=${CARGO:-cargo}

command -v docker >/dev/null || die "docker is not installed"

log "compiling ferry-example statically for $TRIPLE"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros
# (which must stay dynamic host binaries). CARGO_ENCODED_RUSTFLAGS would
# override RUSTFLAGS, and a caller's APP_VERSION would be compiled in and
# force a rebuild per tag: neither may leak in.
(
    cd "$REPO_ROOT"
    env -u CARGO_ENCODED_RUSTFLAGS -u APP_VERSION \
        RUSTFLAGS="-C target-feature=+crt-static" \
        "$CARGO_BIN" build --release --locked -p ferry-example --target "$TRIPLE" >&2
)

TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$REPO_ROOT/$TARGET_DIR"
BIN="$TARGET_DIR/$TRIPLE/release/ferry-example"
[[ -x "$BIN" ]] || die "cargo succeeded but $BIN is missing"

# FROM scratch has no dynamic loader or libc: a dynamic binary would fail to
# start there with a baffling "no such file or directory".
# `file` when installed; else ldd (always there with glibc), which says
# "statically linked" or "not a dynamic executable" for a static binary.
if command -v file >/dev/null; then
    described=$(file -b "$BIN")
    static=no
    if [[ "$described" != *"dynamically linked"* && "$described" != *"interpreter"* &&
          ( "$described" == *"statically linked"* || "$described" == *"static-pie linked"* ) ]]; then
        static=yes
    fi
else
    described=$(ldd "$BIN" 2>&1 || true)
    static=no
    if [[ "$described" == *"statically linked"* || "$described" == *"not a dynamic executable"* ]]; then
        static=yes
    fi
fi
[[ "$static" == yes ]] ||
    die "$BIN is not a static executable ($described); a FROM scratch image needs one"
log "static binary: $BIN ($(du -h "$BIN" | cut -f1))"

CONTEXT=$(mktemp -d "${TMPDIR:-/tmp}/ferry-example-image.XXXXXX")
trap 'rm -rf "$CONTEXT"' EXIT
cp "$BIN" "$CONTEXT/ferry-example"
{
    echo "FROM scratch"
    echo "COPY ferry-example /ferry-example"
    echo "EXPOSE 8080"
    echo "LABEL org.opencontainers.image.title=ferry-example org.opencontainers.image.version=\"$TAG\""
    echo "ENV APP_VERSION=\"$TAG\""
    if [[ "${FAIL_HEALTH:-}" == 1 ]]; then
        echo "ENV FAIL_HEALTH=1"
    fi
    if [[ "${HEALTHCHECK_CMD:-}" == 1 ]]; then
        echo 'HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 CMD ["/ferry-example", "healthcheck"]'
    fi
    echo 'ENTRYPOINT ["/ferry-example"]'
} >"$CONTEXT/Dockerfile"

log "building $IMAGE${FAIL_HEALTH:+ (FAIL_HEALTH=$FAIL_HEALTH)}${HEALTHCHECK_CMD:+ (HEALTHCHECK_CMD=$HEALTHCHECK_CMD)}"
# BuildKit needs the buildx plugin; without it (Debian's docker.io) ask for
# the legacy builder explicitly, which then prints a deprecation notice to
# stderr. Either way FROM scratch pulls nothing.
if docker buildx version >/dev/null 2>&1; then
    docker build --quiet --tag "$IMAGE" "$CONTEXT" >&2
else
    DOCKER_BUILDKIT=0 docker build --quiet --tag "$IMAGE" "$CONTEXT" >&2
fi

docker image inspect --format '{{.Id}}' "$IMAGE"
