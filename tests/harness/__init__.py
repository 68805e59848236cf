"""Test harness: real services (PostgreSQL, Redis, Dovecot, Postfix, milter, capture sink)."""
