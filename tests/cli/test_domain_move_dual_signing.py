"""`domain move` and `domain remove` on a dual-signing domain (RSA + Ed25519): both keys
follow the domain, or both are destroyed."""

from __future__ import annotations

from tests.cli.conftest import DictConnection, Txrelay


def test_domain_move_takes_both_keys_of_a_dual_signing_domain(
        txrelay: Txrelay, account: str, db: DictConnection, unique: str) -> None:
    dual = f"dual-{unique}.example"
    added = txrelay("domain", "add", account, dual, "--list-help", "https://help.example/",
                    "--algorithms", "rsa,ed25519")
    assert added.exit_code == 0, added.stderr
    other = f"Other {unique}"
    txrelay("account", "create", other, "--admin-email", f"ops@other-{unique}.example")
    moved = txrelay("domain", "move", dual, "--to", other, "--json").json()
    owners = db.execute(
        "SELECT k.algorithm, a.name FROM sending_domains d "
        "JOIN dkim_keys k ON k.id IN (d.dkim_key_id, d.second_dkim_key_id) "
        "JOIN accounts a ON a.id = k.account_id WHERE d.domain = %s ORDER BY k.algorithm",
        (dual,)).fetchall()
    assert [(r["algorithm"], r["name"]) for r in owners] == [("ed25519", other), ("rsa", other)]
    assert moved["algorithms"] == ["rsa", "ed25519"]
    removed = txrelay("domain", "remove", dual, "--json").json()
    assert removed["keys_destroyed"] == 2
