"""`txrelay domain`: DKIM keys that really verify, DNS record output, check, list, set."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dkim
import idna
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.cli.conftest import DictConnection, Txrelay, one_row, printed_records, zone_strings
from tests.harness.dns import DnsServer, running_dns_server
from txrelay.kek import KeyRing

MESSAGE = (b"From: Shop <orders@{domain}>\r\nTo: customer@example.org\r\n"
           b"Subject: Your order\r\nMessage-ID: <1@{domain}>\r\n\r\nThank you.\r\n")


def _stored_key(db: DictConnection, domain: str, keys: KeyRing) -> dict[str, Any]:
    """The domain's key row, its private half opened with the KEK (stored: as stored)."""
    row = one_row(
        db, "SELECT k.id, k.selector, k.algorithm, k.private_key_pem, k.public_key_b64 "
        "FROM sending_domains d JOIN dkim_keys k ON k.id = d.dkim_key_id WHERE d.domain = %s",
        (domain,))
    return {**row, "stored": row["private_key_pem"],
            "private_key_pem": keys.open(row["private_key_pem"])}


def _is_registered(db: DictConnection, domain: str) -> bool:
    return db.execute("SELECT 1 FROM sending_domains WHERE domain = %s",
                      (domain,)).fetchone() is not None


def _sign_and_verify(key: dict[str, Any], domain: str, published: tuple[str, str]) -> bool:
    """Sign with the stored private key; verify against the TXT value the CLI printed."""
    message = MESSAGE.replace(b"{domain}", domain.encode())
    if key["algorithm"] == "rsa":
        private, algorithm = key["private_key_pem"].encode(), b"rsa-sha256"
    else:
        loaded = serialization.load_pem_private_key(key["private_key_pem"].encode(), None)
        seed = loaded.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
        private, algorithm = base64.b64encode(seed), b"ed25519-sha256"
    signature = dkim.sign(message, key["selector"].encode(), domain.encode(), private,
                          signature_algorithm=algorithm)
    name, value = published

    def dnsfunc(qname: bytes, timeout: int = 5) -> bytes | None:
        return value.encode() if qname.decode().rstrip(".") == name else None

    return dkim.verify(signature + message, dnsfunc=dnsfunc)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_printed_record_verifies_mail_signed_with_the_stored_key(
        txrelay: Txrelay, account: str, unique: str, db: DictConnection,
        algorithm: str, kek_ring: KeyRing) -> None:
    domain = f"{algorithm}-{unique}.example"
    result = txrelay("domain", "add", account, domain, "--list-help",
                     "https://help.example/", "--algorithm", algorithm)
    assert result.exit_code == 0, result.stderr
    published = zone_strings(result.stdout)
    key = _stored_key(db, domain, kek_ring)
    assert published[0] == f"{key['selector']}._domainkey.{domain}"
    assert published[1] == f"v=DKIM1; k={algorithm}; p={key['public_key_b64']}"
    assert _sign_and_verify(key, domain, published)
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    assert key["stored"].startswith("txrelay-aes256gcm:"), "stored sealed, never in clear"
    assert "PRIVATE KEY" not in key["stored"]


def test_rsa_record_is_split_into_strings_of_at_most_255_bytes(
        txrelay: Txrelay, account: str, unique: str) -> None:
    domain = f"split-{unique}.example"
    added = txrelay("domain", "add", account, domain, "--list-help", "https://h.example/",
                    "--json").json()
    strings = added["dns"]["strings"]
    assert len(strings) == 2 and all(len(s.encode()) <= 255 for s in strings)
    assert "".join(strings) == added["dns"]["value"]
    assert added["dns"]["zone_line"] == (
        f'{added["dns"]["name"]}. IN TXT ( "{strings[0]}" "{strings[1]}" )')


def test_default_selector_is_txr_and_the_year_and_month(txrelay: Txrelay, account: str,
                                                        unique: str) -> None:
    added = txrelay("domain", "add", account, f"sel-{unique}.example", "--list-help",
                    "mailto:help@example.org", "--json").json()
    assert added["selector"] == "txr202611"  # the fixed clock says November 2026
    assert added["algorithm"] == "rsa"
    assert added["list_help"] == "mailto:help@example.org"


def test_json_never_contains_the_private_key(txrelay: Txrelay, account: str,
                                             domain: str, zone: DnsServer) -> None:
    for args in (("domain", "dns", domain), ("domain", "list"), ("domain", "check", domain)):
        result = txrelay("--json", *args)
        assert "PRIVATE KEY" not in result.stdout
        assert "private" not in result.stdout.lower()


def test_idn_domain_is_stored_in_punycode(txrelay: Txrelay, account: str,
                                          unique: str, zone: DnsServer) -> None:
    added = txrelay("domain", "add", account, f"bücher-{unique}.example", "--list-help",
                    "https://h.example/", "--json").json()
    assert added["domain"] == idna.encode(f"bücher-{unique}.example").decode()
    assert added["domain"].startswith("xn--")
    assert txrelay("domain", "dns", f"BÜCHER-{unique}.example", "--json").json()["domain"] \
        == added["domain"]


def _pem_file(tmp_path: Path, key: object, name: str = "key.pem") -> Path:
    path = tmp_path / name
    path.write_bytes(key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return path


@pytest.mark.parametrize(("make_key", "algorithm"), [
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), "rsa"),  # noqa: S505 - the minimum accepted
    (ed25519.Ed25519PrivateKey.generate, "ed25519"),
])
def test_existing_key_file_is_used_and_its_algorithm_inferred(
        txrelay: Txrelay, account: str, unique: str, tmp_path: Path, db: DictConnection,
        make_key: Callable[[], object], algorithm: str, kek_ring: KeyRing) -> None:
    domain = f"file-{algorithm}-{unique}.example"
    result = txrelay("domain", "add", account, domain, "--list-help", "https://h.example/",
                     "--key-file", str(_pem_file(tmp_path, make_key())), "--selector", "Legacy")
    assert result.exit_code == 0, result.stderr
    key = _stored_key(db, domain, kek_ring)
    assert (key["algorithm"], key["selector"]) == (algorithm, "legacy")
    assert _sign_and_verify(key, domain, zone_strings(result.stdout))


def test_unusable_key_files_are_refused(txrelay: Txrelay, account: str, unique: str,
                                        tmp_path: Path, db: DictConnection) -> None:
    short = tmp_path / "short.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                    "rsa_keygen_bits:512", "-out", str(short)], check=True, capture_output=True)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    cases = {
        short: "512-bit RSA key",
        encrypted: "is encrypted",
        garbage: "is not a PEM private key",
        _pem_file(tmp_path, ec.generate_private_key(ec.SECP256R1()), "ec.pem"): "DKIM needs",
        tmp_path / "missing.pem": "cannot read key file",
    }
    domain = f"badkey-{unique}.example"
    for path, message in cases.items():
        result = txrelay("domain", "add", account, domain, "--list-help", "https://h.example/",
                         "--key-file", str(path))
        assert result.exit_code == 4
        assert message in result.error
    assert not _is_registered(db, domain)


def test_key_file_of_the_wrong_algorithm_is_refused(txrelay: Txrelay, account: str,
                                                    unique: str, tmp_path: Path) -> None:
    path = _pem_file(tmp_path, ed25519.Ed25519PrivateKey.generate())
    result = txrelay("domain", "add", account, f"x-{unique}.example", "--list-help",
                     "https://h.example/", "--key-file", str(path), "--algorithm", "rsa")
    assert result.exit_code == 4 and "is an ed25519 key" in result.error


def test_reuse_key_of_shares_the_selector_and_key_row(txrelay: Txrelay, account: str,
                                                      domain: str, unique: str,
                                                      db: DictConnection,
                                                      kek_ring: KeyRing) -> None:
    other = f"second-{unique}.example"
    result = txrelay("domain", "add", account, other, "--list-help", "https://h.example/",
                     "--reuse-key-of", domain)
    assert result.exit_code == 0, result.stderr
    first, second = _stored_key(db, domain, kek_ring), _stored_key(db, other, kek_ring)
    assert first["id"] == second["id"]
    name, value = zone_strings(result.stdout)
    assert name == f"{first['selector']}._domainkey.{other}"
    assert _sign_and_verify(second, other, (name, value))


def test_reuse_key_of_another_accounts_domain_is_refused(txrelay: Txrelay, domain: str,
                                                         unique: str) -> None:
    txrelay("account", "create", f"Other {unique}", "--admin-email", "o@example.org")
    result = txrelay("domain", "add", f"Other {unique}", f"theirs-{unique}.example",
                     "--list-help", "https://h.example/", "--reuse-key-of", domain)
    assert result.exit_code == 4
    assert "a key can only be shared within an account" in result.error


@pytest.mark.parametrize(("list_help", "message"), [
    ("https://h.example/\r\nBcc: victim@example.org", "line breaks"),
    ("ftp://h.example/help", "must start with https://, http:// or mailto:"),
    ("javascript:alert(1)", "must start with https://, http:// or mailto:"),
    ("https://h.example/<script>", "angle brackets"),
])
def test_bad_list_help_is_refused_and_nothing_is_written(
        txrelay: Txrelay, account: str, unique: str, db: DictConnection,
        list_help: str, message: str) -> None:
    keys_before = db.execute("SELECT count(*) AS n FROM dkim_keys").fetchone()
    result = txrelay("domain", "add", account, f"lh-{unique}.example", "--list-help",
                     list_help)
    assert result.exit_code == 4
    assert message in result.error
    assert db.execute("SELECT count(*) AS n FROM dkim_keys").fetchone() == keys_before


@pytest.mark.parametrize("name", ["exa mple.com", "example", "x-.example", "a_b.example",
                                  "x'; DROP TABLE sending_domains;--.example"])
def test_invalid_domain_names_are_refused(txrelay: Txrelay, account: str, name: str) -> None:
    result = txrelay("domain", "add", account, name, "--list-help", "https://h.example/")
    assert result.exit_code == 4
    assert "domain name" in result.error


def test_domain_registered_twice_is_a_conflict_and_no_key_is_left_behind(
        txrelay: Txrelay, account: str, domain: str, db: DictConnection) -> None:
    keys_before = db.execute("SELECT count(*) AS n FROM dkim_keys").fetchone()
    result = txrelay("domain", "add", account, domain.upper(), "--list-help",
                     "https://h.example/")
    assert result.exit_code == 1
    assert result.error == f"domain {domain} is already registered; see 'txrelay domain list'"
    assert db.execute("SELECT count(*) AS n FROM dkim_keys").fetchone() == keys_before


def test_domain_for_unknown_account_is_refused(txrelay: Txrelay, unique: str) -> None:
    result = txrelay("domain", "add", f"ghost {unique}", f"g-{unique}.example", "--list-help",
                     "https://h.example/")
    assert result.exit_code == 3 and "no account named" in result.error


def test_list_dns_and_set(txrelay: Txrelay, account: str, domain: str,
                          zone: DnsServer) -> None:
    listed = txrelay("domain", "list", "--account", account, "--json").json()
    assert [d["domain"] for d in listed] == [domain]
    assert listed[0]["account"] == account
    assert domain in txrelay("domain", "list").stdout
    dns_out = txrelay("domain", "dns", domain)
    assert zone_strings(dns_out.stdout)[1] == listed[0]["dns"]["value"]
    changed = txrelay("domain", "set", domain, "--list-help", "mailto:support@example.org",
                      "--json").json()
    assert changed["list_help"] == "mailto:support@example.org"
    refused = txrelay("domain", "set", domain, "--list-help", "gopher://x.example/")
    assert refused.exit_code == 4
    assert txrelay("domain", "dns", domain, "--json").json()["list_help"] == \
        "mailto:support@example.org"


def test_unknown_domain_is_named(txrelay: Txrelay, unique: str) -> None:
    result = txrelay("domain", "dns", f"nowhere-{unique}.example")
    assert result.exit_code == 3
    assert f"domain nowhere-{unique}.example is not registered" in result.error


# --- domain check: against a real DNS server on loopback (tests/harness/dns.py) -------------
# (SPF, DMARC and every verdict: tests/cli/test_domain_dns_records.py)

def test_check_passes_when_dns_publishes_the_stored_key(
        txrelay: Txrelay, domain: str, zone: DnsServer) -> None:
    zone.serve(printed_records(txrelay, domain))
    result = txrelay("domain", "check", domain)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("DKIM ok: ")
    assert "publishes the stored rsa key" in result.stdout.splitlines()[0]
    assert txrelay("domain", "check", domain, "--json").json()["status"] == "published"


def test_check_fails_on_a_different_key(txrelay: Txrelay, domain: str,
                                        zone: DnsServer) -> None:
    other = base64.b64encode(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    records = printed_records(txrelay, domain)
    name = next(n for n in records if "._domainkey." in n)
    records[name] = [("TXT", "v=spf1 -all"), ("TXT", f"v=DKIM1; k=rsa; p={other}")]
    zone.serve(records)
    result = txrelay("domain", "check", domain)
    assert result.exit_code == 1
    assert "publishes a different key" in result.error
    as_json = txrelay("domain", "check", domain, "--json")
    assert as_json.exit_code == 1
    assert '"status": "mismatch"' in as_json.stdout


def test_check_fails_when_the_record_does_not_exist(txrelay: Txrelay, domain: str,
                                                    zone: DnsServer) -> None:
    records = printed_records(txrelay, domain)
    zone.serve({n: r for n, r in records.items() if "._domainkey." not in n})
    result = txrelay("domain", "check", domain)
    assert result.exit_code == 1
    assert "no TXT record at" in result.error


def test_domain_add_sends_the_admin_to_domain_dns_since_its_dkim_record_alone_fails_check(
        txrelay: Txrelay, account: str, unique: str, zone: DnsServer) -> None:
    domain = f"hint-{unique}.example"
    added = txrelay("domain", "add", account, domain, "--list-help", "https://x.example/help")
    assert added.exit_code == 0, added.stderr
    assert added.stdout.splitlines()[-1].endswith(
        f"'txrelay domain dns {domain}' prints the DKIM, SPF and DMARC records to publish; "
        f"then run 'txrelay domain check {domain}'.")
    name, value = zone_strings(added.stdout)
    zone.serve({name: [("TXT", value)]})
    only_dkim = txrelay("domain", "check", domain)
    assert only_dkim.exit_code == 1
    assert "SPF missing" in only_dkim.error and "DMARC missing" in only_dkim.error
    zone.serve(printed_records(txrelay, domain))
    everything = txrelay("domain", "check", domain)
    assert everything.exit_code == 0, everything.error


def test_check_reports_a_dns_failure_as_such(txrelay: Txrelay, domain: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with running_dns_server(tmp_path / "nsd", zones=("invalid",)) as elsewhere:
        monkeypatch.setenv("TXRELAY_DNS_RESOLVER", elsewhere.address)
        result = txrelay("domain", "check", domain)
    assert result.exit_code == 1
    assert "DNS lookup" in result.error and "failed" in result.error


@pytest.mark.parametrize(("typed", "message"), [
    ("sho\u200bp-{u}.example", "invisible character U+200B"),
    ("sho\u00adp-{u}.example", "invisible character U+00AD"),
    ("shop-{u}\u200e.example", "invisible character U+200E"),
    ("=?utf-8?b?c2hvcC5leGFtcGxl?=", "encoded word"),
    ("ｓｈｏｐ-{u}.example", "does not read back as written"),
])
def test_domains_that_hide_what_they_are_are_refused_as_the_milter_refuses_them(
        txrelay: Txrelay, account: str, unique: str, db: DictConnection, typed: str,
        message: str) -> None:
    result = txrelay("domain", "add", account, typed.format(u=unique), "--list-help",
                     "https://h.example/")
    assert result.exit_code == 4 and message in result.error, result.error  # invalid input
    assert len(result.error.strip().splitlines()) == 1
    assert not _is_registered(db, f"shop-{unique}.example")


@pytest.mark.parametrize(("typed", "idna2003"), [("faß-{u}.example", "fass-{u}.example"),
                                                 ("ς{u}.example", "σ{u}.example")])
def test_eszett_and_final_sigma_domains_keep_their_letter(
        txrelay: Txrelay, account: str, unique: str, db: DictConnection, typed: str,
        idna2003: str) -> None:
    name = typed.format(u=unique)
    result = txrelay("domain", "add", account, name, "--list-help", "https://h.example/")
    assert result.exit_code == 0, result.error
    assert _is_registered(db, idna.encode(name, uts46=True).decode("ascii"))
    folded = idna2003.format(u=unique).encode("idna").decode("ascii")  # IDNA 2003's form
    assert not _is_registered(db, folded)
