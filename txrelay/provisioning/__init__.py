"""Provisioning: the operations behind the CLI (accounts, domains, connections, quota)."""
