"""Where the tracker reads Postfix's log: [tracker] source, auto detection, journal entries
turned into the log lines the parser reads (no services)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from txrelay.config import TrackerConfig, load_config
from txrelay.errors import ConfigError
from txrelay.policy import logline
from txrelay.tracker import journal
from txrelay.tracker.sources import Postconf, SourceChoice, choose_source


def postconf_of(**values: str) -> Postconf:
    """postconf -h NAME answering from `values` (None: not set, as postconf's empty)."""
    return values.get


def choose(tracker: TrackerConfig, *, postconf: Postconf | None = None,
           syslog_files: Sequence[Path] = (), journald: bool = False) -> SourceChoice:
    return choose_source(tracker, postconf=postconf or postconf_of(),
                         syslog_files=syslog_files, journal_available=lambda: journald)


def test_an_explicit_log_path_keeps_meaning_that_file_even_with_a_journal() -> None:
    choice = choose(TrackerConfig(log_path="/var/log/txrelay/postfix.log"),
                    postconf=postconf_of(maillog_file="/var/log/other.log"), journald=True)
    assert (choice.kind, choice.log_path) == ("file", Path("/var/log/txrelay/postfix.log"))
    assert choice.reason == "[tracker] log_path is set"


def test_auto_takes_postfixs_maillog_file_first(tmp_path: Path) -> None:
    syslog = tmp_path / "mail.log"
    syslog.write_text("")
    choice = choose(TrackerConfig(), postconf=postconf_of(maillog_file="/var/log/postfix.log"),
                    syslog_files=[syslog], journald=True)
    assert (choice.kind, choice.log_path) == ("file", Path("/var/log/postfix.log"))
    assert "maillog_file is /var/log/postfix.log" in choice.reason


def test_auto_takes_the_syslog_mail_file_when_postfix_has_no_maillog_file(
        tmp_path: Path) -> None:
    syslog = tmp_path / "mail.log"
    syslog.write_text("")
    choice = choose(TrackerConfig(), syslog_files=[tmp_path / "maillog", syslog],
                    journald=True)
    assert (choice.kind, choice.log_path) == ("file", syslog)
    assert f"syslog writes {syslog}" in choice.reason


def test_auto_takes_the_journal_without_maillog_file_and_syslog_file(tmp_path: Path) -> None:
    postconf = postconf_of(syslog_name="postfix-txrelay")
    choice = choose(TrackerConfig(), postconf=postconf,
                    syslog_files=[tmp_path / "mail.log"], journald=True)
    assert (choice.kind, choice.identifier) == ("journal", "postfix-txrelay")
    assert "systemd-journald runs" in choice.reason
    assert isinstance(choice.open(2.0), journal.JournalReader)


def test_auto_without_any_log_says_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        choose(TrackerConfig(), syslog_files=[tmp_path / "mail.log"], journald=False)
    message = str(raised.value)
    assert "\n" not in message
    assert "no maillog_file" in message and "set [tracker] source and log_path" in message


def test_source_file_without_log_path_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"source = \"file\" needs \[tracker\] log_path"):
        choose(TrackerConfig(source="file"))


def test_source_journal_where_journald_does_not_run_names_the_setting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal, "JOURNALD_SOCKET", tmp_path / "socket")
    with pytest.raises(ConfigError) as raised:
        choose(TrackerConfig(source="journal"))
    assert str(raised.value).startswith('[tracker] source = "journal" but systemd-journald')
    assert 'set [tracker] source = "file" and log_path' in str(raised.value)


def test_journal_identifier_set_wins_over_postfixs_syslog_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    socket = tmp_path / "socket"
    socket.write_text("")
    monkeypatch.setattr(journal, "JOURNALD_SOCKET", socket)
    choice = choose(TrackerConfig(source="journal", journal_identifier="postfix-out"),
                    postconf=postconf_of(syslog_name="postfix"))
    assert choice.identifier == "postfix-out"


def test_unknown_source_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "txrelay.toml"
    path.write_text('[tracker]\nsource = "syslog"\n')
    with pytest.raises(ConfigError, match=r"'tracker\.source' = 'syslog' is not one of auto, "
                                          r"file, journal"):
        load_config(path, environ={})


def entry(identifier: str, message: object, **extra: object) -> dict[str, object]:
    return {"__CURSOR": "s=1;i=2", "__REALTIME_TIMESTAMP": "1796398464317382",
            "SYSLOG_IDENTIFIER": identifier, "SYSLOG_PID": "4242", "_HOSTNAME": "relay1",
            "MESSAGE": message, **extra}


def test_a_journal_entry_reads_as_the_syslog_line_of_the_same_delivery() -> None:
    line = journal.entry_line(entry(
        "postfix/smtp", "4Qx1yZ2abc: to=<a@rcpt.example>, relay=sink[127.0.0.1]:25, "
        "delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=sent (250 ok)"))
    assert line.startswith("2026-12-04T15:34:24.317382+00:00 relay1 postfix/smtp[4242]: ")
    event = logline.parse_line(line)
    assert isinstance(event, logline.Delivery)
    assert event.queue_id == "4Qx1yZ2abc"
    assert [c.outcome for c in event.candidates] == [logline.Outcome.DELIVERED]


def test_a_message_that_is_not_utf8_comes_as_bytes_and_is_still_a_line() -> None:
    raw = list("4Qx1yZ2abc: removed \xff".encode("latin-1"))
    line = journal.entry_line(entry("postfix/qmgr", raw, SYSLOG_PID=None, _PID="7"))
    assert line.endswith("postfix/qmgr[7]: 4Qx1yZ2abc: removed \ufffd")


@pytest.mark.parametrize(("identifier", "postfix"), [
    ("postfix/qmgr", True), ("postfix/submission/smtpd", True),
    ("postfix-txrelay/smtp", False), ("postfix", False), ("sshd", False)])
def test_only_the_instances_own_entries_are_postfixs(identifier: str, postfix: bool) -> None:
    assert journal.is_postfix_entry(entry(identifier, "x"), "postfix") is postfix


def test_a_postfix_config_directory_postconf_cannot_read_names_the_setting(
        tmp_path: Path) -> None:
    missing = tmp_path / "postfix-nowhere"
    with pytest.raises(ConfigError) as raised:
        choose_source(TrackerConfig(postfix_config_directory=str(missing)))
    message = str(raised.value)
    assert message.startswith(f"[tracker] postfix_config_directory = '{missing}': postconf "
                              "cannot read it (")
    assert "\n" not in message and "holds the Postfix instance's main.cf" in message


def test_postconf_of_a_real_config_directory_answers_for_auto(tmp_path: Path) -> None:
    (tmp_path / "main.cf").write_text(f"maillog_file = {tmp_path}/postfix.log\n"
                                      "syslog_name = postfix-out\n")
    choice = choose_source(TrackerConfig(postfix_config_directory=str(tmp_path)))
    assert (choice.kind, choice.log_path) == ("file", tmp_path / "postfix.log")
    assert choice.identifier == "postfix-out"
