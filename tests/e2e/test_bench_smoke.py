"""The benchmark's checks fail loudly: a message missing at the sink, a broken DKIM signature
or any failure inside a run makes `python -m bench` exit non-zero (a figure is worthless
when the wrong number of messages went through). Uses the real smtp-sink; a few seconds."""

from __future__ import annotations

import base64
import shutil
import smtplib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import bench.__main__ as bench_main
from bench.checks import Signer, check_count, check_signed
from bench.procs import BenchFailure, wait_until
from bench.sink import SmtpSink

pytestmark = pytest.mark.e2e

DOMAIN = "smoke.bench.example"
SELECTOR = "smoke"


@pytest.fixture()
def sink() -> Iterator[SmtpSink]:
    # Outside pytest's 0700 tree: smtp-sink writes its dumps as user postfix.
    root = Path(tempfile.mkdtemp(prefix="txrelay-bench-smoke-"))
    root.chmod(0o755)
    server = SmtpSink(root)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root)


def _send(sink: SmtpSink, messages: list[bytes]) -> None:
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as smtp:
        for raw in messages:
            smtp.sendmail(f"shop@{DOMAIN}", ["rcpt@sink.bench.test"], raw)
    wait_until(lambda: sink.count() >= len(messages), 10, "dumps at the sink")


def _message(body: str) -> bytes:
    return (f"From: <shop@{DOMAIN}>\r\nTo: <rcpt@sink.bench.test>\r\nSubject: smoke\r\n"
            f"List-Help: <https://{DOMAIN}/help>\r\n\r\n{body}\r\n").encode()


def test_one_message_short_at_the_sink_fails_the_count(sink: SmtpSink, tmp_path: Path) -> None:
    _send(sink, [_message(f"message {n}") for n in range(3)])
    dumps = sink.collect(tmp_path / "collected")
    assert len(dumps) == 3
    check_count("smoke", sent=3, accepted=3, delivered=len(dumps), queued=0)
    with pytest.raises(BenchFailure, match="received 3 messages, expected 4"):
        check_count("smoke", sent=4, accepted=4, delivered=len(dumps), queued=0)
    with pytest.raises(BenchFailure, match="still in Postfix's queue"):
        check_count("smoke", sent=3, accepted=3, delivered=3, queued=1)


def test_a_delivered_message_whose_signature_breaks_fails_the_check(
        sink: SmtpSink, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    signer = Signer(DOMAIN, SELECTOR, public, list_help=True)
    raw = _message("signed body")
    signed = dkim.sign(raw, SELECTOR.encode(), DOMAIN.encode(), pem,
                       include_headers=[b"from", b"to", b"subject"]) + raw
    _send(sink, [signed])
    good = sink.collect(tmp_path / "good")
    assert check_signed("smoke", good, signer, sample=0) == 1
    _send(sink, [signed.replace(b"signed body", b"changed body")])
    bad = sink.collect(tmp_path / "bad")
    with pytest.raises(BenchFailure, match="does not verify"):
        check_signed("smoke", bad, signer, sample=0)


def test_a_failure_inside_the_run_exits_non_zero(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    def broken_stack(root: Path) -> None:
        raise BenchFailure("the sink received 9 messages, expected 10")

    monkeypatch.setattr(bench_main, "bench_stack", broken_stack)
    assert bench_main.main(["--quick", "--directory", str(tmp_path / "run")]) == 1
    assert "BENCH FAILED: the sink received 9 messages" in capsys.readouterr().err
