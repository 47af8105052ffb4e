#!/usr/bin/env bash
# Installs Ferry's binaries and systemd units on this host.
#
#   deploy/install.sh coordinator [BIN_DIR]   # ferry-coordinator + ferry
#   deploy/install.sh agent [BIN_DIR]         # ferry-agent
#
# BIN_DIR defaults to target/release (build with `cargo build --release`).
# Creates the service user, installs the unit, enables it; does not start
# anything that needs enrollment or init first.
#
# For blue-green deploys the agent also gets /etc/nginx/ferry-upstreams
# (owned by ferry-agent, where it writes upstream files) and the root-owned
# ferry-nginx-reload.path/.service that reload nginx on its request, with
# their helpers in /usr/local/lib/ferry; see README.md, "Blue-green: nginx
# on the host".
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
role="${1:-}"
bin_dir="${2:-$here/../target/release}"

[ "$(id -u)" = 0 ] || { echo "error: run as root (it creates users and installs units)" >&2; exit 1; }

install_bin() {
  [ -x "$bin_dir/$1" ] || { echo "error: $bin_dir/$1 not found; build with cargo build --release" >&2; exit 1; }
  install -m 0755 "$bin_dir/$1" "/usr/local/bin/$1"
}

ensure_user() {
  id -u "$1" >/dev/null 2>&1 || useradd --system --home-dir "/var/lib/$2" --shell /usr/sbin/nologin "$1"
}

mkdir -p /etc/ferry
case "$role" in
  coordinator)
    install_bin ferry-coordinator
    install_bin ferry
    ensure_user ferry ferry-coordinator
    install -d -o ferry -g ferry -m 0700 /var/lib/ferry-coordinator
    [ -f /etc/ferry/coordinator.env ] || install -m 0640 "$here/examples/coordinator.env" /etc/ferry/coordinator.env
    install -m 0644 "$here/systemd/ferry-coordinator.service" /etc/systemd/system/
    systemctl daemon-reload
    systemctl enable ferry-coordinator.service
    cat <<EOT
installed. Next:
  sudo -u ferry ferry-coordinator init --data-dir /var/lib/ferry-coordinator --san \$(hostname -f)
  systemctl start ferry-coordinator
  export FERRY_CREDENTIALS=/var/lib/ferry-coordinator/admin.credentials   # copy it somewhere private
EOT
    ;;
  agent)
    install_bin ferry-agent
    ensure_user ferry-agent ferry-agent
    getent group docker >/dev/null && usermod -aG docker ferry-agent
    install -d -o ferry-agent -g ferry-agent -m 0700 /var/lib/ferry-agent
    [ -f /etc/ferry/agent.env ] || install -m 0640 "$here/examples/agent.env" /etc/ferry/agent.env
    # nginx reloads for blue-green, on the agent's request (it may not reload
    # nginx itself: no privileges). Root-owned helpers; the agent runs only
    # ferry-nginx-reload-wait.
    install -d -m 0755 /usr/local/lib/ferry
    install -m 0755 "$here/systemd/ferry-nginx-reload" "$here/systemd/ferry-nginx-reload-wait" /usr/local/lib/ferry/
    install -m 0644 "$here/systemd/ferry-agent.service" "$here/systemd/ferry-nginx-reload.path" \
      "$here/systemd/ferry-nginx-reload.service" /etc/systemd/system/
    systemctl daemon-reload
    systemctl enable ferry-agent.service
    if [ -d /etc/nginx ]; then
      install -d -o ferry-agent -g ferry-agent -m 0755 /etc/nginx/ferry-upstreams
      systemctl enable --now ferry-nginx-reload.path
      nginx_note="nginx: the agent writes upstream files to /etc/nginx/ferry-upstreams; include them from your sites (README.md, \"Blue-green: nginx on the host\")."
    else
      systemctl enable ferry-nginx-reload.path
      nginx_note="nginx is not installed: blue-green deploys need it. Install it, then run this script again."
    fi
    cat <<EOT
installed. Next, with the command \`ferry token create\` printed:
  sudo -u ferry-agent ferry-agent enroll --coordinator https://... --token ... --ca-pin sha256:... --state-dir /var/lib/ferry-agent
  systemctl start ferry-agent
$nginx_note
EOT
    ;;
  *)
    echo "usage: deploy/install.sh coordinator|agent [BIN_DIR]" >&2
    exit 2
    ;;
esac
