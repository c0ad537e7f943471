#!/usr/bin/env bash
# Server programs the tests start themselves, all on 127.0.0.1: private PostgreSQL, Redis and
# RabbitMQ servers (tests/support/servers.py, services.py), real HTTP proxies (tinyproxy) and
# a real Prometheus and Alertmanager; nftables, iproute2 and fail2ban-regex for the security runbooks.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v tinyproxy >/dev/null || [[ -x /usr/bin/tinyproxy ]] || need+=(tinyproxy)
command -v prometheus >/dev/null || [[ -x /usr/bin/prometheus ]] || need+=(prometheus)
# the Alertmanager intake's tests: a real Alertmanager posting to `remediation serve`
command -v prometheus-alertmanager >/dev/null || [[ -x /usr/bin/prometheus-alertmanager ]] || need+=(prometheus-alertmanager)
compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || command -v pg_ctl >/dev/null || need+=(postgresql)
[[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || need+=(rabbitmq-server)
# bans in nftables sets, tested between network namespaces; fail2ban-regex is the benchmark's
# baseline for the access-log review
command -v nft >/dev/null || [[ -x /usr/sbin/nft ]] || need+=(nftables)
command -v ip >/dev/null || [[ -x /usr/sbin/ip || -x /sbin/ip ]] || need+=(iproute2)
command -v fail2ban-regex >/dev/null || [[ -x /usr/bin/fail2ban-regex ]] || need+=(fail2ban)
# the log-tail race (bench/watch_logs.py, tests/integration/test_watch_logs.py): fail2ban with
# its inotify backend, which Debian's python3 needs pyinotify for
/usr/bin/python3 -c "import pyinotify" 2>/dev/null || need+=(python3-pyinotify)
# quarantine_log's rotation is tested with a real logrotate
command -v logrotate >/dev/null || [[ -x /usr/sbin/logrotate ]] || need+=(logrotate)
# the web console's browser tests drive Debian's chromium through Playwright
[[ -x /usr/bin/chromium ]] || need+=(chromium)
if ((${#need[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
    # the Debian packages start system services we do not use; stop them quietly
    for svc in tinyproxy prometheus fail2ban-server; do
      pkill -x "$svc" 2>/dev/null || true
    done
  else
    echo "ensure_test_tools: run: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
fi
# Docker engine and the busybox test image for the container tests (they skip locally
# without it and fail under CI=true).
"$(dirname "$0")/ensure_docker.sh" "$(dirname "$0")/../.data" \
  || echo "ensure_test_tools: no Docker engine; container tests will be skipped (fail under CI=true)" >&2
