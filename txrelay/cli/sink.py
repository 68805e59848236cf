"""`txrelay sink`: a capture SMTP server writing a Maildir (for the demo and the tests)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("sink")
@click.option(
    "--listen",
    default="127.0.0.1:2525",
    show_default=True,
    metavar="HOST:PORT",
    help="Address to listen on.",
)
@click.option(
    "--maildir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Maildir to store messages in (created if missing).",
)
@click.option(
    "--reply-rule",
    "reply_rules",
    multiple=True,
    metavar="PATTERN=CODE",
    help="Answer recipients matching the glob PATTERN with CODE at RCPT, e.g. "
    "'defer*@*=451' or 'x@*=550 5.1.1 no such user'. Repeatable; checked "
    "before the default rules.",
)
@click.option(
    "--no-default-rules",
    is_flag=True,
    help="Accept defer-*@ and bounce-*@ recipients too (by default they get 451 4.2.0 "
    "and 550 5.1.1).",
)
def sink(listen: str, maildir: Path, reply_rules: tuple[str, ...], no_default_rules: bool) -> None:
    """Accept mail on HOST:PORT and store it in a Maildir, envelope in X-Sink-* headers.

    One log line per message (its Maildir key, envelope and Message-ID, so a message is found
    from the log); stops on SIGTERM. Not a mail server: for the demo and tests.

    \b
    Example:
      txrelay sink --maildir /tmp/sink
      txrelay sink --listen 127.0.0.1:2526 --maildir /tmp/sink --reply-rule 'full@*=452'
    """
    # Imported here: aiosmtpd is not worth loading for every other txrelay command.
    from txrelay.sink import DEFAULT_RULES, parse_listen, parse_reply_rule, run_sink

    host, port = parse_listen(listen)
    rules = [parse_reply_rule(rule) for rule in reply_rules]
    if not no_default_rules:
        rules.extend(DEFAULT_RULES)
    run_sink(host, port, maildir, rules)
