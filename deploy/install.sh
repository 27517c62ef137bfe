#!/usr/bin/env bash
# Install (or upgrade) ingest-agent as a systemd service on Debian/Ubuntu. Run as root:
#
#   deploy/install.sh [--source DIR] [--wheelhouse DIR]
#
#   --source DIR      the project's root (default: the folder above this script)
#   --wheelhouse DIR  install offline from wheels made with `pip wheel SOURCE -w DIR`
#                     (it must hold the ingest_agent wheel itself); no PyPI access then
#
# What it does, each step only if needed, so re-running it is safe and upgrades the code:
# the apt packages python3, python3-venv, python3-systemd (only the missing ones; nothing
# is fetched when all are there); a venv in /opt/ingest-agent that sees the system
# site-packages, so the dependency systemd-python is satisfied by Debian's python3-systemd
# and never compiled; the system user ingest-agent; /etc/ingest-agent/config.toml (from
# config.example.toml, only if missing); /etc/ingest-agent/environment for credentials
# (root, mode 0600); the unit in /etc/systemd/system; /usr/local/bin/agentctl. A running
# service is restarted onto the new code. It never enables or starts the service on its
# own, and never touches source data.
set -euo pipefail

prefix=/opt/ingest-agent
etc=/etc/ingest-agent
unit=/etc/systemd/system/ingest-agent.service
user=ingest-agent
source_dir="$(cd "$(dirname "$0")/.." && pwd)"
wheelhouse=""

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --source) source_dir="$(cd "${2:?--source needs a folder}" && pwd)"; shift 2 ;;
    --wheelhouse) wheelhouse="$(cd "${2:?--wheelhouse needs a folder}" && pwd)"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }
for f in pyproject.toml config.example.toml deploy/ingest-agent.service; do
  [ -f "$source_dir/$f" ] || { echo "$source_dir is not the ingest-agent project ($f missing)" >&2; exit 1; }
done
if [ -n "$wheelhouse" ] && ! compgen -G "$wheelhouse/ingest_agent-*.whl" >/dev/null; then
  echo "no ingest_agent wheel in $wheelhouse; make one with: pip wheel $source_dir -w $wheelhouse" >&2
  exit 1
fi

# --- system packages: install only what is missing, so a prepared machine needs no network
missing=()
for p in python3 python3-venv python3-systemd; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "ingest-agent needs Python >= 3.11; this system has $(python3 -V)" >&2; exit 1; }

# --- the service user (no home of its own, no shell; its only writable place is the state dir)
if ! id "$user" >/dev/null 2>&1; then
  useradd --system --user-group --home-dir /var/lib/ingest-agent --no-create-home \
    --shell /usr/sbin/nologin --comment "ingest-agent daemon" "$user"
fi

# --- the venv. --system-site-packages makes pip see Debian's python3-systemd (distribution
# systemd-python 235) as installed, so pyproject's "systemd-python>=235" needs no compiler.
if ! grep -qs '^include-system-site-packages = true' "$prefix/pyvenv.cfg"; then
  rm -rf "$prefix"
  python3 -m venv --system-site-packages "$prefix"
fi
pip=("$prefix/bin/pip" --disable-pip-version-check --no-input -q)
if [ -n "$wheelhouse" ]; then
  from=(--no-index --find-links "$wheelhouse")
  project=ingest-agent
else
  from=()
  build="$(mktemp -d)"
  trap 'rm -rf "$build"' EXIT
  "${pip[@]}" wheel --no-deps -w "$build" "$source_dir"
  project="$(ls "$build"/ingest_agent-*.whl)"
fi
# Dependencies as pyproject names them (those already satisfied are kept), then the
# agent itself again, so a rebuilt wheel of the same version replaces the installed code.
"${pip[@]}" install "${from[@]}" --upgrade "$project"
"${pip[@]}" install "${from[@]}" --force-reinstall --no-deps "$project"
"$prefix/bin/python" - <<'EOF'
import importlib.metadata as metadata
import systemd.journal  # noqa: F401  (fails here rather than in the service)
import agent.cli  # noqa: F401
where = metadata.distribution("systemd-python").locate_file("")
print(f"systemd-python {metadata.version('systemd-python')} from {where}")
EOF
install -d -m 0755 "$prefix/share"
install -m 0644 "$source_dir/README.md" "$prefix/share/README.md"
ln -sfn "$prefix/bin/agentctl" /usr/local/bin/agentctl

# --- configuration and credentials (kept when present)
install -d -m 0755 "$etc"
if [ ! -f "$etc/config.toml" ]; then
  install -m 0644 "$source_dir/config.example.toml" "$etc/config.toml"
  echo "wrote $etc/config.toml: set bucket and source paths, then:"
  echo "  agentctl check-config && systemctl enable --now ingest-agent"
fi
if [ ! -f "$etc/environment" ]; then
  (umask 077; cat >"$etc/environment" <<'EOF'
# Environment of the ingest-agent service (read by systemd as root; keep mode 0600).
# S3 credentials, unless the machine has an instance role or config.toml names a profile:
# AWS_ACCESS_KEY_ID=...
# AWS_SECRET_ACCESS_KEY=...
EOF
  )
fi
chown root:root "$etc/environment"
chmod 0600 "$etc/environment"

# --- the unit
install -m 0644 "$source_dir/deploy/ingest-agent.service" "$unit"
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  if systemctl -q is-active ingest-agent; then
    echo "restarting the running service onto the new code"
    systemctl restart ingest-agent
  fi
else
  echo "systemd is not running here: unit installed, not loaded"
fi
version="$("$prefix/bin/python" -c 'import importlib.metadata as m; print(m.version("ingest-agent"))')"
echo "installed ingest-agent $version into $prefix; the user $user needs read access to every source path"
