"""Webhook operations: add (secret made and sealed, URL checked), remove, test."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from dataclasses import dataclass

import psycopg

from txrelay.errors import ServiceUnavailable
from txrelay.kek import WEBHOOK_SECRET_AAD, KeyRing
from txrelay.policy import webhooks as policy
from txrelay.provisioning.accounts import get_account
from txrelay.provisioning.dns_lookup import LookupFailed
from txrelay.provisioning.integrity import transaction
from txrelay.store import webhook_events
from txrelay.store import webhooks as store
from txrelay.webhooks.delivery import Resolver, resolve

SECRET_BYTES = 32


@dataclass(frozen=True)
class AddedWebhook:
    webhook: store.Webhook
    secret: str  # shown once
    sealed: bool
    addresses: list[str]


def add_webhook(
    conn: psycopg.Connection,
    keys: KeyRing | None,
    resolver: Resolver,
    now: dt.datetime,
    account_name: str,
    url: str,
    events: str | None,
    allow_private: bool,
) -> AddedWebhook:
    """Check the URL (scheme, and every address its host has now unless allow_private),
    make the secret, store it sealed with the KEK when this node has one."""
    account = get_account(conn, account_name)
    chosen = policy.parse_events(events, webhook_events.EVENTS)
    target = policy.parse_url(url)
    try:
        addresses = resolve(target, resolver, allow_private)
    except LookupFailed as exc:
        raise ServiceUnavailable(f"{exc}; the URL's host cannot be checked now") from exc
    secret = policy.SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    stored = keys.seal(secret, aad=WEBHOOK_SECRET_AAD) if keys is not None else secret
    with transaction(conn):
        webhook_id = store.insert_webhook(conn, account.id, url, chosen, stored, allow_private, now)
        webhook = store.get_webhook(conn, webhook_id)
    return AddedWebhook(webhook, secret, keys is not None, addresses)


def remove_webhook(conn: psycopg.Connection, webhook_id: int, now: dt.datetime) -> int:
    with transaction(conn):
        return store.remove_webhook(conn, webhook_id, now)


def send_test_event(conn: psycopg.Connection, webhook_id: int, now: dt.datetime) -> uuid.UUID:
    """Queue a `test` event for the worker (NotFound for an unknown or removed webhook)."""
    with transaction(conn):
        webhook = store.get_webhook(conn, webhook_id)
        if webhook.removed_at is not None:
            store.remove_webhook(conn, webhook_id, now)  # raises: says when it was removed
        return store.queue_test_event(conn, webhook, now)
