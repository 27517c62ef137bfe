#!/usr/bin/env bash
# Remove ingest-agent's service. Run as root:
#
#   deploy/uninstall.sh [--purge]
#
# Stops and disables the service, removes the unit, the venv in /opt/ingest-agent and the
# /usr/local/bin/agentctl link. Keeps /etc/ingest-agent (config, credentials, drop-ins in
# /etc/systemd/system/ingest-agent.service.d), /var/lib/ingest-agent (the state database:
# a re-install resumes from it) and the user ingest-agent, unless --purge is given: then
# those go too, without asking. Source data is never touched, with or without --purge.
set -euo pipefail

prefix=/opt/ingest-agent
unit=/etc/systemd/system/ingest-agent.service
user=ingest-agent
purge=false
case "${1:-}" in
  "") ;;
  --purge) purge=true ;;
  -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "unknown argument: $1 (only --purge)" >&2; exit 2 ;;
esac
[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }

systemd_running=false
[ -d /run/systemd/system ] && systemd_running=true
if $systemd_running; then
  systemctl disable --now ingest-agent.service 2>/dev/null || true
elif [ -L /etc/systemd/system/multi-user.target.wants/ingest-agent.service ]; then
  rm -f /etc/systemd/system/multi-user.target.wants/ingest-agent.service
fi
rm -f "$unit"
if [ "$(readlink /usr/local/bin/agentctl 2>/dev/null)" = "$prefix/bin/agentctl" ]; then
  rm -f /usr/local/bin/agentctl
fi
rm -rf "$prefix"

if $purge; then
  rm -rf /etc/systemd/system/ingest-agent.service.d /etc/ingest-agent /var/lib/ingest-agent
  if id "$user" >/dev/null 2>&1; then
    userdel "$user"
    getent group "$user" >/dev/null && groupdel "$user"
  fi
  echo "removed ingest-agent with its config, state and user"
else
  echo "removed ingest-agent; kept /etc/ingest-agent, /var/lib/ingest-agent and the user $user" \
    "(deploy/uninstall.sh --purge removes them)"
fi
if $systemd_running; then
  systemctl daemon-reload
  systemctl reset-failed ingest-agent.service 2>/dev/null || true
fi
