"""One command, one transaction; database refusals become one-line admin messages."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import psycopg
import psycopg.errors

from txrelay.errors import Conflict, InvalidInput, ServiceUnavailable

# What each named constraint of the schema means to an admin, when no caller said better.
CONSTRAINT_MESSAGES: Mapping[str, str] = {
    "accounts_live_name": "an account with this name exists already; pick another name",
    "sending_domains_domain_key": "this domain is already registered; see 'txrelay domain list'",
    "connections_live_name": "the account already has a connection with this name; pick "
    "another name or delete the old connection",
    "credentials_username_key": "the generated user name is taken; run the command again",
    "connection_domains_domain_id_account_id_fkey": "the domain belongs to another account",
    "accounts_admin_email_check": "the admin e-mail address is not valid",
    "sending_domains_list_help_check": "List-Help must be an http(s):// URL or a mailto: "
    "address without spaces or angle brackets",
    "dkim_keys_selector_check": "the DKIM selector is not valid",
    "connections_rate_limit_check": "the rate limit must be 0 (unlimited) or more",
    "accounts_low_quota_threshold_check": "the low-quota threshold must be 0 or more",
    "accounts_overage_cap_check": "the overage cap must be 0 (refuse at quota) or more",
}


@contextlib.contextmanager
def transaction(
    conn: psycopg.Connection, messages: Mapping[str, str] | None = None
) -> Iterator[psycopg.Connection]:
    """Run the block in one transaction; on failure roll back, then explain in one line.

    Reads use it too: psycopg would otherwise leave an implicit transaction open, and a
    later `transaction()` would become a savepoint that is never committed. Nested blocks
    become savepoints of the outer one. `messages` overrides CONSTRAINT_MESSAGES for the
    constraints this command can hit.
    """
    with translated_errors(messages), conn.transaction():
        yield conn


@contextlib.contextmanager
def translated_errors(messages: Mapping[str, str] | None = None) -> Iterator[None]:
    try:
        yield
    except psycopg.errors.UniqueViolation as exc:
        raise Conflict(_explain(exc, messages, "this exists already")) from exc
    except (
        psycopg.errors.ForeignKeyViolation,
        psycopg.errors.CheckViolation,
        psycopg.errors.NotNullViolation,
    ) as exc:
        raise InvalidInput(_explain(exc, messages, "the database refused the value")) from exc
    except psycopg.DataError as exc:
        raise InvalidInput(
            f"a value is out of range ({_first_line(exc)}); give a smaller number or a shorter text"
        ) from exc
    except psycopg.errors.UndefinedTable as exc:
        raise ServiceUnavailable(
            "the database has no txrelay tables yet; run 'txrelay db migrate' (or 'txrelay init')"
        ) from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ServiceUnavailable(
            f"PostgreSQL refused the command ({_first_line(exc)}); "
            "connect as the database owner in [database] url"
        ) from exc
    except psycopg.OperationalError as exc:
        raise ServiceUnavailable(
            f"PostgreSQL failed during the command ({_first_line(exc)}); "
            "nothing was changed, try again when it is back"
        ) from exc


def _explain(exc: psycopg.Error, messages: Mapping[str, str] | None, fallback: str) -> str:
    constraint = exc.diag.constraint_name or ""
    if messages and constraint in messages:
        return messages[constraint]
    if constraint in CONSTRAINT_MESSAGES:
        return CONSTRAINT_MESSAGES[constraint]
    return f"{fallback} (constraint {constraint or 'unknown'})"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
