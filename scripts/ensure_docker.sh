#!/usr/bin/env bash
# A Docker engine for the container tests, and their image. Idempotent:
#   - `docker info` answers: use that engine;
#   - else, as root: install docker.io (and busybox-static) when missing, start dockerd in
#     the background (log and pidfile under $1, default /tmp), wait until it answers (60 s);
#     if it cannot start with its defaults (no iptables/bridge in a sandbox), retry with
#     --iptables=false --bridge=none (tests then run containers with network_mode none);
#   - build remediation-test/busybox:latest when absent: a root filesystem holding the
#     static busybox and its applet links, fed to `docker import` (images cannot be pulled).
# Usage: scripts/ensure_docker.sh [LOG_DIR]
set -euo pipefail

LOG_DIR=${1:-/tmp}
IMAGE=remediation-test/busybox:latest
WAIT_SECONDS=${REMEDIATION_TEST_DOCKER_WAIT:-60}
PIDFILE="$LOG_DIR/remediation-dockerd.pid"
LOG="$LOG_DIR/remediation-dockerd.log"

die() { echo "ensure_docker: $*" >&2; exit 1; }
answers() { timeout 10 docker info >/dev/null 2>&1; }

wait_for_engine() {
  local pid=$1 deadline=$((SECONDS + WAIT_SECONDS))
  until answers; do
    kill -0 "$pid" 2>/dev/null || return 1
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

stop_ours() {
  local pid=$1
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  rm -f "$PIDFILE"
}

install_missing() {
  local need=()
  command -v dockerd >/dev/null || need+=(docker.io)
  have_static_busybox || need+=(busybox-static)
  ((${#need[@]})) || return 0
  if [[ $(id -u) -ne 0 ]]; then
    die "no Docker engine answers; run: sudo apt-get install ${need[*]} && sudo dockerd &"
  fi
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null \
    || die "apt-get install ${need[*]} failed"
}

have_static_busybox() {
  # the image has no libc: only busybox-static's /bin/busybox runs in it (plain busybox is dynamic)
  [[ -x /bin/busybox ]] &&
    dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed"
}

start_engine() {
  if [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    wait_for_engine "$(cat "$PIDFILE")" && return 0
    die "dockerd (pid $(cat "$PIDFILE")) runs but does not answer; see $LOG"
  fi
  [[ $(id -u) -eq 0 ]] || die "no Docker engine answers and starting dockerd needs root"
  mkdir -p "$LOG_DIR"
  local attempt
  for attempt in "" "--iptables=false --bridge=none"; do
    # shellcheck disable=SC2086 # the flags are meant to split
    nohup dockerd $attempt >>"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    if wait_for_engine "$!"; then
      echo "ensure_docker: dockerd ${attempt:-(defaults)} started, pid $(cat "$PIDFILE"), log $LOG"
      return 0
    fi
    echo "ensure_docker: dockerd ${attempt:-(defaults)} did not come up; see $LOG" >&2
    stop_ours "$(cat "$PIDFILE")"
  done
  tail -n 20 "$LOG" >&2 || true
  die "dockerd would not start (tried defaults and --iptables=false --bridge=none)"
}

build_image() {
  docker image inspect "$IMAGE" >/dev/null 2>&1 && return 0
  local root
  root=$(mktemp -d)
  trap 'rm -rf "$root"' RETURN
  mkdir -p "$root/bin" "$root/tmp" "$root/proc" "$root/sys" "$root/dev" "$root/etc"
  cp /bin/busybox "$root/bin/busybox"
  for applet in sh sleep true false echo cat ls ps kill env top yes dd head; do
    ln -s busybox "$root/bin/$applet"
  done
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/bin' --change 'CMD ["sh"]' - "$IMAGE" >/dev/null \
    || die "docker import of $IMAGE failed"
  echo "ensure_docker: built $IMAGE"
}

if ! answers; then
  install_missing
  start_engine
else
  # the engine is there; the image still needs a static busybox
  have_static_busybox || install_missing
fi
build_image
