"""Sending-domain operations: add with a DKIM key, rotate that key, change List-Help."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import psycopg

from txrelay.errors import Conflict, InvalidInput, NotFound
from txrelay.kek import KeyRing
from txrelay.policy.names import normalize_domain, normalize_list_help, normalize_selector
from txrelay.provisioning import dkim_keys
from txrelay.provisioning.accounts import get_account
from txrelay.provisioning.integrity import transaction
from txrelay.store import domains as domain_store
from txrelay.store.domains import DkimKey, RotatingKey, SendingDomain


@dataclass(frozen=True)
class KeyChoice:
    """Where the domain's DKIM key comes from: generated (default), a file, or another domain."""

    selector: str | None = None
    algorithm: str | None = None
    key_file: Path | None = None
    reuse_key_of: str | None = None
    # Dual signing: ("rsa", "ed25519") generates one key of each (domain add --algorithms).
    algorithms: tuple[str, ...] = ()


def parse_algorithms(text: str) -> tuple[str, ...]:
    """--algorithms: "rsa", "ed25519" or both, comma-separated (order does not matter)."""
    wanted = [item.strip().lower() for item in text.split(",") if item.strip()]
    unknown = [item for item in wanted if item not in dkim_keys.ALGORITHMS]
    if unknown or not wanted or len(set(wanted)) != len(wanted):
        raise InvalidInput(
            f"--algorithms {text!r}: give rsa, ed25519 or rsa,ed25519 (each at most once)"
        )
    return tuple(a for a in dkim_keys.ALGORITHMS if a in wanted)


def dual_selector(selector: str) -> str:
    """The Ed25519 key's selector when a domain gets both keys at once: the RSA key's
    selector with -ed25519 (two records need two names)."""
    return normalize_selector(f"{selector}-ed25519")


def default_selector(now: dt.datetime) -> str:
    """txr + year and month: a new selector each month keeps key rotation simple."""
    return f"txr{now:%Y%m}"


def get_domain(conn: psycopg.Connection, domain: str) -> SendingDomain:
    name = normalize_domain(domain)
    with transaction(conn):
        found = domain_store.find_domain(conn, name)
    if found is None:
        raise NotFound(
            f"domain {name} is not registered; see 'txrelay domain list' or add it "
            "with 'txrelay domain add ACCOUNT DOMAIN --list-help URL'"
        )
    return found


def add_domain(
    conn: psycopg.Connection,
    now: dt.datetime,
    account_name: str,
    domain: str,
    list_help: str,
    choice: KeyChoice,
    *,
    keys: KeyRing,
) -> SendingDomain:
    """Store the domain with a new or shared DKIM key, in one transaction."""
    name = normalize_domain(domain)
    help_target = normalize_list_help(list_help)
    if choice.key_file is not None and choice.reuse_key_of is not None:
        raise InvalidInput("give either --key-file or --reuse-key-of, not both")
    choice = _single_algorithm(choice)
    taken = {
        "sending_domains_domain_key": f"domain {name} is already registered; see "
        f"'txrelay domain list'"
    }
    with transaction(conn, taken):
        account = get_account(conn, account_name)
        second_id = None
        if choice.reuse_key_of is not None:
            key_id, second_id = _shared_key(conn, account.id, account.name, choice)
        else:
            selector = normalize_selector(choice.selector or default_selector(now))
            if len(choice.algorithms) == 2:
                key_id = _new_key(conn, account.id, selector, KeyChoice(algorithm="rsa"), keys)
                second_id = _new_key(
                    conn, account.id, dual_selector(selector), KeyChoice(algorithm="ed25519"), keys
                )
            else:
                key_id = _new_key(conn, account.id, selector, choice, keys)
        domain_store.insert_domain(conn, account.id, name, help_target, key_id, second_id)
    return get_domain(conn, name)


def _single_algorithm(choice: KeyChoice) -> KeyChoice:
    """--algorithms with one algorithm is --algorithm; with two it excludes the options that
    name one key (--algorithm, --key-file, --reuse-key-of)."""
    if not choice.algorithms:
        return choice
    if choice.algorithm is not None:
        raise InvalidInput("give either --algorithm or --algorithms, not both")
    if len(choice.algorithms) == 1:
        return KeyChoice(
            choice.selector, choice.algorithms[0], choice.key_file, choice.reuse_key_of
        )
    if choice.key_file is not None or choice.reuse_key_of is not None:
        raise InvalidInput(
            "--algorithms rsa,ed25519 generates two new keys; it cannot be combined with "
            "--key-file or --reuse-key-of"
        )
    return choice


def _new_key(
    conn: psycopg.Connection, account_id: int, selector: str, choice: KeyChoice, keys: KeyRing
) -> int:
    """A new key, its private half sealed with the current KEK before it reaches the database."""
    if choice.key_file is not None:
        material = dkim_keys.load_key_file(choice.key_file, choice.algorithm)
    else:
        material = dkim_keys.generate_key(choice.algorithm or "rsa")
    return domain_store.insert_dkim_key(
        conn,
        account_id,
        selector,
        material.algorithm,
        keys.seal(material.private_key_pem),
        material.public_key_b64,
    )


def _shared_key(
    conn: psycopg.Connection, account_id: int, account_name: str, choice: KeyChoice
) -> tuple[int, int | None]:
    """The other domain's signing key ids (both, when it signs twice)."""
    other = get_domain(conn, choice.reuse_key_of or "")
    if other.account_id != account_id:
        raise InvalidInput(
            f"domain {other.domain} belongs to account {other.account_name!r}, "
            f"not {account_name!r}; a key can only be shared within an account"
        )
    if choice.selector is not None and normalize_selector(choice.selector) != other.key.selector:
        raise InvalidInput(
            f"the key of {other.domain} has selector {other.key.selector}; drop "
            "--selector or give that one"
        )
    if choice.algorithm is not None and choice.algorithm != other.key.algorithm:
        raise InvalidInput(
            f"the key of {other.domain} is {other.key.algorithm}; drop --algorithm or give that one"
        )
    return other.key.id, None if other.second_key is None else other.second_key.id


def list_domains(conn: psycopg.Connection, account_name: str | None) -> list[SendingDomain]:
    with transaction(conn):
        account_id = None if account_name is None else get_account(conn, account_name).id
        return domain_store.list_domains(conn, account_id)


def change_list_help(conn: psycopg.Connection, domain: str, list_help: str) -> SendingDomain:
    return change_domain(conn, domain, list_help=list_help)


RELAY_RETURN_PATH = "relay"  # `--return-path relay`: back to the relay-wide [bounce] domain


def change_domain(
    conn: psycopg.Connection,
    domain: str,
    *,
    list_help: str | None = None,
    return_path: str | None = None,
) -> SendingDomain:
    """Change DOMAIN's List-Help and/or return path (in one transaction: both or neither)."""
    if list_help is None and return_path is None:
        raise InvalidInput("nothing to change; give --list-help or --return-path")
    help_target = None if list_help is None else normalize_list_help(list_help)
    with transaction(conn):
        found = get_domain(conn, domain)
        if help_target is not None:
            domain_store.update_list_help(conn, found.id, help_target)
        if return_path is not None:
            domain_store.update_return_path(
                conn, found.id, normalize_return_path(return_path, found.domain)
            )
    return get_domain(conn, domain)


def normalize_return_path(text: str, domain: str) -> str | None:
    """The return-path host as stored: DOMAIN itself or a subdomain of it, in DNS form
    (None for "relay"). A host outside DOMAIN could not align SPF nor CFBL with it."""
    if text.strip().lower() == RELAY_RETURN_PATH:
        return None
    host = normalize_domain(text)
    if host != domain and not host.endswith("." + domain):
        raise InvalidInput(
            f"the return path of {domain} must be {domain} or a subdomain of it (e.g. "
            f"bounces.{domain}), not {host}: SPF and CFBL align only within the domain; "
            "give 'relay' to use the relay-wide [bounce] domain"
        )
    return host


# How long a replaced key stays published. Postfix gives up on a message after 5 days
# (maximal_queue_lifetime), other senders' queues are similar, and receivers verify when the
# message arrives; two more days cover clock skew and slow retries.
RETIRE_AFTER = dt.timedelta(days=7)

_ONE_PENDING = {
    "dkim_key_rotations_one_pending": "another rotation of this domain started at "
    "the same time; see 'txrelay domain show'"
}


def start_rotation(
    conn: psycopg.Connection, now: dt.datetime, domain: str, choice: KeyChoice, *, keys: KeyRing
) -> SendingDomain:
    """Add a new key under a new selector as 'pending': the domain keeps signing with its
    current key until the new record is published and the admin switches."""
    if choice.reuse_key_of is not None:
        raise InvalidInput(
            "a rotation makes a new key (or takes --key-file); --reuse-key-of "
            "is only for 'txrelay domain add'"
        )
    with transaction(conn, _ONE_PENDING):
        found = _locked_domain(conn, domain)
        pending = found.rotating_key("pending")
        if pending is not None:
            raise Conflict(
                f"{found.domain} already has a new key waiting under selector "
                f"{pending.key.selector}; publish its record and run 'txrelay domain "
                f"switch-key {found.domain}', or drop it with 'txrelay domain "
                f"retire-key {found.domain} {pending.key.selector}'"
            )
        if found.second_key is not None and choice.algorithm is None and choice.key_file is None:
            raise InvalidInput(
                f"{found.domain} signs with an rsa and an ed25519 key; say which one to "
                "replace with --algorithm rsa or --algorithm ed25519"
            )
        selector = _rotation_selector(choice.selector, now, found.selectors, found.domain)
        key_choice = KeyChoice(
            selector,
            choice.algorithm or (None if choice.key_file else found.key.algorithm),
            choice.key_file,
        )
        key_id = _new_key(conn, found.account_id, selector, key_choice, keys)
        domain_store.insert_rotating_key(conn, found.id, key_id, "pending", now)
    return get_domain(conn, found.domain)


def _rotation_selector(wanted: str | None, now: dt.datetime, taken: set[str], domain: str) -> str:
    """The given selector, or txr<yyyymm> (then -2, -3… when this month's is taken)."""
    if wanted is not None:
        selector = normalize_selector(wanted)
        if selector in taken:
            raise Conflict(
                f"{domain} already publishes selector {selector}; a new key needs a "
                "selector of its own (its DNS record is separate)"
            )
        return selector
    base = default_selector(now)
    candidates = (base if n == 1 else f"{base}-{n}" for n in range(1, len(taken) + 2))
    return next(c for c in candidates if c not in taken)


def pending_key(found: SendingDomain) -> RotatingKey:
    """The new key waiting to sign for the domain, or a message saying how to make one."""
    pending = found.rotating_key("pending")
    if pending is None:
        raise NotFound(
            f"{found.domain} has no new key waiting; start a rotation with "
            f"'txrelay domain rotate-key {found.domain}'"
        )
    return pending


def switch_key(
    conn: psycopg.Connection, now: dt.datetime, domain: str, checked_key_id: int
) -> tuple[SendingDomain, DkimKey]:
    """Sign with the pending key from now on; the old key becomes 'retiring' (still listed as
    published). checked_key_id is the pending key whose DNS record the caller checked (or
    chose not to): a rotation restarted meanwhile is refused rather than switched blind."""
    with transaction(conn):
        found = _locked_domain(conn, domain)
        pending = pending_key(found)
        if pending.key.id != checked_key_id:
            raise Conflict(
                f"the new key of {found.domain} changed while its DNS record was "
                "checked; run the command again"
            )
        replaced = replaced_key(found, pending.key)
        domain_store.delete_rotating_key(conn, found.id, pending.key.id)
        domain_store.update_signing_key(
            conn, found.id, pending.key.id, second=replaced != found.key
        )
        domain_store.insert_rotating_key(conn, found.id, replaced.id, "retiring", now)
    return get_domain(conn, found.domain), replaced


def replaced_key(found: SendingDomain, new: DkimKey) -> DkimKey:
    """The signing key a new key replaces: the one of its algorithm when the domain signs
    with two, else the only one (a rotation may change the algorithm of a single key)."""
    if found.second_key is None:
        return found.key
    same = found.signing_key_of(new.algorithm)
    if same is None:  # a dual domain always has both algorithms; refuse rather than guess
        raise Conflict(
            f"{found.domain} signs with no {new.algorithm} key to replace; retire the new "
            f"key ('txrelay domain retire-key {found.domain} {new.selector}')"
        )
    return same


def retire_key(
    conn: psycopg.Connection, now: dt.datetime, domain: str, selector: str, force: bool
) -> tuple[SendingDomain, RotatingKey]:
    """Stop publishing a retiring key (after RETIRE_AFTER unless forced), or drop a pending
    key that never signed. The key itself is deleted once no domain uses it."""
    wanted = normalize_selector(selector)
    with transaction(conn):
        found = _locked_domain(conn, domain)
        if wanted in {k.selector for k in found.signing_keys}:
            raise InvalidInput(
                f"selector {wanted} signs the mail of {found.domain}; replace "
                f"it first ('txrelay domain rotate-key {found.domain}', then "
                "'switch-key')"
            )
        match = next((r for r in found.rotating if r.key.selector == wanted), None)
        if match is None:
            raise NotFound(
                f"{found.domain} has no key with selector {wanted}; 'txrelay domain "
                f"show {found.domain}' lists its keys"
            )
        since = match.since.astimezone(dt.UTC)
        keep_until = since + RETIRE_AFTER
        if match.state == "retiring" and now < keep_until and not force:
            raise Conflict(
                f"selector {wanted} of {found.domain} stopped signing on "
                f"{since:%Y-%m-%d %H:%M} UTC; receivers may still verify "
                f"mail signed with it until {keep_until:%Y-%m-%d %H:%M} UTC. Retire "
                "it then, or give --force if no such mail can remain"
            )
        domain_store.delete_rotating_key(conn, found.id, match.key.id)
        domain_store.delete_unused_key(conn, match.key.id)
    return get_domain(conn, found.domain), match


def _locked_domain(conn: psycopg.Connection, domain: str) -> SendingDomain:
    """The domain, re-read after locking its row (inside the caller's transaction)."""
    found = get_domain(conn, domain)
    domain_store.lock_domain(conn, found.id)
    return get_domain(conn, found.domain)


def record_dkim_publication(
    conn: psycopg.Connection, now: dt.datetime, found: SendingDomain, published: bool, detail: str
) -> tuple[SendingDomain, bool]:
    """Store a DKIM publication check of FOUND (all its signing keys' records in DNS, or
    not); a pending domain becomes published with the first check that finds them all. The
    domain as it is now, and whether this check made it published."""
    with transaction(conn):
        became = domain_store.record_publication_check(conn, found.id, now, published, detail)
    return get_domain(conn, found.domain), became


def pending_domains(conn: psycopg.Connection, limit: int) -> list[SendingDomain]:
    """Up to LIMIT domains whose DKIM records were not found yet, least recently checked
    first."""
    with transaction(conn):
        names = domain_store.pending_domain_names(conn, limit)
        found = [domain_store.find_domain(conn, name) for name in names]
    return [d for d in found if d is not None]
