#!/usr/bin/env bash
# Make sure PYTHON is >= 3.11 and can create virtualenvs (Debian splits venv out).
set -euo pipefail
PYTHON=${1:-python3}
if ! command -v "$PYTHON" >/dev/null; then
  echo "ensure_python: $PYTHON not found; install Python >= 3.11 (apt-get install python3)" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "ensure_python: $("$PYTHON" --version) is too old; Python >= 3.11 is required" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -q && apt-get install -y -q python3-venv
  else
    echo "ensure_python: run: sudo apt-get install python3-venv" >&2
    exit 1
  fi
fi
