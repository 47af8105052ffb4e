#!/usr/bin/env bash
# Makes a second Docker engine available for Ferry's multi-host tests: a
# rollout to two hosts needs two engines, or the second agent would find the
# first one's containers (one engine is one host to Ferry). This starts
# another dockerd on this machine, standing in for a second host, with its
# own socket, data, containerd and bridge, under /tmp/ferry-docker2. It
# shares nothing with the main engine but the kernel, and it runs no
# iptables rules (published ports go through docker-proxy on 127.0.0.1).
# Prints as its last stdout line:
#
#   export FERRY_TEST_DOCKER2_SOCKET=/tmp/ferry-docker2/docker.sock
#
# so that `eval "$(scripts/ensure-docker2.sh)"` sets up a shell; everything
# else goes to stderr. Idempotent and quick when it already runs. Needs root
# (a bridge interface, a daemon). Use it:
#
#   docker -H unix:///tmp/ferry-docker2/docker.sock ps
# Stop it: kill "$(cat /tmp/ferry-docker2/docker.pid)"
set -euo pipefail

DIR=/tmp/ferry-docker2
SOCK=$DIR/docker.sock
PIDFILE=$DIR/docker.pid
BRIDGE=ferry-br2
# A private range unlikely to collide with the main engine's networks.
BRIDGE_ADDR=172.31.250.1/24
EXPORT_LINE="export FERRY_TEST_DOCKER2_SOCKET=${SOCK}"

log() { printf 'ensure-docker2: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

answers() { docker -H "unix://${SOCK}" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if answers; then
    log "second engine already runs on ${SOCK}"
    echo "$EXPORT_LINE"
    exit 0
fi

command -v dockerd >/dev/null || die "dockerd not found: the main Docker engine's package provides it"
[[ $(id -u) == 0 ]] || die "needs root (a bridge interface and a daemon)"

mkdir -p "$DIR"
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$BRIDGE_ADDR" dev "$BRIDGE"
fi
ip link set "$BRIDGE" up

# The main engine's storage driver works on this filesystem; use the same.
DRIVER=$(docker info --format '{{.Driver}}' 2>/dev/null || true)
if [[ -n "$DRIVER" ]]; then
    printf '{"storage-driver": "%s"}\n' "$DRIVER" >"$DIR/daemon.json"
else
    echo '{}' >"$DIR/daemon.json"
fi

# A stale pid file from a killed daemon would stop a new one.
rm -f "$PIDFILE" "$SOCK"
log "starting a second dockerd on ${SOCK} (log: ${DIR}/dockerd.log)"
nohup dockerd \
    --config-file "$DIR/daemon.json" \
    --host "unix://${SOCK}" \
    --data-root "$DIR/data" \
    --exec-root "$DIR/exec" \
    --pidfile "$PIDFILE" \
    --bridge "$BRIDGE" \
    --iptables=false --ip6tables=false \
    >"$DIR/dockerd.log" 2>&1 </dev/null &

for _ in $(seq 1 60); do
    if answers; then
        log "second engine ready"
        echo "$EXPORT_LINE"
        exit 0
    fi
    sleep 0.5
done
tail -20 "$DIR/dockerd.log" >&2 || true
die "the second engine did not answer within 30 s"
