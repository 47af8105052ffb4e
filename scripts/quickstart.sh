#!/usr/bin/env bash
# Brings up a local Ferry: a coordinator and one enrolled agent on this
# machine, both in the background, state under .ferry/ in this checkout.
# Run it again at any time: it reuses what is already there.
#
#   scripts/quickstart.sh          start (or check) everything
#   scripts/quickstart.sh stop     stop the coordinator and the agent
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
state="$root/.ferry"
bin="$root/target/debug"
coord_dir="$state/coordinator"
agent_dir="$state/agent"
export FERRY_CREDENTIALS="$coord_dir/admin.credentials"

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

if ! running "$state/agent.pid"; then
  say "starting the agent (log: .ferry/agent.log)"
  nohup "$bin/ferry-agent" run --state-dir "$agent_dir" >"$state/agent.log" 2>&1 &
  echo $! >"$state/agent.pid"
fi

for _ in $(seq 1 100); do
  "$bin/ferry" agents --output json 2>/dev/null | grep -q '"state": "online"' && break
  running "$state/agent.pid" || { echo "error: the agent exited; see .ferry/agent.log:" >&2; tail -5 "$state/agent.log" >&2; exit 1; }
  sleep 0.1
done

"$bin/ferry" status
echo
"$bin/ferry" agents
cat <<EOT

Ferry is running. To use the CLI from this shell:
  export FERRY_CREDENTIALS=$FERRY_CREDENTIALS
  export PATH=$bin:\$PATH
  ferry agents
Admin HTTP: http://127.0.0.1:7444/metrics   Stop: scripts/quickstart.sh stop
EOT
