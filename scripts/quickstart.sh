#!/usr/bin/env bash
# Brings up a local Ferry and deploys the example app with it: a
# coordinator and one enrolled agent on this machine (in the background,
# state under .ferry/ in this checkout), the example app's image built
# locally, a private nginx in front of it, and a blue-green, health-checked
# rollout of the app to the `staging` environment, shown live. Prints where
# the app answers. Run it again at any time: it reuses what is there (and
# `VERSION=1.0.1 scripts/quickstart.sh` deploys another version).
#
#   scripts/quickstart.sh          start (or check) everything, deploy
#   scripts/quickstart.sh stop     stop the coordinator and the agent
#
# Needs: a Rust toolchain, a running Docker engine, and root (or
# passwordless apt-get) the first time, to install nginx.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
state="$root/.ferry"
bin="$root/target/debug"
coord_dir="$state/coordinator"
agent_dir="$state/agent"
export FERRY_CREDENTIALS="$coord_dir/admin.credentials"
VERSION=${VERSION:-1.0.0}
# Where the example app's nginx site listens (deploy/example/ferry.toml's
# smoke check goes there).
APP_PORT=18081

say() { printf '==> %s\n' "$*" >&2; }

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_one() {
  if running "$1"; then kill "$(cat "$1")" && say "stopped $(basename "$1" .pid)"; fi
  rm -f "$1"
}

if [ "${1:-}" = "stop" ]; then
  stop_one "$state/agent.pid"
  stop_one "$state/coordinator.pid"
  exit 0
fi

command -v cargo >/dev/null || { echo "error: cargo is required (https://rustup.rs)" >&2; exit 1; }
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
  { echo "error: the Docker engine is not reachable (is dockerd running? may this user use it?)" >&2; exit 1; }
say "building ferry, ferry-coordinator and ferry-agent (first build takes a few minutes)"
cargo build --workspace --bins --quiet
mkdir -p "$state"

if [ ! -f "$coord_dir/coordinator.toml" ]; then
  say "initialising a coordinator in $coord_dir"
  "$bin/ferry-coordinator" init --data-dir "$coord_dir" --trust-domain ferry.local >/dev/null
fi

if ! running "$state/coordinator.pid"; then
  say "starting the coordinator (log: .ferry/coordinator.log)"
  nohup "$bin/ferry-coordinator" serve --data-dir "$coord_dir" >"$state/coordinator.log" 2>&1 &
  echo $! >"$state/coordinator.pid"
fi

for _ in $(seq 1 100); do
  "$bin/ferry" status >/dev/null 2>&1 && break
  running "$state/coordinator.pid" || { echo "error: the coordinator exited; see .ferry/coordinator.log:" >&2; tail -5 "$state/coordinator.log" >&2; exit 1; }
  sleep 0.1
done
"$bin/ferry" status >/dev/null

if [ ! -f "$agent_dir/agent.toml" ]; then
  say "enrolling a local agent (labels env=staging)"
  token_json="$("$bin/ferry" token create --name local --labels env=staging --ttl 10m --output json)"
  field() { printf '%s\n' "$token_json" | sed -n "s/^  \"$1\": \"\(.*\)\",\{0,1\}$/\1/p"; }
  "$bin/ferry-agent" enroll --coordinator "$(field coordinator)" --token "$(field token)" \
    --ca-pin "$(field ca_pin)" --state-dir "$agent_dir" >/dev/null
fi

say "starting a private nginx for blue-green switches (scripts/ensure-nginx.sh)"
eval "$(bash scripts/ensure-nginx.sh)"
nginx_prefix=$FERRY_TEST_NGINX_PREFIX
nginx_cmd="nginx -p $nginx_prefix -c $nginx_prefix/nginx.conf -e $nginx_prefix/logs/error.log"
site="$nginx_prefix/sites/ferry-example-staging-web.conf"
upstream="$nginx_prefix/upstreams/ferry-example-staging-web.conf"
if [ ! -f "$site" ]; then
  say "adding the example app's nginx site on 127.0.0.1:$APP_PORT"
  # Until the first deploy the upstream points at nothing (nginx answers 502).
  [ -f "$upstream" ] || echo "server 127.0.0.1:9;" >"$upstream"
  cat >"$site" <<SITE
# The example app's staging web service; Ferry's agent rewrites the upstream file.
upstream ferry_example_staging_web {
    include $upstream;
}
server {
    listen 127.0.0.1:$APP_PORT;
    location / {
        proxy_pass http://ferry_example_staging_web;
    }
}
SITE
  $nginx_cmd -s reload
fi

if ! running "$state/agent.pid"; then
  say "starting the agent (log: .ferry/agent.log)"
  FERRY_NGINX_UPSTREAM_DIR="$nginx_prefix/upstreams" FERRY_NGINX_RELOAD="$nginx_cmd -s reload" \
    nohup "$bin/ferry-agent" run --state-dir "$agent_dir" >"$state/agent.log" 2>&1 &
  echo $! >"$state/agent.pid"
fi

for _ in $(seq 1 100); do
  "$bin/ferry" agents --output json 2>/dev/null | grep -q '"state": "online"' && break
  running "$state/agent.pid" || { echo "error: the agent exited; see .ferry/agent.log:" >&2; tail -5 "$state/agent.log" >&2; exit 1; }
  sleep 0.1
done

say "building the example app's image ferry-example:$VERSION (deploy/example/build-image.sh)"
deploy/example/build-image.sh "$VERSION" >/dev/null

say "deploying the example app, version $VERSION, to staging"
"$bin/ferry" deploy -f deploy/example/ferry.toml --env staging --version "$VERSION"

echo
"$bin/ferry" agents
echo
"$bin/ferry" releases --app ferry-example --env staging --limit 5

# nginx answers with the new release once its reload has finished; old
# workers can still be draining for a moment after `ferry deploy` returns.
answer=""
for _ in $(seq 1 50); do
  answer=$(curl -s "http://127.0.0.1:$APP_PORT/version" || true)
  [ "$answer" = "$VERSION" ] && break
  sleep 0.1
done
cat <<EOT

The example app answers on http://127.0.0.1:$APP_PORT/ through nginx:
  curl http://127.0.0.1:$APP_PORT/version   ->  $answer

To use the CLI from this shell:
  export FERRY_CREDENTIALS=$FERRY_CREDENTIALS
  export PATH=$bin:\$PATH
  ferry releases --app ferry-example
  VERSION=1.0.1 scripts/quickstart.sh          # build and deploy another version
  ferry rollback --app ferry-example --env staging
Admin HTTP: http://127.0.0.1:7444/metrics   Stop: scripts/quickstart.sh stop
EOT
