"""PostgreSQL: each database answers, and its role may do what the actions will ask of it.

For the audit database and each REMEDIATION_POSTGRES_TARGETS entry: connection and server
version; pg_dump / pg_restore not older than the server; VACUUM/ANALYZE and SELECT (pg_dump)
on every user table; ending sessions; CREATEDB for verify_backup's scratch restores;
pg_stat_statements (information). Read-only: catalog queries, never a change. The audit
database is probed as "self" unless REMEDIATION_POSTGRES_TARGETS names its own "self".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from remediation import backups
from remediation.backups.layout import BackupError
from remediation.clients import pg
from remediation.doctor import Result, fail, ok, unknown
from remediation.redact import bounded_text, redact_text
from remediation.settings import Settings

AREA = "postgres"
MAINTAIN_FROM = 170000
"""server_version_num from which VACUUM/ANALYZE rights are the MAINTAIN privilege."""
MAX_TABLE_ROWS = 20
"""Tables named one row each at most; the rest are counted in one more row."""
STATEMENT_TIMEOUT_MS = 5000

VACUUM_ACTIONS = ("vacuum_analyze", "analyze_tables")
SESSION_ACTIONS = ("terminate_idle_transactions", "cancel_long_queries")
DUMP_ACTIONS = ("backup_database",)
RESTORE_ACTIONS = ("verify_backup",)

_ROLE_SQL = """
SELECT current_user AS role, r.rolsuper AS super, r.rolcreatedb AS createdb,
       pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') AS signal,
       pg_has_role(current_user, d.datdba, 'USAGE') AS db_owner,
       has_database_privilege(current_database(), 'CONNECT') AS can_connect,
       current_database() AS db, current_setting('server_version_num')::int AS version_num,
       current_setting('server_version') AS version,
       EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements') AS pgss
FROM pg_roles r, pg_database d
WHERE r.rolname = current_user AND d.datname = current_database()
"""

_TABLES_SQL = """
SELECT n.nspname AS schema, c.relname AS name,
       pg_has_role(current_user, c.relowner, 'USAGE') AS owns,
       {maintain} AS maintain,
       has_table_privilege(c.oid, 'SELECT') AS can_select
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
ORDER BY 1, 2
"""


@dataclass(frozen=True)
class Target:
    name: str
    dsn: str
    acts: bool  # actions may be sent to it (else: the audit database only)


def targets(settings: Settings) -> list[Target]:
    """The audit database ("self", or "audit" when a target is named self) and each target."""
    names = {name.lower() for name in settings.postgres_targets}
    audit = settings.audit_dsn.get_secret_value()
    out = [Target("audit", audit, False) if "self" in names else Target("self", audit, True)]
    for name, dsn in settings.postgres_targets.items():
        out.append(Target(name, dsn.get_secret_value(), True))
    return out


def probe(settings: Settings) -> list[Result]:
    rows: list[Result] = []
    for target in targets(settings):
        rows += probe_target(settings, target)
    return rows


def probe_target(settings: Settings, target: Target) -> list[Result]:
    try:
        with pg.connect(
            target.dsn,
            timeout=settings.postgres.connect_timeout_seconds,
            statement_timeout_ms=STATEMENT_TIMEOUT_MS,
        ) as conn:
            conn.read_only = True
            facts = _one(conn, _ROLE_SQL)
            tables = _tables(conn, facts["version_num"]) if target.acts else []
            facts["allowed_supers"] = _superusers(conn, settings.postgres.session_allow_roles)
    except psycopg.Error as exc:
        message = bounded_text(redact_text(str(exc).strip()), 300)
        fix = "check the host, port, database, user and password in the DSN, and pg_hba.conf"
        return [fail(AREA, target.name, "connect", message, fix)]
    quote = _Quote()
    rows = [_connected(target, facts)]
    if not target.acts:
        return rows
    rows += _tool_rows(target.name, facts["version_num"])
    rows += _vacuum_rows(target.name, facts, tables, quote)
    rows += _select_rows(target.name, facts, tables, quote)
    rows += _session_rows(settings, target.name, facts, quote)
    rows += _restore_rows(target.name, facts, quote)
    rows.append(_pgss_row(target.name, facts))
    return rows


class _Quote:
    """Identifiers double-quoted as in SQL (for the fix text an operator pastes)."""

    def __call__(self, *names: str) -> str:
        return ".".join('"' + name.replace('"', '""') + '"' for name in names)


def _one(conn: psycopg.Connection[Any], query: str) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query).fetchone()
    if row is None:
        raise psycopg.ProgrammingError("the role or database is not in the catalog")
    return row


def _tables(conn: psycopg.Connection[Any], version_num: int) -> list[dict[str, Any]]:
    maintain = "has_table_privilege(c.oid, 'MAINTAIN')" if version_num >= MAINTAIN_FROM else "NULL"
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(_TABLES_SQL.format(maintain=maintain)).fetchall()


def _superusers(conn: psycopg.Connection[Any], roles: list[str]) -> list[str]:
    if not roles:
        return []
    query = "SELECT rolname FROM pg_roles WHERE rolsuper AND rolname = ANY(%s) ORDER BY 1"
    return [row[0] for row in conn.execute(query, (roles,)).fetchall()]


def _connected(target: Target, facts: dict[str, Any]) -> Result:
    who = "superuser" if facts["super"] else "not superuser"
    detail = f"PostgreSQL {facts['version']}, database {facts['db']}, role {facts['role']} ({who})"
    return ok(AREA, target.name, "connect", detail)


def _major(version_text: str) -> int | None:
    match = re.search(r"\)\s*(\d+)", version_text) or re.search(r"(\d+)\.\d+", version_text)
    return int(match[1]) if match else None


def _tool_rows(name: str, version_num: int) -> list[Result]:
    server = version_num // 10000
    rows = []
    for tool, needed in (("pg_dump", DUMP_ACTIONS), ("pg_restore", RESTORE_ACTIONS)):
        what = f"{tool} not older than the server ({server})"
        try:
            path = backups.find_tool(tool)
            version = backups.tool_version(path)
        except (BackupError, OSError, ValueError) as exc:
            rows.append(fail(AREA, name, what, str(exc), _client_fix(server), needed_by=needed))
            continue
        major = _major(version)
        if major is None:
            detail = f"{path} --version said {version!r}"
            rows.append(unknown(AREA, name, what, detail, _client_fix(server), needed_by=needed))
        elif major < server:
            detail = f"{path} is {version}; the server is {server}"
            rows.append(fail(AREA, name, what, detail, _client_fix(server), needed_by=needed))
        else:
            rows.append(ok(AREA, name, what, f"{path}: {version}", needed_by=needed))
    return rows


def _client_fix(server: int) -> str:
    return (
        f"install postgresql-client-{server} (or newer) and put its bin directory on PATH"
        " (pg_config --bindir or /usr/lib/postgresql/<version>/bin are searched too)"
    )


def _vacuum_rows(
    name: str, facts: dict[str, Any], tables: list[dict[str, Any]], quote: _Quote
) -> list[Result]:
    what = "VACUUM/ANALYZE rights"
    pg17 = facts["version_num"] >= MAINTAIN_FROM
    if facts["super"]:
        return [ok(AREA, name, what, "superuser: every table", needed_by=VACUUM_ACTIONS)]
    if facts["db_owner"] and not pg17:
        detail = f"owner of database {facts['db']}: every non-shared table"
        return [ok(AREA, name, what, detail, needed_by=VACUUM_ACTIONS)]
    denied = [t for t in tables if not (t["maintain"] if pg17 else t["owns"])]
    if not denied:
        detail = f"{len(tables)} tables, each owned by (or MAINTAIN for) {facts['role']}"
        return [ok(AREA, name, what, detail, needed_by=VACUUM_ACTIONS)]
    role = quote(facts["role"])
    rows = []
    for t in denied[:MAX_TABLE_ROWS]:
        table = f"{quote(t['schema'])}.{quote(t['name'])}"
        fix = (
            f"GRANT MAINTAIN ON {table} TO {role};"
            if pg17
            else f"ALTER TABLE {table} OWNER TO {role};"
            f" (or make {role} own database {quote(facts['db'])}, or superuser)"
        )
        detail = f"{facts['role']} does not own {t['schema']}.{t['name']}: VACUUM skips it"
        rows.append(
            fail(
                AREA,
                name,
                f"VACUUM/ANALYZE on {t['schema']}.{t['name']}",
                detail,
                fix,
                needed_by=VACUUM_ACTIONS,
            )
        )
    if len(denied) > MAX_TABLE_ROWS:
        more = len(denied) - MAX_TABLE_ROWS
        fix = "GRANT pg_maintain TO " + role + ";" if pg17 else f"the same for each ({more} more)"
        rows.append(
            fail(AREA, name, what, f"{more} more tables like these", fix, needed_by=VACUUM_ACTIONS)
        )
    return rows


def _select_rows(
    name: str, facts: dict[str, Any], tables: list[dict[str, Any]], quote: _Quote
) -> list[Result]:
    what = "SELECT on every table (pg_dump)"
    denied = [t for t in tables if not t["can_select"]]
    if not denied:
        return [ok(AREA, name, what, f"{len(tables)} tables", needed_by=DUMP_ACTIONS)]
    role = quote(facts["role"])
    shown = ", ".join(f"{quote(t['schema'])}.{quote(t['name'])}" for t in denied[:MAX_TABLE_ROWS])
    fix = f"GRANT SELECT ON {shown} TO {role};" + (
        " (and the others)" if len(denied) > MAX_TABLE_ROWS else ""
    )
    detail = f"{len(denied)} tables {facts['role']} may not read: pg_dump fails on the first"
    return [fail(AREA, name, what, detail, fix, needed_by=DUMP_ACTIONS)]


def _session_rows(
    settings: Settings, name: str, facts: dict[str, Any], quote: _Quote
) -> list[Result]:
    what = "end sessions (pg_terminate_backend / pg_cancel_backend)"
    role = quote(facts["role"])
    if not (facts["super"] or facts["signal"]):
        detail = f"{facts['role']} is neither superuser nor a member of pg_signal_backend"
        fix = f"GRANT pg_signal_backend TO {role};"
        return [fail(AREA, name, what, detail, fix, needed_by=SESSION_ACTIONS)]
    how = "superuser" if facts["super"] else "member of pg_signal_backend"
    rows = [ok(AREA, name, what, how, needed_by=SESSION_ACTIONS)]
    allowed = settings.postgres.session_allow_roles
    if not facts["super"] and allowed:
        rows.append(_superuser_allowed(name, allowed, facts))
    return rows


def _superuser_allowed(name: str, allowed: list[str], facts: dict[str, Any]) -> Result:
    """A non-superuser can never signal a superuser's backend (pg_signal_backend excludes
    them): an allow-listed superuser role's sessions would be left running."""
    supers = facts["allowed_supers"]
    what = "allow-listed roles can be signalled"
    if supers:
        detail = f"superuser roles in SESSION_ALLOW_ROLES: {', '.join(supers)}"
        fix = "remove them from REMEDIATION_POSTGRES__SESSION_ALLOW_ROLES (their sessions cannot be ended by a non-superuser)"
        return fail(AREA, name, what, detail, fix, needed_by=SESSION_ACTIONS)
    return ok(AREA, name, what, ", ".join(allowed), needed_by=SESSION_ACTIONS)


def _restore_rows(name: str, facts: dict[str, Any], quote: _Quote) -> list[Result]:
    role = quote(facts["role"])
    rows = []
    what = "CREATEDB (scratch database for restores)"
    if facts["super"] or facts["createdb"]:
        how = "superuser" if facts["super"] else "CREATEDB"
        rows.append(ok(AREA, name, what, how, needed_by=RESTORE_ACTIONS))
    else:
        detail = f"{facts['role']} may not create databases: verify_backup cannot restore"
        rows.append(
            fail(
                AREA, name, what, detail, f"ALTER ROLE {role} CREATEDB;", needed_by=RESTORE_ACTIONS
            )
        )
    what = f"CONNECT on database {facts['db']}"
    if facts["can_connect"]:
        rows.append(ok(AREA, name, what, "", needed_by=DUMP_ACTIONS))
    else:
        fix = f"GRANT CONNECT ON DATABASE {quote(facts['db'])} TO {role};"
        rows.append(fail(AREA, name, what, "no CONNECT privilege", fix, needed_by=DUMP_ACTIONS))
    return rows


def _pgss_row(name: str, facts: dict[str, Any]) -> Result:
    what = "pg_stat_statements (information)"
    if facts["pgss"]:
        return ok(AREA, name, what, "installed: slow-query checks read it")
    return ok(AREA, name, what, "not installed: slow-query checks have nothing to read")
