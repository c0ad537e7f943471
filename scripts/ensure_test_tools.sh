#!/usr/bin/env bash
# Tools the tests start themselves: a private redis-server per test session.
set -euo pipefail
if ! command -v redis-server >/dev/null; then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -q && apt-get install -y -q redis-server
  else
    echo "ensure_test_tools: run: sudo apt-get install redis-server" >&2
    exit 1
  fi
fi
