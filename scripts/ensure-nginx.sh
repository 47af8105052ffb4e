#!/usr/bin/env bash
# Makes an nginx available for Ferry's blue-green (zero-downtime switch)
# tests: the Debian package `nginx`, installed if missing, run as a
# background process (not via systemd; there is none in CI) with a private
# prefix, config, pid file and logs under /tmp/ferry-nginx, so it never
# collides with a system nginx. Prints as its last stdout line:
#
#   export FERRY_TEST_NGINX_PREFIX=/tmp/ferry-nginx FERRY_TEST_NGINX_PORT=18080
#
# so that `eval "$(scripts/ensure-nginx.sh)"` sets up a shell; everything
# else goes to stderr. Idempotent and quick when nginx already runs: the
# main config is rewritten (and nginx reloaded) only when this script's
# version of it changed. Needs root the first time (apt-get).
#
# Layout (PREFIX=/tmp/ferry-nginx):
#
#   nginx.conf        written by this script; listens on 127.0.0.1:18080,
#                     answers GET /__ferry/health with 200 "ok", 404 otherwise,
#                     and includes every sites/*.conf
#   sites/NAME.conf   one per (app, env, service), written by a test (or by
#                     Ferry's agent): an upstream whose body is an include,
#                     and a server block on its own port, or on 18080 with a
#                     server_name to route by Host header
#   upstreams/NAME.conf
#                     the upstream's body, the one file a deploy rewrites to
#                     switch traffic; Ferry writes exactly one line:
#
#                         server 127.0.0.1:PORT;
#
# A site file, e.g. sites/shop-production-web.conf:
#
#   upstream ferry_shop_production_web {
#       include /tmp/ferry-nginx/upstreams/shop-production-web.conf;
#   }
#   server {
#       listen 127.0.0.1:18081;                # its own port, or:
#       # listen 127.0.0.1:18080; server_name web.shop.production.test;
#       location / {
#           proxy_pass http://ferry_shop_production_web;
#       }
#   }
#
# Switch blue to green: write the upstream file anew (to a temp file, then
# mv, so nginx never reads half a file), test, and reload gracefully (old
# workers finish their requests; new ones use the new upstream):
#
#   echo 'server 127.0.0.1:PORT_GREEN;' >upstreams/NAME.conf.tmp
#   mv upstreams/NAME.conf.tmp upstreams/NAME.conf
#   nginx -p /tmp/ferry-nginx -c /tmp/ferry-nginx/nginx.conf -e /tmp/ferry-nginx/logs/error.log -t
#   nginx -p /tmp/ferry-nginx -c /tmp/ferry-nginx/nginx.conf -e /tmp/ferry-nginx/logs/error.log -s reload
#
# (-e keeps nginx from touching the system's /var/log/nginx/error.log
# before it has read the config; it may be left out when running as root.)
# Stop it: nginx -p /tmp/ferry-nginx -c /tmp/ferry-nginx/nginx.conf -s quit
set -euo pipefail

PREFIX=/tmp/ferry-nginx
PORT=18080
CONF=$PREFIX/nginx.conf
PIDFILE=$PREFIX/nginx.pid
ERROR_LOG=$PREFIX/logs/error.log
EXPORT_LINE="export FERRY_TEST_NGINX_PREFIX=${PREFIX} FERRY_TEST_NGINX_PORT=${PORT}"

log() { printf 'ensure-nginx: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# nginx with this prefix and config; its output goes to stderr.
ngx() { nginx -p "$PREFIX" -c "$CONF" -e "$ERROR_LOG" "$@" >&2; }

# Whether process $1 lives. A zombie is dead: the reaper of an orphaned
# daemon may be slow, and `kill -0` alone would count it.
alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ "$state" != Z ]]
}

running() { [[ -s "$PIDFILE" ]] && alive "$(cat "$PIDFILE")"; }

# "ok" when our nginx answers on the port.
probe() { curl -s -m 3 "http://127.0.0.1:${PORT}/__ferry/health" || true; }

if ! command -v nginx >/dev/null; then
    log "installing nginx"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends nginx curl >&2; then
        log "install failed; refreshing the package lists and retrying"
        apt-get update >&2
        apt-get install -y --no-install-recommends nginx curl >&2
    fi
fi
command -v curl >/dev/null || die "curl is needed (apt-get install -y curl)"

mkdir -p "$PREFIX"/{sites,upstreams,logs,tmp}
# One run at a time sets up (concurrent test processes may call this); fd 9
# is closed for the server started below, or it would hold the lock forever.
exec 9>"$PREFIX/.lock"
flock 9

# Temp paths under the prefix: the compiled-in defaults are shared with a
# system nginx (/var/lib/nginx).
cat >"$CONF.new" <<EOF
# Written by scripts/ensure-nginx.sh; rewritten when that script changes.
# Tests and Ferry add sites/*.conf and upstreams/*.conf, never edit this file.
worker_processes 1;
pid ${PIDFILE};
error_log ${ERROR_LOG} warn;

events {
    worker_connections 1024;
}

http {
    access_log ${PREFIX}/logs/access.log;
    client_body_temp_path ${PREFIX}/tmp/client_body;
    proxy_temp_path       ${PREFIX}/tmp/proxy;
    fastcgi_temp_path     ${PREFIX}/tmp/fastcgi;
    uwsgi_temp_path       ${PREFIX}/tmp/uwsgi;
    scgi_temp_path        ${PREFIX}/tmp/scgi;

    # A short wait for a backend that is gone, so a test sees a 502 at once.
    proxy_connect_timeout 2s;
    # Say which backend answered, for tests and for curious operators.
    add_header X-Ferry-Upstream \$upstream_addr always;

    server {
        listen 127.0.0.1:${PORT} default_server;
        server_name _;
        location = /__ferry/health {
            default_type text/plain;
            return 200 "ok";
        }
        location / {
            default_type text/plain;
            return 404 "no ferry site for host \$host\n";
        }
    }

    include ${PREFIX}/sites/*.conf;
}
EOF

changed=yes
if [[ -f "$CONF" ]] && cmp -s "$CONF" "$CONF.new"; then
    changed=no
    rm -f "$CONF.new"
else
    mv "$CONF.new" "$CONF"
fi

if running; then
    if [[ "$changed" == yes ]]; then
        log "nginx.conf changed; testing and reloading"
        ngx -t || die "the new nginx.conf (or a site in ${PREFIX}/sites) does not pass nginx -t"
        ngx -s reload
        sleep 0.3
    fi
    [[ "$(probe)" == ok ]] ||
        die "nginx (pid $(cat "$PIDFILE")) runs but does not answer on 127.0.0.1:${PORT}; see ${ERROR_LOG}"
    log "nginx already runs on 127.0.0.1:${PORT} (pid $(cat "$PIDFILE"))"
    echo "$EXPORT_LINE"
    exit 0
fi

if (exec 3<>"/dev/tcp/127.0.0.1/${PORT}") 2>/dev/null; then
    die "something else listens on 127.0.0.1:${PORT}; stop it first"
fi

# Sites left by an earlier run are kept (a test may have set them up on
# purpose), but a broken one must be named rather than fail obscurely.
ngx -t 2>"$PREFIX/logs/config-test.log" || {
    cat "$PREFIX/logs/config-test.log" >&2
    die "nginx -t fails (above); a stale file in ${PREFIX}/sites or ${PREFIX}/upstreams? remove it and rerun"
}

log "starting nginx on 127.0.0.1:${PORT} (prefix ${PREFIX})"
# nginx daemonizes itself (the master detaches and writes the pid file);
# setsid and closed stdio keep it from a caller's process group and pipes.
# shellcheck disable=SC2094 # nginx appends to its error log too; nothing reads it here
setsid nginx -p "$PREFIX" -c "$CONF" -e "$ERROR_LOG" </dev/null >/dev/null 2>>"$ERROR_LOG" 9>&-

for _ in $(seq 1 50); do
    [[ "$(probe)" == ok ]] && break
    sleep 0.1
done
[[ "$(probe)" == ok ]] || { tail -n 20 "$ERROR_LOG" >&2; die "nginx did not answer on 127.0.0.1:${PORT} within 5s"; }
log "nginx runs (pid $(cat "$PIDFILE"))"
echo "$EXPORT_LINE"
