"""Decides whether an SMTP session may still send with the login it authenticated with."""

from __future__ import annotations

from dataclasses import dataclass

from txrelay.policy.snapshot import PolicySnapshot
from txrelay.policy.verdict import Verdict


@dataclass(frozen=True)
class SessionLogin:
    """The credential a session sent its first MAIL with: its login and the credential's
    version in the policy snapshot of that moment."""

    username: str
    credential: str
    credential_since: float


def log_in_again(username: str) -> Verdict:
    """421 closes the session (Postfix hangs up after a milter's 421): the client's next
    attempt is a new session, whose AUTH Dovecot checks against the current login file. A
    454 would leave the session open, and SMTP has no second AUTH within one session."""
    return Verdict.tempfail(
        "421",
        "4.7.0",
        f"the credentials of SMTP login {username!r} were changed (password "
        "rotated, connection disabled or deleted) after this session logged in; log in "
        "again with the current credentials",
    )


def check_session_login(
    snapshot: PolicySnapshot, login: str, pinned: SessionLogin | None, session_started: float
) -> SessionLogin | Verdict | None:
    """The session's credential, still current; 421 4.7.0 when it was replaced; None when
    the login belongs to no enabled connection at the session's first MAIL (then
    authorize_sender refuses it with 550 5.7.1).

    `pinned` is what the session's first MAIL saw (None at the first MAIL). Later MAILs are
    refused when the credential changed since, or was disabled or deleted (a disable and
    enable in between counts as a change). `session_started` and each connection's
    `credential_since` are this node's wall clock: the latter is when this node's Dovecot
    checks logins against the current credential (the login file's mtime plus Dovecot's
    read lag, txrelay/store/passdb_file.py), so clocks of other nodes play no part. At the
    first MAIL, a session that connected before then may have logged in with the credential
    it replaced, and is refused."""
    username = login.strip().lower()
    connection = snapshot.connections.get(username)
    current = (
        None
        if connection is None or not connection.enabled
        else SessionLogin(username, connection.credential, connection.credential_since)
    )
    if pinned is not None and pinned.username == username:
        return pinned if current == pinned else log_in_again(login)
    if current is None:
        return None
    if session_started < current.credential_since:
        return log_in_again(login)
    return current
