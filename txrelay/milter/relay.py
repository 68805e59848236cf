"""The milter callbacks: read macros, ask policy and store, apply the verdict in one place.

One RelayMilter instance per SMTP connection (libmilter gives each its own thread). A
message costs one Redis round trip per RCPT, and at end of message one PostgreSQL
transaction plus one Redis call. Nothing is ever answered with "accept" by default: an
unexpected error becomes 451 4.3.0 and the transaction's reservations are released.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar, cast

import Milter

from txrelay import metrics
from txrelay.errors import ServiceUnavailable
from txrelay.milter.logline import format_fields
from txrelay.milter.nodelay import ensure_nodelay
from txrelay.milter.runtime import Runtime
from txrelay.milter.transaction import Transaction
from txrelay.policy import message as message_policy
from txrelay.policy.addresses import (
    HeaderSender,
    address_domain,
    domain_refusal,
    envelope_address,
)
from txrelay.policy.billing import period_of
from txrelay.policy.mail_back import (
    CFBL_ADDRESS,
    CFBL_FEEDBACK_ID,
    CFBL_HEADERS,
    MailBack,
    mail_back,
)
from txrelay.policy.message import IdentityHeaders
from txrelay.policy.names import InvalidDomain
from txrelay.policy.quota import recipient_verdict
from txrelay.policy.recipients import POSTFIX_DUP_FILTER_LIMIT, duplicate_key
from txrelay.policy.sender import authorize_sender
from txrelay.policy.session import SessionLogin, check_session_login
from txrelay.policy.suppression import suppressed_refusal
from txrelay.policy.verdict import (
    LEDGER_SERVICE,
    QUOTA_SERVICE,
    Action,
    Verdict,
    service_unavailable,
)
from txrelay.signing import sign, sign_all
from txrelay.store.ledger import AcceptedMessage
from txrelay.store.recording import LedgerUnavailable
from txrelay.store.reservations import ReservationRequest, reservation_member
from txrelay.store.sandbox import CapturedMessage

log = logging.getLogger("txrelay.milter")
F = TypeVar("F", bound=Callable[..., Any])

# pymilter is untyped: its reply codes and decorators get their types here, once.
CONTINUE: int = Milter.CONTINUE
noreply = cast(Callable[[F], F], Milter.noreply)
decode_bytes = cast(Callable[[F], F], Milter.decode("bytes"))

_MILTER_CODES: dict[Action, int] = {
    Action.CONTINUE: Milter.CONTINUE,
    Action.ACCEPT: Milter.ACCEPT,
    Action.TEMPFAIL: Milter.TEMPFAIL,
    Action.REJECT: Milter.REJECT,
    Action.DISCARD: Milter.DISCARD,
}
INTERNAL_ERROR = Verdict.tempfail(
    "451",
    "4.3.0",
    "the relay hit an internal error; the message was not accepted, please try again later",
)
# The only message changes the relay makes: add headers (DKIM-Signature, List-Help,
# Message-ID, CFBL-*), delete the client's List-Help and CFBL-*, and give the message its
# return path (smfi_chgfrom). Fewer actions, less for the MTA to offer.
ACTIONS = Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGFROM
NO_TRANSACTION = Verdict.tempfail(
    "451", "4.3.0", "the relay lost track of this transaction; please send the message again"
)


def guarded(func: F) -> F:
    """Malformed input or a bug never crashes the milter nor lets mail through: it becomes a
    451, the reservations are released, and the next message is served as usual."""

    @functools.wraps(func)
    def wrapper(self: RelayMilter, *args: Any) -> Any:
        try:
            return func(self, *args)
        except Exception:  # the last line of defence: log it, refuse for now, go on
            log.exception(
                "event=callback_failed callback=%s txn=%s",
                func.__name__,
                self.txn.txn_id if self.txn else "-",
            )
            self._end_transaction(INTERNAL_ERROR, release=True)
            return self._apply(INTERNAL_ERROR)

    return wrapper  # type: ignore[return-value]


def guarded_noreply(func: F) -> F:
    """For header and body, whose replies the MTA does not wait for: a failure marks the
    transaction, and end of message answers 451 for it."""

    @functools.wraps(func)
    def wrapper(self: RelayMilter, *args: Any) -> Any:
        try:
            return func(self, *args)
        except Exception:  # the last line of defence: log it, refuse at end of message
            log.exception(
                "event=callback_failed callback=%s txn=%s",
                func.__name__,
                self.txn.txn_id if self.txn else "-",
            )
            if self.txn is not None:
                self.txn.failed = True
            return CONTINUE

    return wrapper  # type: ignore[return-value]


class RelayMilter(Milter.Base):  # type: ignore[misc]
    """One SMTP connection's milter (libmilter gives each its own instance and thread): reads
    the macros, asks policy and the stores, and answers through `_apply`; at end of message
    adds List-Help, signs and records. Shared state lives in the Runtime, not here."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.txn: Transaction | None = None
        # libmilter makes this instance when the SMTP client connects, before its AUTH.
        self.session_started = time.time()  # this node's clock, as the login file's mtime
        self.session_login: SessionLogin | None = None  # pinned at the session's first MAIL
        self.session_messages = 0  # MAIL commands in this SMTP session

    def negotiate(self, opts: list[int]) -> int:
        """Pymilter's negotiation (skipped callbacks, no-reply steps), with our actions only."""
        result: int = super().negotiate(opts)
        if result == CONTINUE:
            opts[0] = self._actions = opts[0] & ACTIONS
        return result

    @metrics.timed("mail")
    @guarded
    def envfrom(self, mail_from: str, *params: str) -> int:
        """MAIL: who is sending ({auth_authen}) and may they use this sender domain."""
        self._end_transaction(None, release=True)  # a transaction never closed by abort()
        ensure_nodelay()  # once per process: inet sockets without Nagle's 40 ms stall
        self.session_messages += 1
        too_many = message_policy.check_session_messages(
            self.session_messages, self.runtime.config.limits.max_messages_per_session
        )
        if too_many is not None:
            return self._refuse(too_many, mail_from)
        login = self.getsymval("{auth_authen}")
        snapshot = self.runtime.policy.snapshot_for_login(login)
        if snapshot is None:
            return self._refuse(service_unavailable(LEDGER_SERVICE), mail_from)
        if login:
            session = check_session_login(snapshot, login, self.session_login, self.session_started)
            if isinstance(session, Verdict):
                return self._refuse(session, mail_from)
            self.session_login = session or self.session_login
        known = snapshot.connections.get(login.strip().lower()) if login else None
        if known is not None:
            spent = self.runtime.refusals.spent(known.id)
            if spent is not None:
                return self._refuse(self.runtime.refusals.refusal(known.name, spent), mail_from)
        decision = authorize_sender(snapshot, login, mail_from)
        if isinstance(decision, Verdict):
            if known is not None and decision.action is Action.REJECT:
                self.runtime.refusals.count(known.id)
            return self._refuse(decision, mail_from)
        self.txn = Transaction(
            snapshot,
            decision,
            snapshot.account(decision.account_id),
            envelope_address(mail_from),
            self.getsymval("{i}") or "",
            period_of(self.runtime.clock.now()).label,
        )
        if decision.sandbox:  # captured whole at the end: keep the body
            self.txn.body_chunks = []
        return CONTINUE

    @metrics.timed("rcpt")
    @guarded
    def envrcpt(self, rcpt_to: str, *params: str) -> int:
        """RCPT: refuse a recipient on the account's suppression list (before any
        reservation: not billed), else reserve one unit of rate and quota for it."""
        txn = self.txn
        if txn is None:
            return self._apply(NO_TRANSACTION)
        recipient = envelope_address(rcpt_to).lower()
        try:
            address_domain(recipient)
        except InvalidDomain as exc:
            txn.refused_recipients += 1
            return self._apply(domain_refusal(exc, recipient=True))
        suppressed = self.runtime.suppressions.lookup(txn.account.id, recipient)
        if suppressed is not None:
            txn.refused_recipients += 1
            self.runtime.suppressions.count_refused(txn.connection.id)
            return self._apply(suppressed_refusal(recipient, suppressed))
        key = duplicate_key(
            rcpt_to, params, original_recipient=self.runtime.config.milter.original_recipient
        )
        if key in txn.recipient_keys:
            return CONTINUE  # Postfix's duplicate filter drops it: no copy, no bill
        copy = txn.copies.get(recipient, 0)
        member = reservation_member(str(txn.txn_id), f"{recipient}#{copy}" if copy else recipient)
        try:
            reservation = self.runtime.reservations.reserve(
                ReservationRequest(
                    txn.account.id,
                    txn.connection.id,
                    member,
                    txn.connection.rate_limit,
                    txn.account.paid,
                    txn.account.overage_cap,
                    txn.period,
                    quota=not txn.connection.sandbox,  # sandbox mail: the rate only
                )
            )
        except ServiceUnavailable as exc:
            log.warning("event=store_unavailable txn=%s error=%r", txn.txn_id, str(exc))
            service = LEDGER_SERVICE if isinstance(exc, LedgerUnavailable) else QUOTA_SERVICE
            verdict = service_unavailable(service)
        else:
            verdict = recipient_verdict(
                reservation,
                txn.connection.rate_limit,
                txn.connection.name,
                txn.account.overage_cap,
            )
        if verdict.refused:
            txn.refused_recipients += 1
        else:
            txn.recipients.append(recipient)
            txn.members.append(member)
            txn.copies[recipient] = copy + 1
            if len(txn.recipient_keys) < POSTFIX_DUP_FILTER_LIMIT:
                txn.recipient_keys.add(key)
        return self._apply(verdict)

    @noreply
    @decode_bytes
    @guarded_noreply
    def header(self, name: str, value: bytes) -> int:
        txn = self.txn
        if txn is not None:
            txn.header_count += 1
            # Past the cap the message is refused at its end: keep no more of its headers.
            if txn.header_count <= self.runtime.config.limits.max_headers:
                txn.add_header(name, value)
        return CONTINUE

    @noreply
    @guarded_noreply
    def body(self, chunk: bytes) -> int:
        if self.txn is not None:
            self.txn.add_body(chunk, self.runtime.config.milter.max_message_size)
        return CONTINUE

    @metrics.timed("eom")
    @guarded
    def eom(self) -> int:
        """End of message: check, add Message-ID, List-Help and CFBL headers, sign, give the
        return path, record."""
        txn = self.txn
        if txn is None:
            return self._apply(NO_TRANSACTION)
        txn.queue_id = self.getsymval("{i}") or txn.queue_id
        author = self._check_message(txn)
        if isinstance(author, Verdict):
            return self._finish(author)
        back = self._mail_back(txn, author)
        self._ensure_message_id(txn, author)
        self._set_list_help(txn, author)
        self._set_cfbl(txn, back)
        signatures = self._sign(txn, author, back)
        if txn.connection.sandbox:
            return self._finish(self._capture(txn, author, signatures))
        self._set_return_path(back)
        return self._finish(self._record(txn, author))

    def abort(self) -> int:
        self._end_transaction(None, release=True)
        return CONTINUE

    def close(self) -> int:
        self._end_transaction(None, release=True)
        return CONTINUE

    # -- end of message steps -------------------------------------------------------------

    def _check_message(self, txn: Transaction) -> HeaderSender | Verdict:
        if txn.failed:
            return INTERNAL_ERROR
        if not txn.recipients:
            return NO_TRANSACTION
        config = self.runtime.config
        refusal = (
            message_policy.check_header_count(txn.header_count, config.limits.max_headers)
            or message_policy.check_size(txn.size, config.milter.max_message_size)
            or message_policy.check_lines(*txn.lines_too_long)
        )
        if refusal is not None:
            return refusal
        return message_policy.check_identity(
            txn.snapshot,
            txn.connection,
            IdentityHeaders(
                txn.header_texts("From"),
                txn.header_texts("Sender"),
                txn.header_texts("DKIM-Signature"),
            ),
        )

    def _ensure_message_id(self, txn: Transaction, author: HeaderSender) -> None:
        if txn.header_values("Message-ID"):
            return
        value = message_policy.new_message_id(uuid.uuid4().hex, author.domain)
        self.addheader("Message-ID", value)
        txn.add_header("Message-ID", value.encode("ascii"))

    def _set_list_help(self, txn: Transaction, author: HeaderSender) -> None:
        """Exactly one List-Help, ours: the client's are removed (last first, so the indexes
        of the remaining ones do not move)."""
        present = len(txn.header_values("List-Help"))
        for index in range(present, 0, -1):
            self.chgheader("List-Help", index, "")
        txn.headers = [(n, v) for n, v in txn.headers if n.lower() != b"list-help"]
        value = message_policy.list_help_value(txn.snapshot.domains[author.domain].list_help)
        self.addheader("List-Help", value)
        txn.add_header("List-Help", value.encode("ascii"))

    def _mail_back(self, txn: Transaction, author: HeaderSender) -> MailBack:
        domain = txn.snapshot.domains[author.domain]
        back = mail_back(
            self.runtime.bounce_secret,
            txn.txn_id,
            domain,
            txn.connection,
            self.runtime.config.bounce.domain,
            relay_signs=self.runtime.relay_dkim is not None,
        )
        if back.bounce_domain and self.runtime.bounce_secret is None:
            log.error(
                "event=no_bounce_secret txn=%s domain=%s return_path=%s (the message keeps "
                "its envelope sender: put the bounce secret in [bounce] secret_file and "
                "restart the milter)",
                txn.txn_id,
                domain.domain,
                back.bounce_domain,
            )
        return back

    def _set_cfbl(self, txn: Transaction, back: MailBack) -> None:
        """The client's CFBL headers are removed (they would name an address the relay does
        not sign for); ours are added when the message has an aligned CFBL address."""
        for name in CFBL_HEADERS:
            for index in range(len(txn.header_values(name)), 0, -1):
                self.chgheader(name, index, "")
        wanted = {name.lower().encode("ascii") for name in CFBL_HEADERS}
        txn.headers = [(n, v) for n, v in txn.headers if n.lower() not in wanted]
        if back.cfbl_address is None or back.feedback_id is None:
            return
        for name, value in (
            (CFBL_ADDRESS, back.cfbl_address),
            (CFBL_FEEDBACK_ID, back.feedback_id),
        ):
            self.addheader(name, value)
            txn.add_header(name, value.encode("ascii"))

    def _set_return_path(self, back: MailBack) -> None:
        if back.envelope_sender is not None:
            self.chgfrom(f"<{back.envelope_sender}>")

    def _sign(self, txn: Transaction, author: HeaderSender, back: MailBack) -> list[str]:
        """The author's signatures, and the relay's own (d= its bounce domain) when the CFBL
        address is there: inserted first, so the author's end up above it, on top. Returns
        them in the order inserted (Transaction.captured reverses them)."""
        domain = txn.snapshot.domains[author.domain]
        keys = [(key.selector, key.signing_key) for key in domain.keys]
        now = time.time()
        relay_key = self.runtime.relay_dkim
        signatures = []
        if back.relay_signer and relay_key is not None:
            selector = self.runtime.config.bounce.dkim_selector
            signatures.append(
                sign(
                    txn.headers,
                    txn.body_hash,
                    domain=back.relay_signer,
                    selector=selector,
                    signing_key=relay_key,
                    now=now,
                )
            )
        signatures += sign_all(txn.headers, txn.body_hash, domain=domain.domain, keys=keys, now=now)
        for signature in signatures:
            self.addheader("DKIM-Signature", signature, 1)  # insheader: above every other
        return signatures

    def _capture(self, txn: Transaction, author: HeaderSender, signatures: list[str]) -> Verdict:
        """A sandbox connection's message: kept in PostgreSQL as the receiver would have got
        it, then discarded (the client gets 250, Postfix drops it). Nothing is billed; the
        recipients' rate units stay counted for the hour."""
        sandbox = self.runtime.sandbox
        if sandbox is None:
            return service_unavailable(LEDGER_SERVICE)
        captured = CapturedMessage(
            txn_id=txn.txn_id,
            queue_id=txn.queue_id,
            node=self.runtime.node,
            message_id=_first_message_id(txn),
            account_id=txn.account.id,
            connection_id=txn.connection.id,
            envelope_sender=txn.envelope_sender,
            header_from=author.address,
            recipients=list(txn.recipients),
            raw=txn.captured(signatures),
        )
        try:
            sandbox.capture(captured)
        except ServiceUnavailable as exc:
            log.warning("event=sandbox_unavailable txn=%s error=%r", txn.txn_id, str(exc))
            return service_unavailable(LEDGER_SERVICE)
        txn.members = []  # rate only, nothing held: nothing to commit or give back
        return Verdict.discard()

    def _record(self, txn: Transaction, author: HeaderSender) -> Verdict:
        """The ledger first (PostgreSQL, the source of truth), then the live balance."""
        accepted = AcceptedMessage(
            txn_id=txn.txn_id,
            queue_id=txn.queue_id,
            node=self.runtime.node,
            message_id=_first_message_id(txn),
            account_id=txn.account.id,
            connection_id=txn.connection.id,
            envelope_sender=txn.envelope_sender,
            header_from=author.address,
            size=txn.size,
            recipients=list(txn.recipients),
            accepted_at=self.runtime.clock.now(),
        )
        try:
            recorded = self.runtime.ledger.record(accepted)
        except ServiceUnavailable as exc:
            log.warning("event=postgres_unavailable txn=%s error=%r", txn.txn_id, str(exc))
            return service_unavailable(LEDGER_SERVICE)
        try:
            self.runtime.reservations.commit(
                txn.account.id, txn.members, recorded.quota_units, txn.period
            )
        except ServiceUnavailable as exc:
            # Recorded in PostgreSQL, so accepting is right; the held units expire by
            # themselves, and the live balance is high by this many until reloaded.
            log.warning(
                "event=balance_commit_failed txn=%s account=%d units=%d error=%r",
                txn.txn_id,
                txn.account.id,
                len(txn.members),
                str(exc),
            )
        txn.members = []
        return Verdict.accept()

    # -- the one place verdicts become milter replies -------------------------------------

    def _finish(self, verdict: Verdict) -> int:
        if verdict.action is Action.REJECT and self.txn is not None:
            self.runtime.refusals.count(self.txn.connection.id)
        self._end_transaction(verdict, release=verdict.refused)
        return self._apply(verdict)

    def _refuse(self, verdict: Verdict, mail_from: str) -> int:
        metrics.record_decision(verdict.label)
        log.info(
            "event=message %s",
            format_fields(
                queue_id=self.getsymval("{i}") or "-",
                sender=envelope_address(mail_from),
                verdict=verdict.label,
                reason=verdict.text,
            ),
        )
        return self._apply(verdict)

    def _apply(self, verdict: Verdict) -> int:
        if verdict.refused:
            self.setreply(verdict.smtp_code, verdict.enhanced_code, _reply_text(verdict.text))
        return _MILTER_CODES[verdict.action]

    def _end_transaction(self, verdict: Verdict | None, *, release: bool) -> None:
        """Log the message's one line, give back unrecorded reservations, forget it."""
        txn, self.txn = self.txn, None
        if txn is None:
            return
        if release and txn.members:
            try:
                self.runtime.reservations.release(txn.account.id, txn.connection.id, txn.members)
            except ServiceUnavailable as exc:
                log.warning(
                    "event=release_failed txn=%s error=%r (they expire by themselves)",
                    txn.txn_id,
                    str(exc),
                )
        metrics.record_decision(
            verdict.label if verdict else "abandoned", txn.account.id, txn.connection.name
        )
        log.info(
            "event=message %s",
            format_fields(
                queue_id=txn.queue_id or "-",
                connection=txn.connection.name,
                sender=txn.envelope_sender,
                rcpts=len(txn.recipients),
                refused_rcpts=txn.refused_recipients,
                size=txn.size,
                verdict=verdict.label if verdict else "abandoned",
                reason=verdict.text if verdict and verdict.refused else None,
                ms=f"{txn.elapsed_ms():.1f}",
                txn=str(txn.txn_id),
            ),
        )


def _first_message_id(txn: Transaction) -> str | None:
    """The message's Message-ID as recorded (the first, unfolded), or None."""
    message_ids = txn.header_values("Message-ID")
    return _unfold(message_ids[0]) if message_ids else None


def _unfold(value: bytes) -> str:
    """A queued header value as text: unfolded, trimmed, undecodable bytes replaced, cut at
    a NUL as Postfix cuts it (PostgreSQL text cannot hold one: the record would fail)."""
    return value.partition(b"\x00")[0].replace(b"\r\n", b"").decode("utf-8", "replace").strip()


def _reply_text(text: str) -> str:
    """SMTP reply text: one line of printable ASCII, '%' doubled for libmilter."""
    printable = "".join(c if " " <= c <= "~" else "?" for c in text)
    return printable.replace("%", "%%")
