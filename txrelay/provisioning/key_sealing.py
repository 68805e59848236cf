"""Sealing the DKIM private keys stored in clear, and rotating the key-encryption key."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from txrelay.atomic_file import write_atomically
from txrelay.errors import InvalidInput
from txrelay.kek import (
    KEK_MODE,
    OLD_SUFFIX,
    WEBHOOK_SECRET_AAD,
    KeyRing,
    encode_kek,
    generate_kek,
    is_sealed,
    kek_id,
)
from txrelay.provisioning.integrity import transaction

SELECT_KEYS = "SELECT id, private_key_pem FROM dkim_keys ORDER BY id FOR UPDATE"
UPDATE_KEY = "UPDATE dkim_keys SET private_key_pem = %s WHERE id = %s"
# Webhook signing secrets are sealed with the same KEK (txrelay/provisioning/webhooks.py).
SELECT_WEBHOOKS_FOR_SEALING = "SELECT id, secret FROM webhooks ORDER BY id FOR UPDATE"
RESEAL_WEBHOOK = "UPDATE webhooks SET secret = %s WHERE id = %s"
COUNT_CLEAR = (
    "SELECT count(*) FILTER (WHERE private_key_pem NOT LIKE 'txrelay-aes256gcm:%%') "
    "AS clear, count(*) AS total FROM dkim_keys"
)


@dataclass(frozen=True)
class SealingReport:
    sealed: int  # values written by this run
    total: int  # keys in the database
    kek_id: str  # the KEK every key is sealed with now


def clear_key_count(conn: psycopg.Connection) -> tuple[int, int]:
    """(keys stored in clear, all keys)."""
    with transaction(conn):
        row: Any = conn.execute(COUNT_CLEAR).fetchone()
    return int(row["clear"]), int(row["total"])


def seal_clear_keys(conn: psycopg.Connection, keys: KeyRing) -> SealingReport:
    """Seal every key still stored in clear (from before sealing), and every webhook secret
    added while the node had no KEK, in one transaction; values sealed already are left as
    they are. Safe to run again."""
    with transaction(conn):
        rows: list[Any] = conn.execute(SELECT_KEYS).fetchall()
        clear = [r for r in rows if not is_sealed(r["private_key_pem"])]
        for r in clear:
            conn.execute(UPDATE_KEY, (keys.seal(r["private_key_pem"]), r["id"]))
        secrets: list[Any] = conn.execute(SELECT_WEBHOOKS_FOR_SEALING).fetchall()
        for r in secrets:
            if not is_sealed(r["secret"]):
                sealed = keys.seal(r["secret"], aad=WEBHOOK_SECRET_AAD)
                conn.execute(RESEAL_WEBHOOK, (sealed, r["id"]))
    return SealingReport(len(clear), len(rows), keys.current_id)


def rotate_kek(conn: psycopg.Connection, path: Path) -> SealingReport:
    """A new KEK in `path`: every key and webhook secret (clear ones too) re-sealed with it
    in one transaction.

    The current KEK goes to PATH.old first and stays there (milters running during the
    rotation open keys sealed with either; remove it once no backup you keep needs it). If
    the transaction fails, PATH gets the current KEK back and the database is unchanged.
    """
    keys = KeyRing.load(path)
    previous = path.read_text(encoding="ascii")
    old = path.with_name(path.name + OLD_SUFFIX)
    new_key = generate_kek()
    group = os.stat(path).st_gid
    written = False
    try:
        with transaction(conn):
            rows: list[Any] = conn.execute(SELECT_KEYS).fetchall()
            secrets: list[Any] = conn.execute(SELECT_WEBHOOKS_FOR_SEALING).fetchall()
            try:
                opened = [(r["id"], keys.open(r["private_key_pem"])) for r in rows]
                opened_secrets = [
                    (r["id"], keys.open(r["secret"], aad=WEBHOOK_SECRET_AAD)) for r in secrets
                ]
            except InvalidInput as exc:
                raise InvalidInput(
                    f"{exc}; nothing was changed (restore that KEK file first)"
                ) from exc
            _write_kek(old, previous, group)
            _write_kek(path, encode_kek(new_key), group)
            written = True
            new_ring = KeyRing.load(path)
            for key_id, pem in opened:
                conn.execute(UPDATE_KEY, (new_ring.seal(pem), key_id))
            for webhook_id, secret in opened_secrets:
                sealed = new_ring.seal(secret, aad=WEBHOOK_SECRET_AAD)
                conn.execute(RESEAL_WEBHOOK, (sealed, webhook_id))
    except BaseException:
        if written:  # the database still holds the keys sealed with the previous KEK
            _write_kek(path, previous, group)
        raise
    return SealingReport(len(rows), len(rows), kek_id(new_key))


def _write_kek(path: Path, text: str, group: int) -> None:
    write_atomically(
        path,
        text,
        mode=KEK_MODE,
        sync_directory=True,
        before_write=lambda fd: _keep_group(fd, group),
    )


def _keep_group(fd: int, group: int) -> None:
    # Not root and not in that group: the file keeps the writer's group.
    with contextlib.suppress(PermissionError):
        os.fchown(fd, -1, group)
