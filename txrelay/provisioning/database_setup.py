"""`txrelay init`'s database step: a dedicated role and database, made by a PostgreSQL admin."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from txrelay.errors import ConfigError, Conflict, InvalidInput, ServiceUnavailable, TxRelayError
from txrelay.provisioning.credentials import make_password

NAME_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,55}$")  # + "_milter" fits PostgreSQL's 63
MILTER_SUFFIX = "_milter"  # the daemons' role: reads policy, writes the ledger
LOCAL_SUPERUSER = "postgres"  # Debian's: reachable through the unix socket by peer auth
PSQL_TIMEOUT_SECONDS = 60
PSQL_CONNECTION_FAILED = 2  # psql's exit status when it could not connect
# Where the node reaches a local cluster (password auth on loopback: Debian's pg_hba.conf).
LOCAL_HOST, DEFAULT_PORT = "127.0.0.1", 5432


@dataclass(frozen=True)
class DatabasePlan:
    """The role and database to make, and how the admin connection is opened."""

    name: str  # of the role and of the database
    admin_url: str | None  # None: the local superuser through the unix socket
    host: str
    port: int

    @property
    def milter_role(self) -> str:
        return self.name + MILTER_SUFFIX

    def url(self, password: str, role: str | None = None) -> str:
        """The node's [database] url: the dedicated role (or `role`), with its password."""
        return (
            f"postgresql://{role or self.name}:{quote(password, safe='')}@{self.host}:"
            f"{self.port}/{self.name}"
        )

    def admin_description(self) -> str:
        return (
            _redacted(self.admin_url)
            if self.admin_url
            else f"the local superuser {LOCAL_SUPERUSER} (unix socket)"
        )


def plan(name: str, admin_url: str | None) -> DatabasePlan:
    """Validate the names and the admin URL; nothing is contacted yet."""
    if not NAME_PATTERN.match(name):
        raise InvalidInput(
            f"--database-name {name!r}: use lower-case letters, digits and _ "
            "(at most 63), e.g. txrelay"
        )
    if admin_url is None:
        return DatabasePlan(name, None, LOCAL_HOST, DEFAULT_PORT)
    parts = urlsplit(admin_url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise InvalidInput(
            f"--admin-url {_redacted(admin_url)!r} is not a postgresql:// URL, "
            "e.g. postgresql://postgres@db.example/postgres"
        )
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise InvalidInput(f"--admin-url: {exc}") from exc
    host = parts.hostname or LOCAL_HOST  # a socket-only URL: the node uses loopback
    return DatabasePlan(name, admin_url, host, port)


def existing_password(url: str, plan_: DatabasePlan, role: str | None = None) -> str | None:
    """The role's (or `role`'s) password in a node's current [database] url, when it names
    that role on this server: a re-run keeps it, so running daemons are not locked out."""
    parts = urlsplit(url)
    if (parts.username, parts.hostname, parts.port or DEFAULT_PORT, parts.path.strip("/")) == (
        role or plan_.name,
        plan_.host,
        plan_.port,
        plan_.name,
    ) and parts.password:
        return unquote(parts.password)
    return None


def ensure_role_and_database(
    plan_: DatabasePlan, password: str | None, milter_password: str | None = None
) -> tuple[str, str]:
    """Create (or keep) the role and the database it owns, and the daemons' role (NAME_milter,
    login only: its rights come from txrelay_grant_daemon_role after migrating); returns the
    node's URL and the daemons' URL.

    An existing role gets the password again (the one given, or a new one); a database that
    exists and belongs to another role is refused (Conflict). When the administrator lacks
    the rights, the error carries the SQL a DBA can run; ServiceUnavailable when PostgreSQL
    cannot be reached.
    """
    password = password or make_password()
    milter_password = milter_password or make_password()
    done = _run_psql(plan_, _script(plan_.name, password, milter_password))
    if done.returncode == PSQL_CONNECTION_FAILED:
        raise ServiceUnavailable(
            f"cannot connect to PostgreSQL as {plan_.admin_description()}: "
            f"{_first_error(done.stderr)}; check that it runs, or pass --admin-url (a role "
            "that may create roles and databases) or --database-url"
        )
    if done.returncode != 0:
        reason = _first_error(done.stderr)
        if "exists and belongs to" in reason:
            raise Conflict(reason)
        # Not worth retrying unchanged (exit status 1, not 5): the rights are missing.
        raise TxRelayError(
            f"cannot create role and database {plan_.name!r} as "
            f"{plan_.admin_description()}: {reason}\n"
            f"Have a PostgreSQL administrator run:\n{dba_sql(plan_.name)}\n"
            f"then run 'txrelay init --database-url "
            f"postgresql://{plan_.name}:PASSWORD@{plan_.host}:{plan_.port}/{plan_.name}' "
            "(or pass --admin-url with a role that may create roles and databases)"
        )
    return plan_.url(password), plan_.url(milter_password, plan_.milter_role)


def dba_sql(name: str) -> str:
    return (
        f"  CREATE ROLE {name} LOGIN PASSWORD 'choose-a-password';\n"
        f"  CREATE ROLE {name}{MILTER_SUFFIX} LOGIN PASSWORD 'choose-another-password';\n"
        f"  CREATE DATABASE {name} OWNER {name};"
    )


def _script(name: str, password: str, milter_password: str) -> str:
    # psql variables carry the values; :'var' quotes them as literals. NAME_PATTERN and the
    # password's alphabet (letters, digits, - and _) are safe inside \set's quotes.
    return (
        f"\\set role_name '{name}'\n\\set role_password '{password}'\n"
        f"\\set milter_role '{name}{MILTER_SUFFIX}'\n"
        f"\\set milter_password '{milter_password}'\n" + _SETUP_SQL
    )


# CREATE DATABASE cannot run in a transaction or DO block: \gexec runs each generated
# statement; a NULL (nothing to do) is skipped. The first two refuse, before anything is
# made, an administrator without both rights (else a role could be left without its
# database) and a database of that name that belongs to another role.
_SETUP_SQL = """\\set ON_ERROR_STOP on
SELECT format('DO $check$ BEGIN RAISE EXCEPTION %L; END $check$',
              format('permission denied: role %s may not create roles and databases '
                     '(needs CREATEROLE and CREATEDB)', current_user))
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user
                      AND (rolsuper OR (rolcreaterole AND rolcreatedb))) \\gexec
SELECT format('DO $check$ BEGIN RAISE EXCEPTION %L; END $check$',
              format('database %s exists and belongs to %s, not to role %s; pass '
                     '--database-name for another one', datname, pg_get_userbyid(datdba),
                     :'role_name'))
  FROM pg_database WHERE datname = :'role_name' AND pg_get_userbyid(datdba) <> :'role_name'
\\gexec
SELECT format('CREATE ROLE %I LOGIN', :'role_name')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role_name') \\gexec
SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', :'role_name', :'role_password') \\gexec
SELECT format('CREATE ROLE %I LOGIN', :'milter_role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'milter_role') \\gexec
SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', :'milter_role', :'milter_password')
\\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'role_name', :'role_name')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'role_name') \\gexec
"""


def _run_psql(plan_: DatabasePlan, script: str) -> subprocess.CompletedProcess[str]:
    psql = shutil.which("psql")
    if psql is None:
        raise ConfigError(
            "psql is missing: install postgresql-client (scripts/"
            "install.sh does), or pass --database-url of a database "
            "made by your DBA"
        )
    command = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    environment = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    if plan_.admin_url is not None:
        # A password in the URL goes through the environment, not the process list.
        url, password = _split_password(plan_.admin_url)
        command += ["-d", url]
        if password is not None:
            environment["PGPASSWORD"] = password
    else:
        command += ["-U", LOCAL_SUPERUSER, "-d", "postgres"]
        if os.geteuid() == 0 and _system_user_exists(LOCAL_SUPERUSER):
            # Debian's peer authentication lets only the system user postgres in as postgres.
            command = ["runuser", "-u", LOCAL_SUPERUSER, "--", *command]
    # The script goes through stdin: the role's password never appears in a process list.
    try:
        return subprocess.run(
            command,
            input=script,
            capture_output=True,
            text=True,
            env=environment,
            timeout=PSQL_TIMEOUT_SECONDS,
            cwd="/",
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceUnavailable(
            f"PostgreSQL did not answer within {PSQL_TIMEOUT_SECONDS} s "
            f"({plan_.admin_description()})"
        ) from exc


def _system_user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _split_password(url: str) -> tuple[str, str | None]:
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    netloc = parts.netloc.replace(f":{parts.password}@", "@", 1)
    return parts._replace(netloc=netloc).geturl(), unquote(parts.password)


def _first_error(stderr: str) -> str:
    """psql's first error, without its prefixes ('psql: error:', 'ERROR:  ')."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line or "error:" in line]
    first = (errors or lines or ["psql failed"])[0]
    return re.sub(r"^(psql:\S*\s*)?(error:|ERROR:|FATAL:)\s*", "", first)


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)
