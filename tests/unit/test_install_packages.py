"""What scripts/install.sh and the image install on a relay node: Postfix's lookup-table
plugins only for a table type txrelay's Postfix configuration uses (production gets only
what it needs)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTALLERS = ("scripts/install.sh", "Dockerfile")
# Where a Postfix table type would be named: the configuration txrelay writes and documents.
USERS = ("txrelay", "postfix-conf", "deploy")
# Debian's dynamically loaded Postfix table types (postfix-<type>), per postconf -m.
TABLE_PLUGINS = re.compile(r"\bpostfix-(pcre|cdb|lmdb|ldap|mysql|pgsql|sqlite)\b")


def _table_types_named() -> str:
    return "\n".join(
        path.read_text(errors="replace")
        for name in USERS
        for path in sorted((ROOT / name).rglob("*"))
        if path.is_file() and path.suffix != ".pyc"
    )


def _plugins_installed(text: str) -> set[str]:
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return set(TABLE_PLUGINS.findall(code))


def test_the_check_reads_installed_plugins_from_the_package_lists() -> None:
    sample = "packages=(\n    postfix postfix-pcre   # the MTA\n)\n# postfix-ldap: not used\n"
    assert _plugins_installed(sample) == {"pcre"}


def test_no_postfix_table_plugin_is_installed_that_no_configuration_uses() -> None:
    named = _table_types_named()
    for installer in INSTALLERS:
        for kind in _plugins_installed((ROOT / installer).read_text()):
            assert f"{kind}:" in named, f"{installer} installs postfix-{kind}, nothing uses {kind}:"
