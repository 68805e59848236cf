"""Property-based message generation (hypothesis): random headers, values and bodies built
from the pieces that break mail software — control bytes, 8-bit, odd line ends, folding,
long lines, foreign and broken From: headers.

`message_strategy` is used directly by @given tests against the milter; `generated_cases`
draws a fixed, reproducible sample of it for the run through real Postfix.
"""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.corpus.malformed import EITHER, Case, Domains

LINE_ENDS = (b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n")
NAMES = ("Subject", "To", "Cc", "Reply-To", "X-Mailer", "Content-Type", "MIME-Version",
         "Message-ID", "Date", "List-Help", "Sender", "X-Custom", "Received", "References",
         "Content-Transfer-Encoding", "In-Reply-To", "Comments", "DKIM-Signature")
ATOMS = (b"a", b"order", b" ", b"\t", b"=?utf-8?q?=C3=A4?=", "ü".encode(), b"\xff", b"\x00",
         b"\x01", b"\x7f", b"<", b">", b"@", b",", b";", b":", b"\"", b"(", b")", b"\\",
         b"\r", b"\n", b"\r\n ", b"\r\n\t", b".", b"x" * 80, b"x" * 500)


def _value(max_atoms: int) -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(ATOMS), max_size=max_atoms).map(b"".join)


def _from_values(d: Domains) -> st.SearchStrategy[list[bytes]]:
    own, foreign = f"shop@{d.own}".encode(), f"shop@{d.foreign}".encode()
    good = st.sampled_from([own, b"Shop <" + own + b">", b"\"Shop, Inc.\" <" + own + b">",
                            b"=?utf-8?q?Sh=C3=B6p?= <" + own + b">"])
    bad = st.sampled_from([foreign, own + b", " + foreign, b"<" + own, b"Team: " + own + b";",
                           b"", b"shop", own + b" (" + foreign + b")", own + b"\x00"])
    mutated = st.tuples(good, _value(4)).map(lambda pair: pair[1] + pair[0])
    one = st.one_of(good, good, bad, mutated)
    return st.one_of(st.lists(one, min_size=1, max_size=1), st.lists(one, max_size=2))


def _body() -> st.SearchStrategy[bytes]:
    line = st.one_of(_value(12), st.binary(max_size=120),
                     st.integers(990, 1010).map(lambda n: b"y" * n))
    return st.lists(st.tuples(line, st.sampled_from(LINE_ENDS)), max_size=30).map(
        lambda lines: b"".join(text + end for text, end in lines))


@st.composite
def _message(draw: st.DrawFn, d: Domains) -> bytes:
    eol = draw(st.sampled_from(LINE_ENDS[:4]))
    fields = [(b"From", value) for value in draw(_from_values(d))]
    extra = draw(st.lists(st.tuples(st.sampled_from(NAMES).map(str.encode), _value(10)),
                          max_size=8))
    fields += extra
    order = draw(st.permutations(range(len(fields))))
    head = b"".join(fields[i][0] + b": " + fields[i][1] + eol for i in order)
    return head + eol + draw(_body())


def message_strategy(domains: Domains) -> st.SearchStrategy[bytes]:
    """Random messages for `domains`; each is EITHER (refused with a reason, or signed)."""
    return _message(domains)


def generated_cases(domains: Domains, count: int) -> list[Case]:
    """`count` messages drawn reproducibly (derandomised) from message_strategy."""
    drawn: list[bytes] = []

    @settings(max_examples=count, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), deadline=None)
    @given(message_strategy(domains))
    def collect(data: bytes) -> None:
        drawn.append(data)

    collect()
    unique = list(dict.fromkeys(drawn))
    return [Case(f"generated-{index}", data, EITHER) for index, data in enumerate(unique)]
