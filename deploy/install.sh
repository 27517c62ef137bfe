#!/usr/bin/env bash
# Install ingest-agent as a systemd service on Debian/Ubuntu. Run as root from the project's
# root folder. Idempotent: re-running upgrades the package and keeps the config.
set -euo pipefail
prefix=/opt/ingest-agent
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }
apt-get install -y -qq python3-venv libsystemd-dev pkg-config gcc python3-dev >/dev/null
id ingest-agent >/dev/null 2>&1 || useradd --system --home-dir /var/lib/ingest-agent \
  --shell /usr/sbin/nologin ingest-agent
python3 -m venv "$prefix"
"$prefix/bin/pip" install -q --upgrade pip
"$prefix/bin/pip" install -q .
install -d -m 0755 /etc/ingest-agent
if [ ! -f /etc/ingest-agent/config.toml ]; then
  install -m 0644 config.example.toml /etc/ingest-agent/config.toml
  echo "wrote /etc/ingest-agent/config.toml: edit bucket and source paths, then:"
  echo "  $prefix/bin/agentctl check-config && systemctl enable --now ingest-agent"
fi
install -m 0644 deploy/ingest-agent.service /etc/systemd/system/ingest-agent.service
ln -sf "$prefix/bin/agentctl" /usr/local/bin/agentctl
systemctl daemon-reload 2>/dev/null || echo "systemd not running here; unit installed only"
echo "installed; the service user ingest-agent needs read access to every source path"
