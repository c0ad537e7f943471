#!/usr/bin/env bash
# Make sure a Redis server and a PostgreSQL server answer, and write `export` lines
# describing them to OUTFILE:
#
#     scripts/ensure_services.sh .data/services.env && . .data/services.env
#
# Inputs (all optional; the environment wins over $ROOT/.env, which is only scanned for
# NAME=value lines of these names, never sourced):
#     REMEDIATION_STATE_REDIS_URL  default redis://127.0.0.1:6379/0
#     REMEDIATION_BROKER_URL       default: the state Redis, db 1
#     REMEDIATION_RESULT_BACKEND   default: the state Redis, db 2
#     REMEDIATION_AUDIT_DSN        default postgresql://postgres@127.0.0.1:5432/remediation
#
# A configured server is used when it answers (Redis: PING -> PONG; PostgreSQL: we can
# connect and the audit database exists or can be created). Otherwise a private instance is
# started (installing Debian packages first when run as root and they are missing):
#     Redis       $ROOT/.data/redis       (log .data/logs/redis.log), no persistence
#     PostgreSQL  $ROOT/.data/pg/data     (log .data/logs/postgres.log), trust auth,
#                 or /tmp/remediation-pg-<hash of ROOT> when the postgres system user cannot
#                 reach $ROOT/.data (root running from a project under /root, say)
# Both listen on 127.0.0.1 only, on a free port, and are reused by later runs.
#
# For the tests only (the integration tests run once per broker), with WITH_RABBITMQ=1 (as
# make test and make chaos call it), a RabbitMQ broker:
#     REMEDIATION_TEST_AMQP_URL    default amqp://guest:guest@127.0.0.1:5672//; "off": none
#     REMEDIATION_TEST_AMQP_NODE   the node rabbitmqctl manages (default: rabbitmqctl's own)
# used when an AMQP handshake with it succeeds (login and vhost included); otherwise, as
# root, a private node rem-<hash of ROOT>@localhost is started as the rabbitmq user
# (installing rabbitmq-server first when missing; data and logs in $ROOT/.data/rabbitmq, or
# /tmp/remediation-rabbitmq-<hash> when that user cannot reach $ROOT/.data). Both
# variables are then written to OUTFILE. Not root, or no broker to be had: they are left
# out, which makes the RabbitMQ tests skip (and fail under CI=true); never an error here.
#
# scripts/stop_services.sh stops every private instance. Passwords are never printed.
# shellcheck disable=SC2153  # STATE_*, AUDIT_* ... are set by an eval
set -euo pipefail
umask 022

log() { printf '%s\n' "$*" >&2; }
die() { log "ensure_services: $*"; exit 1; }
# user:password@ -> user:***@ in anything we print
mask() { sed -E 's#([A-Za-z][A-Za-z0-9+.-]*://[^:/@[:space:]]*:)[^@[:space:]/]+@#\1***@#g' <<<"$1"; }

[[ $# -eq 1 && -n $1 ]] || { log "usage: $0 OUTFILE   (e.g. .data/services.env)"; exit 2; }
OUTFILE=$1
case $OUTFILE in /*) ;; *) OUTFILE=$PWD/$OUTFILE ;; esac

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(dirname "$SCRIPT_DIR")
DATA=$ROOT/.data
LOG_DIR=$DATA/logs
REDIS_DIR=$DATA/redis
REDIS_PIDFILE=$REDIS_DIR/redis.pid
REDIS_PORTFILE=$REDIS_DIR/port
REDIS_LOG=$LOG_DIR/redis.log
PG_LOCAL_BASE=$DATA/pg
PG_TMP_BASE=/tmp/remediation-pg-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)

IS_ROOT=0
[[ $(id -u) -eq 0 ]] && IS_ROOT=1
APT_UPDATED=0

mkdir -p "$DATA"
chmod 755 "$DATA" 2>/dev/null || true # the postgres system user may need to pass through
[[ -w $DATA ]] || die "$DATA is not writable by $(id -un) (made by another user?)"
# Two runs at once must not both start a private instance.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$DATA/.ensure_services.lock"
    flock -w 300 9 || die "another ensure_services.sh run holds $DATA/.ensure_services.lock"
fi

# ---------------------------------------------------------------- packages

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these packages by hand: $*"
    if [[ $APT_UPDATED -eq 0 ]]; then
        log "apt: apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 9>&- || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt: apt-get install -y $*"
    # 9>&-: services that dpkg starts must not inherit (and so hold) our lock
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 9>&- \
        || die "apt-get install $* failed"
}

# need_packages WHY PKG...: install as root, otherwise say exactly what is missing and stop.
need_packages() {
    local why=$1
    shift
    if [[ $IS_ROOT -eq 1 ]]; then
        log "$why; installing Debian packages: $*"
        apt_install "$@"
    else
        log "ensure_services: $why."
        log "Install the Debian packages: sudo apt-get install -y $*"
        log "(or run this script as root, which installs them), then run it again."
        exit 1
    fi
}

PY=
for candidate in /usr/bin/python3 "$(command -v python3 2>/dev/null || true)"; do
    if [[ -n $candidate && -x $candidate ]]; then PY=$candidate; break; fi
done
if [[ -z $PY ]]; then
    need_packages "python3 is not installed" python3
    PY=/usr/bin/python3
fi

# ---------------------------------------------------------------- configuration

# dotenv NAME: the value of NAME=value in $ROOT/.env (last one wins); fails when absent.
dotenv() {
    local line val
    [[ -f $ROOT/.env ]] || return 1
    line=$(grep -E "^[[:space:]]*(export[[:space:]]+)?$1=" "$ROOT/.env" | tail -n 1) || return 1
    val=${line#*=}
    val=${val%$'\r'}
    val=${val#"${val%%[![:space:]]*}"}
    val=${val%"${val##*[![:space:]]}"}
    if [[ ${#val} -ge 2 && ($val == \"*\" || $val == \'*\') ]]; then
        val=${val:1:${#val}-2}
    fi
    printf '%s' "$val"
}

# setting NAME: environment first, then .env; empty when neither has it.
setting() {
    local v=${!1:-}
    if [[ -z $v ]]; then v=$(dotenv "$1") || v=; fi
    printf '%s' "$v"
}

CONF_STATE=$(setting REMEDIATION_STATE_REDIS_URL)
CONF_BROKER=$(setting REMEDIATION_BROKER_URL)
CONF_RESULT=$(setting REMEDIATION_RESULT_BACKEND)
CONF_AUDIT=$(setting REMEDIATION_AUDIT_DSN)
[[ -n $CONF_STATE ]] || CONF_STATE=redis://127.0.0.1:6379/0
[[ -n $CONF_AUDIT ]] || CONF_AUDIT=postgresql://postgres@127.0.0.1:5432/remediation

# One python3 call splits every URL into shell variables. Inputs travel in the environment,
# not argv, so passwords do not show up in ps.
parse_urls() {
    IN_STATE=$CONF_STATE IN_BROKER=$CONF_BROKER IN_RESULT=$CONF_RESULT IN_AUDIT=$CONF_AUDIT \
        "$PY" - <<'PYEOF'
import getpass
import os
import shlex
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

out = []


def emit(name, value):
    out.append("%s=%s" % (name, shlex.quote(str(value))))


def redis(prefix, url):
    kind = "none"
    f = dict(HOST="", PORT="", SOCK="", DB="0", USER="", PASS="", TLS="0", DB1="", DB2="")
    if url:
        try:
            u = urlsplit(url)
            scheme = u.scheme.lower()
            if scheme in ("redis", "rediss", "unix"):
                query = parse_qsl(u.query, keep_blank_values=True)
                rest = [(k, v) for k, v in query if k != "db"]
                qdb = dict(query).get("db", "")
                if u.username:
                    f["USER"] = unquote(u.username)
                if u.password is not None:
                    f["PASS"] = unquote(u.password)
                if scheme == "unix":
                    f["SOCK"] = unquote(u.path)
                    db = qdb or "0"

                    def with_db(n):
                        return "%s://%s%s?%s" % (u.scheme, u.netloc, u.path,
                                                 urlencode(rest + [("db", str(n))]))
                else:
                    f["HOST"] = u.hostname or "127.0.0.1"
                    f["PORT"] = str(u.port or 6379)
                    f["TLS"] = "1" if scheme == "rediss" else "0"
                    db = u.path.strip("/") or qdb or "0"

                    def with_db(n):
                        return urlunsplit((u.scheme, u.netloc, "/%d" % n, urlencode(rest), ""))
                f["DB"] = str(int(db))
                f["DB1"] = with_db(1)
                f["DB2"] = with_db(2)
                kind = "redis"
            else:
                kind = "other"  # amqp:// and friends: passed through, not checked
        except ValueError:
            kind = "invalid"
    emit(prefix + "_KIND", kind)
    for key, value in f.items():
        emit(prefix + "_" + key, value)


def postgres(prefix, dsn):
    u = urlsplit(dsn)
    if u.scheme.lower() not in ("postgresql", "postgres"):
        emit(prefix + "_KIND", "invalid")
        return
    userinfo, _, hostport = u.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    user = unquote(user)
    password = unquote(password) if colon else ""
    if hostport.startswith("["):
        host, _, port = hostport[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = hostport.partition(":")
    query = parse_qsl(u.query, keep_blank_values=True)
    params = dict(query)
    host = unquote(host) or params.get("host", "")
    port = port or params.get("port", "") or "5432"
    user = user or params.get("user", "")
    password = password or params.get("password", "")
    db = unquote(u.path[1:]) or params.get("dbname", "") or user or getpass.getuser()
    try:
        int(port)
    except ValueError:
        emit(prefix + "_KIND", "invalid")
        return
    # URIs for psql/pg_isready without the password (that goes in PGPASSWORD instead)
    netloc = (quote(user, safe="") + "@" if user else "") + hostport
    keep = urlencode([(k, v) for k, v in query if k != "password"])
    maint = urlencode([(k, v) for k, v in query if k not in ("password", "dbname")])
    emit(prefix + "_KIND", "postgres")
    emit(prefix + "_HOST", host)
    emit(prefix + "_PORT", port)
    emit(prefix + "_USER", user)
    emit(prefix + "_PASS", password)
    emit(prefix + "_DB", db)
    emit(prefix + "_DB_ENC", quote(db, safe=""))
    emit(prefix + "_URI", urlunsplit((u.scheme, netloc, u.path, keep, "")))
    emit(prefix + "_MAINT_URI", urlunsplit((u.scheme, netloc, "/postgres", maint, "")))


redis("STATE", os.environ["IN_STATE"])
redis("BROKER", os.environ["IN_BROKER"])
redis("RESULT", os.environ["IN_RESULT"])
postgres("AUDIT", os.environ["IN_AUDIT"])
print("\n".join(out))
PYEOF
}
PARSED=$(parse_urls) || die "could not parse the configured URLs"
eval "$PARSED" # sets STATE_*, BROKER_*, RESULT_*, AUDIT_*

[[ $STATE_KIND == redis ]] \
    || die "REMEDIATION_STATE_REDIS_URL must be a redis://, rediss:// or unix:// URL, got $(mask "$CONF_STATE")"
[[ $BROKER_KIND != invalid ]] || die "REMEDIATION_BROKER_URL is not a valid URL: $(mask "$CONF_BROKER")"
[[ $RESULT_KIND != invalid ]] || die "REMEDIATION_RESULT_BACKEND is not a valid URL: $(mask "$CONF_RESULT")"
[[ $AUDIT_KIND == postgres ]] \
    || die "REMEDIATION_AUDIT_DSN must be a postgresql://user@host:port/db URL, got $(mask "$CONF_AUDIT")"

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# a zombie (exited, not yet reaped by init) counts as gone
pid_alive() {
    [[ $1 =~ ^[0-9]+$ ]] && kill -0 "$1" 2>/dev/null \
        && [[ $(sed -E 's/.*\) ([A-Za-z]).*/\1/' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

# ---------------------------------------------------------------- Redis

# redis_ping HOST PORT SOCK DB USER PASS TLS: true when the server answers PONG.
redis_ping() {
    local host=$1 port=$2 sock=$3 db=$4 user=$5 pass=$6 tls=$7 reply
    if command -v redis-cli >/dev/null 2>&1; then
        local args=(-n "$db")
        if [[ -n $sock ]]; then args+=(-s "$sock"); else args+=(-h "$host" -p "$port"); fi
        [[ -n $user ]] && args+=(--user "$user")
        [[ $tls == 1 ]] && args+=(--tls)
        if [[ -n $pass ]]; then
            reply=$(REDISCLI_AUTH=$pass timeout 5 redis-cli "${args[@]}" ping 2>/dev/null) || true
        else
            reply=$(env -u REDISCLI_AUTH timeout 5 redis-cli "${args[@]}" ping 2>/dev/null) || true
        fi
        [[ $reply == PONG ]]
        return
    fi
    # No redis-cli: speak just enough RESP ourselves.
    R_HOST=$host R_PORT=$port R_SOCK=$sock R_DB=$db R_USER=$user R_PASS=$pass R_TLS=$tls \
        "$PY" - <<'PYEOF' 2>/dev/null
import os
import socket
import ssl
import sys

e = os.environ
try:
    if e["R_SOCK"]:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(3)
        s.connect(e["R_SOCK"])
    else:
        s = socket.create_connection((e["R_HOST"], int(e["R_PORT"])), timeout=3)
        if e["R_TLS"] == "1":
            s = ssl.create_default_context().wrap_socket(s, server_hostname=e["R_HOST"])
    s.settimeout(3)
    f = s.makefile("rb")

    def call(*args):
        data = b"*%d\r\n" % len(args)
        for a in args:
            a = a.encode()
            data += b"$%d\r\n%s\r\n" % (len(a), a)
        s.sendall(data)
        return f.readline().strip()

    if e["R_PASS"]:
        auth = ("AUTH", e["R_USER"], e["R_PASS"]) if e["R_USER"] else ("AUTH", e["R_PASS"])
        if call(*auth) != b"+OK":
            sys.exit(1)
    if e["R_DB"] != "0" and call("SELECT", e["R_DB"]) != b"+OK":
        sys.exit(1)
    sys.exit(0 if call("PING") == b"+PONG" else 1)
except Exception:
    sys.exit(1)
PYEOF
}

redis_ping_url() { # PREFIX (STATE/BROKER/RESULT)
    local p=$1 h p_ s d u pw t
    h=${p}_HOST p_=${p}_PORT s=${p}_SOCK d=${p}_DB u=${p}_USER pw=${p}_PASS t=${p}_TLS
    redis_ping "${!h}" "${!p_}" "${!s}" "${!d}" "${!u}" "${!pw}" "${!t}"
}

private_redis_port() { # prints the port of our running private instance, if any
    local pid port
    [[ -f $REDIS_PIDFILE && -f $REDIS_PORTFILE ]] || return 1
    pid=$(head -n 1 "$REDIS_PIDFILE" 2>/dev/null) || return 1
    port=$(head -n 1 "$REDIS_PORTFILE" 2>/dev/null) || return 1
    pid_alive "$pid" && [[ $port =~ ^[0-9]+$ ]] || return 1
    redis_ping 127.0.0.1 "$port" "" 0 "" "" 0 || return 1
    printf '%s' "$port"
}

start_private_redis() {
    local port pid i attempt server
    if port=$(private_redis_port); then
        log "redis: reusing private instance on port $port (pid $(head -n 1 "$REDIS_PIDFILE"))"
        REDIS_PRIVATE_PORT=$port
        return
    fi
    # leftovers of an instance that is gone
    if [[ -f $REDIS_PIDFILE ]]; then
        pid=$(head -n 1 "$REDIS_PIDFILE" 2>/dev/null || true)
        if pid_alive "$pid" && grep -qs redis "/proc/$pid/cmdline"; then
            log "redis: private instance (pid $pid) does not answer; stopping it"
            kill "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do pid_alive "$pid" || break; sleep 0.1; done
            if pid_alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
        fi
        rm -f "$REDIS_PIDFILE" "$REDIS_PORTFILE"
    fi

    mkdir -p "$REDIS_DIR" "$LOG_DIR"
    server=$(command -v redis-server 2>/dev/null || true)
    if [[ -z $server ]]; then
        need_packages "redis-server is not installed" redis-server redis-tools
        server=$(command -v redis-server 2>/dev/null || true)
        [[ -n $server ]] || die "redis-server still not found after installing redis-server"
    fi

    for attempt in 1 2 3; do
        port=$(free_port)
        "$server" --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
            --dir "$REDIS_DIR" --pidfile "$REDIS_PIDFILE" --logfile "$REDIS_LOG" >/dev/null 2>&1 9>&- || true
        for ((i = 0; i < 100; i++)); do
            # after a second without a live server process there is no point in waiting
            if ((i >= 10)) && ! pid_alive "$(head -n 1 "$REDIS_PIDFILE" 2>/dev/null || true)"; then
                break
            fi
            if redis_ping 127.0.0.1 "$port" "" 0 "" "" 0; then
                printf '%s\n' "$port" >"$REDIS_PORTFILE"
                REDIS_PRIVATE_PORT=$port
                log "redis: started private instance on port $port (data $REDIS_DIR, log $REDIS_LOG)"
                return
            fi
            sleep 0.1
        done
        log "redis: private instance on port $port did not come up (attempt $attempt)"
        pid=$(head -n 1 "$REDIS_PIDFILE" 2>/dev/null || true)
        if pid_alive "$pid"; then kill "$pid" 2>/dev/null || true; fi
        rm -f "$REDIS_PIDFILE"
    done
    log "--- last lines of $REDIS_LOG:"
    tail -n 20 "$REDIS_LOG" >&2 2>/dev/null || true
    die "could not start a private redis-server"
}

REDIS_PRIVATE_PORT=
if redis_ping_url STATE; then
    STATE_URL=$CONF_STATE
    DEFAULT_BROKER=$STATE_DB1
    DEFAULT_RESULT=$STATE_DB2
    log "redis: using configured $(mask "$STATE_URL")"
else
    log "redis: $(mask "$CONF_STATE") does not answer"
    start_private_redis
    STATE_URL=redis://127.0.0.1:$REDIS_PRIVATE_PORT/0
    DEFAULT_BROKER=redis://127.0.0.1:$REDIS_PRIVATE_PORT/1
    DEFAULT_RESULT=redis://127.0.0.1:$REDIS_PRIVATE_PORT/2
fi

# pick_celery_url PREFIX CONFIGURED DEFAULT LABEL: a configured URL is kept when it answers
# (or is not Redis, which we cannot check); otherwise the default.
pick_celery_url() {
    local prefix=$1 conf=$2 default=$3 label=$4 kind=${1}_KIND
    if [[ -z $conf ]]; then
        printf '%s' "$default"
    elif [[ ${!kind} == other ]]; then
        log "$label: using configured $(mask "$conf") (not Redis; not checked)"
        printf '%s' "$conf"
    elif redis_ping_url "$prefix"; then
        log "$label: using configured $(mask "$conf")"
        printf '%s' "$conf"
    else
        log "$label: configured $(mask "$conf") does not answer; using $(mask "$default")"
        printf '%s' "$default"
    fi
}
BROKER_URL=$(pick_celery_url BROKER "$CONF_BROKER" "$DEFAULT_BROKER" broker)
RESULT_URL=$(pick_celery_url RESULT "$CONF_RESULT" "$DEFAULT_RESULT" "result backend")

# ---------------------------------------------------------------- PostgreSQL

export PGCONNECT_TIMEOUT=5
unset PGSERVICE PGSERVICEFILE || true

PSQL='' PG_ISREADY='' CREATEDB='' PG_BINDIR=''

# find_pg_server_bindir [MAJOR]: a directory holding initdb, pg_ctl and postgres.
find_pg_server_bindir() {
    local want=${1:-} d candidates=()
    [[ -n $want ]] && candidates+=("/usr/lib/postgresql/$want/bin")
    if command -v pg_config >/dev/null 2>&1; then
        d=$(pg_config --bindir 2>/dev/null || true)
        [[ -n $d ]] && candidates+=("$d")
    fi
    while IFS= read -r d; do candidates+=("$d"); done \
        < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r)
    if d=$(command -v initdb 2>/dev/null); then candidates+=("$(dirname "$(readlink -f "$d")")"); fi
    for d in "${candidates[@]}"; do
        if [[ -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]]; then
            printf '%s' "$d"
            return 0
        fi
    done
    return 1
}

find_pg_client() { # sets PSQL, PG_ISREADY, CREATEDB (PATH first, else a server bindir)
    local bindir=
    PSQL=$(command -v psql 2>/dev/null || true)
    PG_ISREADY=$(command -v pg_isready 2>/dev/null || true)
    CREATEDB=$(command -v createdb 2>/dev/null || true)
    if [[ -z $PSQL || -z $PG_ISREADY ]] && bindir=$(find_pg_server_bindir); then
        [[ -n $PSQL || ! -x $bindir/psql ]] || PSQL=$bindir/psql
        [[ -n $PG_ISREADY || ! -x $bindir/pg_isready ]] || PG_ISREADY=$bindir/pg_isready
        [[ -n $CREATEDB || ! -x $bindir/createdb ]] || CREATEDB=$bindir/createdb
    fi
    [[ -n $PSQL && -n $PG_ISREADY ]]
}

PG_ERR='' PG_OUT=''
pg_try() { # URI PASSWORD SQL: run one query; result in PG_OUT, first error lines in PG_ERR
    local errfile rc=0
    errfile=$(mktemp)
    if [[ -n $2 ]]; then
        PG_OUT=$(PGPASSWORD=$2 "$PSQL" -XqtA -v ON_ERROR_STOP=1 -d "$1" -c "$3" 2>"$errfile") || rc=$?
    else
        PG_OUT=$(env -u PGPASSWORD "$PSQL" -XqtA -v ON_ERROR_STOP=1 -d "$1" -c "$3" 2>"$errfile") || rc=$?
    fi
    PG_ERR=$(head -n 3 "$errfile")
    PG_ERR=${PG_ERR//$'\n'/ }
    rm -f "$errfile"
    return "$rc"
}

# pg_ensure_db URI MAINT_URI PASSWORD DB: true when DB exists or was just created.
pg_ensure_db() {
    local uri=$1 maint=$2 pass=$3 db=$4 errfile rc=0
    pg_try "$uri" "$pass" 'select 1' && return 0
    pg_try "$maint" "$pass" "select 1 from pg_database where datname = '${db//\'/\'\'}'" || return 1
    if [[ $PG_OUT == 1 ]]; then
        PG_ERR="database \"$db\" exists, but connecting to it failed"
        return 1
    fi
    log "postgres: creating database \"$db\""
    if [[ -z $CREATEDB ]]; then
        pg_try "$maint" "$pass" "create database \"${db//\"/\"\"}\""
        return
    fi
    errfile=$(mktemp)
    if [[ -n $pass ]]; then
        PGPASSWORD=$pass "$CREATEDB" --maintenance-db="$maint" -- "$db" 2>"$errfile" || rc=$?
    else
        env -u PGPASSWORD "$CREATEDB" --maintenance-db="$maint" -- "$db" 2>"$errfile" || rc=$?
    fi
    PG_ERR=$(head -n 3 "$errfile")
    PG_ERR=${PG_ERR//$'\n'/ }
    rm -f "$errfile"
    return "$rc"
}

pg_answers() { # URI: the server accepts connections (authentication not checked yet)
    "$PG_ISREADY" -q -t 3 -d "$1" >/dev/null 2>&1
}

tcp_open() { # HOST PORT
    if [[ -z $1 || $1 == /* ]]; then
        [[ -S ${1:-/var/run/postgresql}/.s.PGSQL.$2 ]]
        return
    fi
    "$PY" -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)' \
        "$1" "$2" 2>/dev/null
}

# --- private cluster

PG_OWNER=
pg_run() { # run a PostgreSQL server program as the cluster owner
    # 9>&-: the server must not inherit (and so hold) our lock
    if [[ $IS_ROOT -eq 0 ]]; then
        (cd / && env LC_ALL=C "$@") 9>&-
    elif command -v runuser >/dev/null 2>&1; then
        (cd / && runuser -u "$PG_OWNER" -- env LC_ALL=C "$@") 9>&-
    else
        (cd / && su "$PG_OWNER" -s /bin/sh -c "$(printf '%q ' env LC_ALL=C "$@")") 9>&-
    fi
}

as_postgres_user() { # CMD...: run as the postgres system user (root only)
    if command -v runuser >/dev/null 2>&1; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && su postgres -s /bin/sh -c "$(printf '%q ' "$@")")
    fi
}

ensure_postgres_user() {
    getent passwd postgres >/dev/null && return
    log "postgres: creating system user postgres"
    useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home \
        --shell /bin/sh --comment "PostgreSQL administrator" postgres
}

pg_major() { # BINDIR: major version of the server there
    { "$1/pg_ctl" --version 2>/dev/null | grep -oE '[0-9]+' | head -n 1; } || true
}

running_cluster_port() { # PGDATA: port of a cluster running there that answers
    local pidfile=$1/postmaster.pid pid port i
    [[ -f $pidfile ]] || return 1
    pid=$(sed -n 1p "$pidfile" 2>/dev/null) || return 1
    port=$(sed -n 4p "$pidfile" 2>/dev/null) || return 1
    pid_alive "$pid" && [[ $port =~ ^[0-9]+$ ]] || return 1
    for ((i = 0; i < 100; i++)); do # it may still be starting up
        if "$PG_ISREADY" -q -t 2 -h 127.0.0.1 -p "$port" >/dev/null 2>&1; then
            printf '%s' "$port"
            return 0
        fi
        pid_alive "$pid" || return 1
        sleep 0.1
    done
    return 1
}

start_private_postgres() {
    local base pgdata sockdir pglog port attempt owner version major candidates=("$PG_LOCAL_BASE")

    # A cluster still running from an earlier run is reused.
    [[ $IS_ROOT -eq 1 ]] && candidates+=("$PG_TMP_BASE")
    for base in "${candidates[@]}"; do
        if port=$(running_cluster_port "$base/data"); then
            log "postgres: reusing private cluster on port $port (data $base/data)"
            PG_PRIVATE_PORT=$port
            return
        fi
    done

    if ! PG_BINDIR=$(find_pg_server_bindir); then
        need_packages "the PostgreSQL server (initdb, pg_ctl) is not installed" postgresql postgresql-client
        PG_BINDIR=$(find_pg_server_bindir) || die "initdb/pg_ctl still not found after installing postgresql"
    fi

    # Where, and as whom: PostgreSQL refuses to run as root, so root hands the cluster to the
    # postgres system user, which must be able to reach $ROOT/.data (not so under /root).
    base=$PG_LOCAL_BASE
    if [[ $IS_ROOT -eq 1 ]]; then
        ensure_postgres_user
        if ! as_postgres_user test -x "$DATA" -a -r "$DATA" 2>/dev/null; then
            base=$PG_TMP_BASE
            log "postgres: user postgres cannot reach $DATA; the private cluster lives in $base instead"
        fi
    fi
    pgdata=$base/data

    if [[ $IS_ROOT -eq 1 ]]; then
        PG_OWNER=postgres
        if [[ -d $pgdata ]]; then
            owner=$(stat -c %U "$pgdata")
            [[ $owner == root ]] || PG_OWNER=$owner
        fi
    else
        PG_OWNER=$(id -un)
    fi
    if [[ -e $base && $(stat -c %U "$base") != "$PG_OWNER" ]]; then
        if [[ $IS_ROOT -eq 1 && $base == "$PG_LOCAL_BASE" ]]; then
            chown "$PG_OWNER:" "$base"
        else
            die "$base belongs to $(stat -c %U "$base"), not $PG_OWNER; remove it"
        fi
    fi

    # Binaries of the major version an existing data directory was made with.
    if [[ -f $pgdata/PG_VERSION ]]; then
        version=$(head -n 1 "$pgdata/PG_VERSION")
        major=$(pg_major "$PG_BINDIR")
        if [[ $major != "$version" ]]; then
            PG_BINDIR=$(find_pg_server_bindir "$version") || true
            [[ $(pg_major "$PG_BINDIR") == "$version" ]] \
                || die "$pgdata was made by PostgreSQL $version, which is not installed; remove it (scripts/stop_services.sh first)"
        fi
    fi

    mkdir -p "$base" "$LOG_DIR"
    chmod 755 "$base" "$LOG_DIR" 2>/dev/null || true
    if [[ $base == "$PG_LOCAL_BASE" ]]; then pglog=$LOG_DIR/postgres.log; else pglog=$base/postgres.log; fi
    touch "$pglog"
    # unix socket paths are limited to 107 bytes
    sockdir=$base/run
    [[ ${#sockdir} -le 90 ]] || sockdir=/tmp
    [[ $sockdir == /tmp ]] || mkdir -p "$sockdir"
    if [[ $IS_ROOT -eq 1 ]]; then
        chown "$PG_OWNER:" "$base" "$pglog"
        [[ $sockdir == /tmp ]] || chown "$PG_OWNER:" "$sockdir"
    fi

    if [[ -d $pgdata && ! -f $pgdata/PG_VERSION ]]; then
        log "postgres: removing incomplete data directory $pgdata"
        rm -rf "$pgdata"
    fi
    if [[ ! -d $pgdata ]]; then
        log "postgres: initdb $pgdata"
        if ! pg_run "$PG_BINDIR/initdb" -D "$pgdata" -U postgres --auth=trust -E UTF8 --no-locale \
            >>"$pglog" 2>&1; then
            tail -n 20 "$pglog" >&2 || true
            die "initdb failed (log $pglog)"
        fi
        printf "\n# added by scripts/ensure_services.sh\ninclude_if_exists = 'remediation.conf'\n" \
            >>"$pgdata/postgresql.conf"
    fi

    for attempt in 1 2 3; do
        port=$(free_port)
        # Settings go into a file rather than pg_ctl -o, so paths need no shell quoting.
        {
            printf '# rewritten by scripts/ensure_services.sh on every start\n'
            printf "listen_addresses = '127.0.0.1'\n"
            printf 'port = %s\n' "$port"
            printf "unix_socket_directories = '%s'\n" "${sockdir//\'/\'\'}"
        } >"$pgdata/remediation.conf"
        [[ $IS_ROOT -eq 0 ]] || chown "$PG_OWNER:" "$pgdata/remediation.conf"
        if pg_run "$PG_BINDIR/pg_ctl" -D "$pgdata" -l "$pglog" -w -t 30 start >/dev/null 2>&1 \
            && "$PG_ISREADY" -q -t 5 -h 127.0.0.1 -p "$port" >/dev/null 2>&1; then
            PG_PRIVATE_PORT=$port
            log "postgres: started private cluster on port $port (data $pgdata, log $pglog)"
            return
        fi
        log "postgres: private cluster did not start on port $port (attempt $attempt)"
        pg_run "$PG_BINDIR/pg_ctl" -D "$pgdata" -m immediate stop >/dev/null 2>&1 || true
    done
    log "--- last lines of $pglog:"
    tail -n 20 "$pglog" >&2 || true
    die "could not start a private PostgreSQL cluster"
}

if ! find_pg_client; then
    if tcp_open "$AUDIT_HOST" "$AUDIT_PORT"; then
        need_packages "psql/pg_isready are not installed" postgresql-client
    else
        need_packages "neither psql nor a PostgreSQL server is installed" postgresql postgresql-client
    fi
    find_pg_client || die "psql/pg_isready still not found after installing postgresql-client"
fi

AUDIT_DSN=
PG_PRIVATE_PORT=
if pg_answers "$AUDIT_URI"; then
    if pg_ensure_db "$AUDIT_URI" "$AUDIT_MAINT_URI" "$AUDIT_PASS" "$AUDIT_DB"; then
        AUDIT_DSN=$CONF_AUDIT
        log "postgres: using configured $(mask "$CONF_AUDIT")"
    else
        log "postgres: $(mask "$CONF_AUDIT") answers but cannot be used: $(mask "$PG_ERR")"
    fi
else
    log "postgres: $(mask "$CONF_AUDIT") does not answer"
fi
if [[ -z $AUDIT_DSN ]]; then
    start_private_postgres
    PRIVATE_URI=postgresql://postgres@127.0.0.1:$PG_PRIVATE_PORT/$AUDIT_DB_ENC
    pg_ensure_db "$PRIVATE_URI" "postgresql://postgres@127.0.0.1:$PG_PRIVATE_PORT/postgres" "" "$AUDIT_DB" \
        || die "could not create database \"$AUDIT_DB\" in the private cluster: $PG_ERR"
    AUDIT_DSN=$PRIVATE_URI
fi

# ---------------------------------------------------------------- RabbitMQ (tests only)

# The integration tests run once per broker; the second one is RabbitMQ. Nothing else in
# the project needs it, so a broker that cannot be had is not an error: the variable is
# left out and those tests skip (they fail under CI=true).
RABBIT_PORTFILE=$DATA/rabbitmq.port
RABBIT_NODEFILE=$DATA/rabbitmq.node
RABBIT_BASEFILE=$DATA/rabbitmq.base
RABBIT_TMP_BASE=/tmp/remediation-rabbitmq-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)
RABBIT_NODE=rem-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)@localhost
RABBIT_HOME=/var/lib/rabbitmq # the rabbitmq user's home: its .erlang.cookie is rabbitmqctl's too
AMQP_ERR=

# amqp_check URL: an AMQP 0-9-1 handshake up to Connection.Open-Ok on the URL's vhost, so
# the credentials and the vhost are checked, not only the port. The reason for a failure
# goes to AMQP_ERR. The URL travels in the environment (it may hold a password).
amqp_check() {
    local errfile rc=0
    errfile=$(mktemp)
    A_URL=$1 "$PY" - <<'PYEOF' 2>"$errfile" || rc=$?
import os
import socket
import ssl
import struct
import sys
from urllib.parse import unquote, urlsplit

u = urlsplit(os.environ["A_URL"])
if u.scheme not in ("amqp", "amqps"):
    sys.exit("not an amqp:// or amqps:// URL")
host = u.hostname or "127.0.0.1"
port = u.port or (5671 if u.scheme == "amqps" else 5672)
user = unquote(u.username or "guest")
password = unquote(u.password or "guest")
vhost = unquote(u.path[1:]) if len(u.path) > 1 else "/"


def shortstr(s):
    b = s.encode()
    return bytes([len(b)]) + b


def longstr(b):
    return struct.pack(">I", len(b)) + b


def send(sock, cls, meth, args=b""):
    payload = struct.pack(">HH", cls, meth) + args
    sock.sendall(struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce")


def recv_exact(f, n):
    data = f.read(n)
    if len(data) < n:
        raise ConnectionError("connection closed by the server")
    return data


def method(f):
    while True:
        kind, _, size = struct.unpack(">BHI", recv_exact(f, 7))
        payload = recv_exact(f, size + 1)[:-1]
        if kind == 1:
            return struct.unpack(">HH", payload[:4]), payload[4:]


try:
    sock = socket.create_connection((host, port), timeout=5)
    if u.scheme == "amqps":
        sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
    sock.settimeout(5)
    f = sock.makefile("rb")
    sock.sendall(b"AMQP\x00\x00\x09\x01")
    if method(f)[0] != (10, 10):
        sys.exit("no Connection.Start: not an AMQP 0-9-1 server")
    send(sock, 10, 11, longstr(b"") + shortstr("PLAIN")
         + longstr(b"\0" + user.encode() + b"\0" + password.encode()) + shortstr("en_US"))
    try:
        (cm, args) = method(f)
    except ConnectionError:
        sys.exit("authentication refused (user %r)" % user)
    if cm != (10, 30):
        sys.exit("authentication refused (user %r)" % user)
    channel_max, frame_max, _ = struct.unpack(">HIH", args[:8])
    send(sock, 10, 31, struct.pack(">HIH", channel_max, frame_max, 0))
    send(sock, 10, 40, shortstr(vhost) + shortstr("") + b"\x00")
    cm, args = method(f)
    if cm != (10, 41):
        sys.exit("vhost %r refused: %s" % (vhost, args[3:3 + args[2]].decode(errors="replace")))
    send(sock, 10, 50, struct.pack(">H", 200) + shortstr("") + struct.pack(">HH", 0, 0))
    method(f)  # Close-Ok
except (OSError, struct.error) as exc:
    sys.exit("%s: %s" % (type(exc).__name__, exc))
PYEOF
    AMQP_ERR=$(head -n 2 "$errfile")
    AMQP_ERR=${AMQP_ERR//$'\n'/ }
    rm -f "$errfile"
    return "$rc"
}

rabbit_pid() { # the pid of our private node, when its pidfile names a live beam process
    local base pid
    base=$(head -n 1 "$RABBIT_BASEFILE" 2>/dev/null) || return 1
    pid=$(head -n 1 "$base/rabbitmq.pid" 2>/dev/null) || return 1
    pid_alive "$pid" && grep -qs beam "/proc/$pid/cmdline" || return 1
    printf '%s' "$pid"
}

rabbit_run() { # CMD...: as the rabbitmq system user, with its home (and so its cookie)
    # 9>&-: the broker must not inherit (and so hold) our lock
    (cd / && runuser -u rabbitmq -- env HOME=$RABBIT_HOME "$@") 9>&-
}

start_private_rabbitmq() {
    local port dist_port base i pid attempt url
    if port=$(head -n 1 "$RABBIT_PORTFILE" 2>/dev/null) && [[ $port =~ ^[0-9]+$ ]] \
        && rabbit_pid >/dev/null && amqp_check "amqp://guest:guest@127.0.0.1:$port//"; then
        log "rabbitmq: reusing private node $(head -n 1 "$RABBIT_NODEFILE") on port $port"
        RABBIT_PRIVATE_PORT=$port
        return
    fi
    if [[ $IS_ROOT -eq 0 ]]; then
        log "rabbitmq: not root, so no private broker; the RabbitMQ tests will skip."
        log "  (as root this script installs rabbitmq-server and starts one; or set"
        log "   REMEDIATION_TEST_AMQP_URL to a broker that answers)"
        return 1
    fi
    if [[ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
        command -v apt-get >/dev/null 2>&1 || {
            log "rabbitmq: rabbitmq-server is not installed and apt-get is missing; RabbitMQ tests will skip"
            return 1
        }
        log "rabbitmq: installing Debian package rabbitmq-server"
        # a subshell: a failed install is not fatal here, the RabbitMQ tests skip instead
        (apt_install rabbitmq-server) || true
        APT_UPDATED=1
        if [[ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
            log "rabbitmq: rabbitmq-server could not be installed; the RabbitMQ tests will skip"
            return 1
        fi
    fi
    if pid=$(rabbit_pid); then
        log "rabbitmq: private node (pid $pid) does not answer; stopping it"
        kill "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do pid_alive "$pid" || break; sleep 0.1; done
        if pid_alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
    fi

    # The broker runs as the rabbitmq system user, which must reach $DATA.
    base=$DATA/rabbitmq
    if ! (cd / && runuser -u rabbitmq -- test -x "$DATA" -a -r "$DATA") 2>/dev/null; then
        base=$RABBIT_TMP_BASE
        log "rabbitmq: user rabbitmq cannot reach $DATA; the private node lives in $base instead"
    fi
    mkdir -p "$base/mnesia" "$base/log"
    printf '[].\n' >"$base/enabled_plugins" # no management plugin: a faster start
    : >"$base/rabbitmq-env.conf"            # not /etc/rabbitmq's: that one names the system node
    chown -R rabbitmq: "$base"
    printf '%s\n' "$base" >"$RABBIT_BASEFILE"
    printf '%s\n' "$RABBIT_NODE" >"$RABBIT_NODEFILE"

    for attempt in 1 2; do
        port=$(free_port)
        dist_port=$(free_port) # the default (port + 20000) overflows for high ports
        printf 'listeners.tcp.local = 127.0.0.1:%s\nloopback_users.guest = true\n' "$port" \
            >"$base/rabbitmq.conf"
        chown rabbitmq: "$base/rabbitmq.conf"
        rm -f "$base/rabbitmq.pid"
        log "rabbitmq: starting private node $RABBIT_NODE on port $port (data $base; Erlang takes 5-15 s)"
        rabbit_run RABBITMQ_NODENAME="$RABBIT_NODE" RABBITMQ_DIST_PORT="$dist_port" \
            RABBITMQ_CONF_ENV_FILE="$base/rabbitmq-env.conf" RABBITMQ_CONFIG_FILE="$base/rabbitmq.conf" \
            RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins" RABBITMQ_MNESIA_BASE="$base/mnesia" \
            RABBITMQ_LOG_BASE="$base/log" RABBITMQ_PID_FILE="$base/rabbitmq.pid" ERL_EPMD_ADDRESS=127.0.0.1 \
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
            /usr/lib/rabbitmq/bin/rabbitmq-server -detached >>"$base/log/startup.log" 2>&1 || true
        url=amqp://guest:guest@127.0.0.1:$port//
        for ((i = 0; i < 120; i++)); do # at most 60 s
            if amqp_check "$url"; then
                printf '%s\n' "$port" >"$RABBIT_PORTFILE"
                RABBIT_PRIVATE_PORT=$port
                log "rabbitmq: started private node $RABBIT_NODE on port $port (pid $(rabbit_pid || echo ?))"
                return
            fi
            # once the pidfile was written, a dead process is not worth waiting for
            if ((i >= 10)) && [[ -f $base/rabbitmq.pid ]] && ! rabbit_pid >/dev/null; then break; fi
            sleep 0.5
        done
        log "rabbitmq: private node did not come up on port $port (attempt $attempt): $AMQP_ERR"
        if pid=$(rabbit_pid); then kill "$pid" 2>/dev/null || true; fi
    done
    log "--- last lines of $base/log:"
    tail -n 20 "$base/log/startup.log" "$base/log/$RABBIT_NODE.log" >&2 2>/dev/null || true
    log "rabbitmq: could not start a private node; the RabbitMQ tests will skip"
    return 1
}

CONF_AMQP=$(setting REMEDIATION_TEST_AMQP_URL)
AMQP_NODE=$(setting REMEDIATION_TEST_AMQP_NODE)
[[ -n $CONF_AMQP ]] || CONF_AMQP=amqp://guest:guest@127.0.0.1:5672//
AMQP_URL=
RABBIT_PRIVATE_PORT=
if [[ ${WITH_RABBITMQ:-} != 1 ]]; then
    : # make run needs no RabbitMQ; make test / make chaos ask for it with WITH_RABBITMQ=1
elif [[ $CONF_AMQP == off ]]; then
    log "rabbitmq: REMEDIATION_TEST_AMQP_URL=off; the RabbitMQ tests will skip"
elif amqp_check "$CONF_AMQP"; then
    AMQP_URL=$CONF_AMQP
    log "rabbitmq: using configured $(mask "$CONF_AMQP")"
else
    log "rabbitmq: $(mask "$CONF_AMQP") cannot be used: $(mask "$AMQP_ERR")"
    if start_private_rabbitmq; then
        AMQP_URL=amqp://guest:guest@127.0.0.1:$RABBIT_PRIVATE_PORT//
        AMQP_NODE=$RABBIT_NODE
    fi
fi

# ---------------------------------------------------------------- signing key

# Workers sign trigger headers and backup manifests with REMEDIATION_SIGNING_KEY. When none
# is configured, one is made once in .data/signing.key (0600) and used from then on.
SIGNING_KEY=$(setting REMEDIATION_SIGNING_KEY)
KEY_FILE=$ROOT/.data/signing.key
if [[ -z $SIGNING_KEY ]]; then
    if [[ ! -s $KEY_FILE ]]; then
        mkdir -p "$(dirname "$KEY_FILE")"
        (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$KEY_FILE.tmp" \
            && mv -f "$KEY_FILE.tmp" "$KEY_FILE")
        log "signing key: created $KEY_FILE (set REMEDIATION_SIGNING_KEY to use your own)"
    fi
    SIGNING_KEY=$(<"$KEY_FILE")
    WRITE_KEY=1
else
    WRITE_KEY=
fi

# ---------------------------------------------------------------- output

squote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

mkdir -p "$(dirname "$OUTFILE")"
TMP_OUT=$(mktemp "$OUTFILE.XXXXXX")
trap 'rm -f "$TMP_OUT"' EXIT
{
    printf 'export REMEDIATION_STATE_REDIS_URL=%s\n' "$(squote "$STATE_URL")"
    printf 'export REMEDIATION_BROKER_URL=%s\n' "$(squote "$BROKER_URL")"
    printf 'export REMEDIATION_RESULT_BACKEND=%s\n' "$(squote "$RESULT_URL")"
    printf 'export REMEDIATION_AUDIT_DSN=%s\n' "$(squote "$AUDIT_DSN")"
    [[ -z $WRITE_KEY ]] || printf 'export REMEDIATION_SIGNING_KEY=%s\n' "$(squote "$SIGNING_KEY")"
    if [[ -n $AMQP_URL ]]; then
        printf 'export REMEDIATION_TEST_AMQP_URL=%s\n' "$(squote "$AMQP_URL")"
        # the node rabbitmqctl talks to (tests create a vhost per session); empty: its default
        [[ -z $AMQP_NODE ]] || printf 'export REMEDIATION_TEST_AMQP_NODE=%s\n' "$(squote "$AMQP_NODE")"
    fi
} >"$TMP_OUT"
# the file may carry configured passwords
if [[ -n $WRITE_KEY$STATE_PASS$BROKER_PASS$RESULT_PASS$AUDIT_PASS || $BROKER_URL$RESULT_URL == *:*@* ]] \
    || [[ $AMQP_URL == *:*@* && $AMQP_URL != amqp://guest:guest@* ]]; then
    chmod 600 "$TMP_OUT"
else
    chmod 644 "$TMP_OUT"
fi
mv -f "$TMP_OUT" "$OUTFILE"
trap - EXIT
log "wrote $OUTFILE"
