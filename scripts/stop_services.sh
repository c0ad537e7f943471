#!/usr/bin/env bash
# Stop the private Redis, PostgreSQL and RabbitMQ that scripts/ensure_services.sh started for
# this project ($ROOT/.data/redis, $ROOT/.data/pg or /tmp/remediation-pg-<hash of ROOT>,
# the RabbitMQ node named in $ROOT/.data/rabbitmq.node).
# Data stays where it is; servers this script did not start are never touched.
# Does nothing (successfully) when none is running.
set -euo pipefail

log() { printf '%s\n' "$*" >&2; }

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(dirname "$SCRIPT_DIR")
DATA=$ROOT/.data
REDIS_PIDFILE=$DATA/redis/redis.pid
REDIS_PORTFILE=$DATA/redis/port
PG_TMP_BASE=/tmp/remediation-pg-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)
IS_ROOT=0
[[ $(id -u) -eq 0 ]] && IS_ROOT=1

# a zombie (exited, not yet reaped by init) counts as gone
pid_alive() {
    [[ $1 =~ ^[0-9]+$ ]] && kill -0 "$1" 2>/dev/null \
        && [[ $(sed -E 's/.*\) ([A-Za-z]).*/\1/' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

wait_gone() { # PID SECONDS
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        pid_alive "$1" || return 0
        sleep 0.1
    done
    ! pid_alive "$1"
}

stop_redis() {
    local pid port
    if [[ ! -f $REDIS_PIDFILE ]]; then
        rm -f "$REDIS_PORTFILE"
        log "redis: no private instance"
        return
    fi
    pid=$(head -n 1 "$REDIS_PIDFILE" 2>/dev/null || true)
    port=$(head -n 1 "$REDIS_PORTFILE" 2>/dev/null || true)
    if ! pid_alive "$pid" || ! grep -qs redis "/proc/$pid/cmdline"; then
        log "redis: private instance not running (removing stale pidfile)"
        rm -f "$REDIS_PIDFILE" "$REDIS_PORTFILE"
        return
    fi
    if [[ $port =~ ^[0-9]+$ ]] && command -v redis-cli >/dev/null 2>&1; then
        env -u REDISCLI_AUTH timeout 5 redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
    fi
    if ! wait_gone "$pid" 10; then
        kill "$pid" 2>/dev/null || true
        wait_gone "$pid" 5 || kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$REDIS_PIDFILE" "$REDIS_PORTFILE"
    log "redis: stopped private instance on port ${port:-?} (pid $pid)"
}

find_pg_ctl() { # MAJOR: a pg_ctl of that major version, if any
    local d candidates=("/usr/lib/postgresql/$1/bin")
    if command -v pg_config >/dev/null 2>&1; then
        d=$(pg_config --bindir 2>/dev/null || true)
        [[ -n $d ]] && candidates+=("$d")
    fi
    if d=$(command -v pg_ctl 2>/dev/null); then candidates+=("$(dirname "$(readlink -f "$d")")"); fi
    for d in "${candidates[@]}"; do
        if [[ -x $d/pg_ctl && $("$d/pg_ctl" --version 2>/dev/null | grep -oE '[0-9]+' | head -n 1) == "$1" ]]; then
            printf '%s' "$d/pg_ctl"
            return 0
        fi
    done
    return 1
}

stop_postgres() { # BASE
    local pgdata=$1/data pid port owner pg_ctl
    [[ -f $pgdata/postmaster.pid ]] || return 1
    pid=$(sed -n 1p "$pgdata/postmaster.pid" 2>/dev/null || true)
    port=$(sed -n 4p "$pgdata/postmaster.pid" 2>/dev/null || true)
    if ! pid_alive "$pid" || ! grep -qs postgres "/proc/$pid/cmdline"; then
        log "postgres: private cluster in $pgdata not running"
        return 0
    fi
    owner=$(stat -c %U "$pgdata")
    if pg_ctl=$(find_pg_ctl "$(head -n 1 "$pgdata/PG_VERSION" 2>/dev/null)"); then
        if [[ $IS_ROOT -eq 1 && $owner != root ]]; then
            if command -v runuser >/dev/null 2>&1; then
                (cd / && runuser -u "$owner" -- "$pg_ctl" -D "$pgdata" -m fast -w stop) >/dev/null 2>&1 || true
            else
                (cd / && su "$owner" -s /bin/sh -c "$(printf '%q ' "$pg_ctl" -D "$pgdata" -m fast -w stop)") \
                    >/dev/null 2>&1 || true
            fi
        else
            (cd / && "$pg_ctl" -D "$pgdata" -m fast -w stop) >/dev/null 2>&1 || true
        fi
    fi
    if pid_alive "$pid"; then
        kill -INT "$pid" 2>/dev/null || true # SIGINT is PostgreSQL's "fast" shutdown
        wait_gone "$pid" 30 || { log "postgres: pid $pid in $pgdata did not stop"; return 0; }
    fi
    log "postgres: stopped private cluster on port ${port:-?} (data $pgdata)"
}

RABBIT_BASEFILE=$DATA/rabbitmq.base
RABBIT_NODEFILE=$DATA/rabbitmq.node
RABBIT_PORTFILE=$DATA/rabbitmq.port

stop_rabbitmq() {
    local base node pid
    base=$(head -n 1 "$RABBIT_BASEFILE" 2>/dev/null || true)
    node=$(head -n 1 "$RABBIT_NODEFILE" 2>/dev/null || true)
    pid=$(head -n 1 "$base/rabbitmq.pid" 2>/dev/null || true)
    if [[ -z $base || -z $node ]]; then
        log "rabbitmq: no private node"
        return
    fi
    if ! pid_alive "$pid" || ! grep -qs beam "/proc/$pid/cmdline"; then
        log "rabbitmq: private node $node not running"
        rm -f "$RABBIT_PORTFILE"
        return
    fi
    # `rabbitmqctl shutdown` stops the node and waits for its process to exit; the Debian
    # wrapper runs it as the rabbitmq user, whose cookie the node has.
    if command -v rabbitmqctl >/dev/null 2>&1; then
        (cd / && timeout 60 rabbitmqctl -n "$node" shutdown) >/dev/null 2>&1 || true
    fi
    if ! wait_gone "$pid" 10; then
        kill "$pid" 2>/dev/null || true
        wait_gone "$pid" 20 || kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$RABBIT_PORTFILE"
    log "rabbitmq: stopped private node $node (pid $pid, data $base)"
}

stop_redis
stop_rabbitmq
found=0
for base in "$DATA/pg" "$PG_TMP_BASE"; do
    if stop_postgres "$base"; then found=1; fi
done
[[ $found -eq 1 ]] || log "postgres: no private cluster"
