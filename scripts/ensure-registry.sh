#!/usr/bin/env bash
# Makes a Docker registry with basic auth available for Ferry's tests on
# 127.0.0.1:5000, so that pulling with credentials is exercised for real:
# the Debian package `docker-registry` (distribution v2), installed if
# missing, run as a background process (there is no systemd in CI), with its
# config, htpasswd file, data and log under /tmp/ferry-registry. Prints as
# its last stdout line:
#
#   export FERRY_TEST_REGISTRY=127.0.0.1:5000 FERRY_TEST_REGISTRY_USER=ferry FERRY_TEST_REGISTRY_PASSWORD=ferry-test-password
#
# so that `eval "$(scripts/ensure-registry.sh)"` sets up a shell; everything
# else goes to stderr. Idempotent and quick when the registry already runs:
# it then only checks that the credentials work. Docker allows plain HTTP to
# 127.0.0.0/8 registries by default, so no daemon configuration is needed.
# Needs root the first time (apt-get).
#
# Use it:   docker login 127.0.0.1:5000 -u ferry --password-stdin <<<ferry-test-password
#           docker tag ferry-example:v1 127.0.0.1:5000/ferry-example:v1
#           docker push 127.0.0.1:5000/ferry-example:v1
# Stop it:  kill "$(cat /tmp/ferry-registry/registry.pid)"
set -euo pipefail

ADDR=127.0.0.1:5000
USER_NAME=ferry
PASSWORD=ferry-test-password
DIR=/tmp/ferry-registry
CONFIG=$DIR/config.yml
HTPASSWD=$DIR/htpasswd
PIDFILE=$DIR/registry.pid
LOG=$DIR/registry.log
EXPORT_LINE="export FERRY_TEST_REGISTRY=${ADDR} FERRY_TEST_REGISTRY_USER=${USER_NAME} FERRY_TEST_REGISTRY_PASSWORD=${PASSWORD}"

log() { printf 'ensure-registry: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# The HTTP status of GET /v2/ (000 when nothing answers).
v2_status() {
    curl -s -o /dev/null -m 3 -w '%{http_code}' "$@" "http://${ADDR}/v2/" || true
}

# Whether process $1 lives. A zombie is dead: the reaper of an orphaned
# daemon may be slow, and `kill -0` alone would count it.
alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ "$state" != Z ]]
}

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "$@" >&2; then
        log "install failed; refreshing the package lists and retrying"
        apt-get update >&2
        apt-get install -y --no-install-recommends "$@" >&2
    fi
}

# Logs in with the docker CLI (so the engine itself checks the credentials)
# and out again, in a throwaway config dir so the caller's logins are
# neither used nor changed.
check_docker_login() {
    command -v docker >/dev/null || { log "docker not installed; skipping the docker login check"; return 0; }
    local cfg
    cfg=$(mktemp -d)
    if ! docker --config "$cfg" login "$ADDR" -u "$USER_NAME" --password-stdin <<<"$PASSWORD" >/dev/null 2>"$cfg/err"; then
        cat "$cfg/err" >&2
        rm -rf "$cfg"
        die "docker login ${ADDR} failed"
    fi
    docker --config "$cfg" logout "$ADDR" >/dev/null 2>&1 || true
    rm -rf "$cfg"
    log "docker login ${ADDR} as ${USER_NAME} works"
}

command -v curl >/dev/null || apt_install curl ca-certificates

# When something answers on the port: it must be a registry that wants our
# credentials; then there is nothing to do but check docker can log in.
accept_running_and_exit() {
    local status=$1
    [[ "$status" == 401 ]] ||
        die "${ADDR} answers GET /v2/ with ${status}, not 401: not this script's registry; stop it first"
    [[ "$(v2_status -u "${USER_NAME}:${PASSWORD}")" == 200 ]] ||
        die "a registry on ${ADDR} refuses ${USER_NAME}'s credentials: not this script's registry; stop it first"
    log "a registry with basic auth already runs on ${ADDR}"
    check_docker_login
    echo "$EXPORT_LINE"
    exit 0
}

status=$(v2_status)
[[ "$status" == 000 ]] || accept_running_and_exit "$status"

if ! command -v docker-registry >/dev/null; then
    log "installing docker-registry"
    apt_install docker-registry
    # Where an init system runs, the package starts its own registry (no
    # auth, all interfaces, port 5000): stop it so ours can have the port.
    if [[ "$(v2_status)" != 000 ]]; then
        log "stopping the registry service the package started"
        service docker-registry stop >&2 || invoke-rc.d docker-registry stop >&2 || true
    fi
fi

mkdir -p "$DIR/data"
# One run at a time sets up (concurrent test processes may call this); fd 9
# is closed for the server started below, or it would hold the lock forever.
exec 9>"$DIR/.lock"
flock 9

if [[ ! -s "$HTPASSWD" ]]; then
    # The registry accepts bcrypt entries only.
    if ! command -v htpasswd >/dev/null; then
        log "installing apache2-utils (htpasswd)"
        apt_install apache2-utils ||
            log "could not install apache2-utils; trying python3's crypt instead"
    fi
    if command -v htpasswd >/dev/null; then
        htpasswd -Bbn "$USER_NAME" "$PASSWORD" >"$HTPASSWD.tmp"
    elif python3 -c 'import crypt' 2>/dev/null; then
        python3 -c 'import crypt, sys; print(sys.argv[1] + ":" + crypt.crypt(sys.argv[2], crypt.mksalt(crypt.METHOD_BLOWFISH)))' \
            "$USER_NAME" "$PASSWORD" >"$HTPASSWD.tmp"
    else
        die "no way to make a bcrypt hash: install apache2-utils"
    fi
    mv "$HTPASSWD.tmp" "$HTPASSWD"
fi

cat >"$CONFIG.tmp" <<EOF
# Written by scripts/ensure-registry.sh: a throwaway registry for tests.
version: 0.1
log:
  level: info
  fields:
    service: ferry-test-registry
storage:
  filesystem:
    rootdirectory: ${DIR}/data
  delete:
    enabled: true
http:
  addr: ${ADDR}
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  htpasswd:
    realm: ferry-test-registry
    path: ${HTPASSWD}
EOF
mv "$CONFIG.tmp" "$CONFIG"

if [[ -s "$PIDFILE" ]] && alive "$(cat "$PIDFILE")"; then
    # Starting (a concurrent run of this script) or stopping: wait for either.
    log "registry process $(cat "$PIDFILE") runs but does not answer yet; waiting"
    for _ in $(seq 1 100); do
        status=$(v2_status)
        [[ "$status" == 000 ]] || accept_running_and_exit "$status"
        alive "$(cat "$PIDFILE")" || break
        sleep 0.1
    done
    if alive "$(cat "$PIDFILE")"; then
        die "registry process $(cat "$PIDFILE") runs but does not answer on ${ADDR}; see ${LOG}, or kill it and rerun"
    fi
fi

log "starting docker-registry on ${ADDR} (log: ${LOG})"
# setsid: its own session, so the caller's process group (a test harness, a
# CI step) ending does not take it down; no inherited stdio, so a caller
# capturing this script's output is not kept waiting for EOF.
setsid docker-registry serve "$CONFIG" </dev/null >>"$LOG" 2>&1 9>&- &
echo $! >"$PIDFILE"

for _ in $(seq 1 100); do
    [[ "$(v2_status)" == 401 ]] && break
    alive "$(cat "$PIDFILE")" || { tail -n 20 "$LOG" >&2; die "docker-registry exited; its log is above"; }
    sleep 0.1
done
[[ "$(v2_status)" == 401 ]] || { tail -n 20 "$LOG" >&2; die "docker-registry did not answer on ${ADDR} within 10s"; }
[[ "$(v2_status -u "${USER_NAME}:${PASSWORD}")" == 200 ]] || die "the new registry refuses ${USER_NAME}'s credentials"

check_docker_login
echo "$EXPORT_LINE"
