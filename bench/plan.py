"""How much each scenario sends: the full run (medians of 3) and --quick (harness check)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    runs: int
    warmup: int
    small: int  # 10 KB messages per target and run
    large: int  # 1 MB messages
    medium: int  # 100 KB messages (EOM latency)
    submission_clients: int  # concurrent clients, one STARTTLS + AUTH session per message
    submission_rounds: int  # sessions each of them opens
    submission_sessions: int  # session reuse: concurrent sessions ...
    submission_per_session: int  # ... of this many messages each
    multi_rcpt_messages: int  # messages per recipient count (10 and 50 recipients each)
    big_count: int  # concurrent 30 MB messages
    big_small_sessions: int
    big_small_per_session: int
    verify_sample: int  # DKIM-verified messages per scenario (0 = all)
    nodes_messages: int  # 10 KB messages through one node, then through two


FULL = Plan(runs=3, warmup=30, small=1000, large=100, medium=400, submission_clients=10,
            submission_rounds=40, submission_sessions=20, submission_per_session=20,
            multi_rcpt_messages=200, big_count=10, big_small_sessions=2,
            big_small_per_session=40, verify_sample=200, nodes_messages=1000)
QUICK = Plan(runs=1, warmup=10, small=200, large=20, medium=100, submission_clients=5,
             submission_rounds=8, submission_sessions=5, submission_per_session=4,
             multi_rcpt_messages=40, big_count=2, big_small_sessions=2,
             big_small_per_session=10, verify_sample=50, nodes_messages=200)

SMALL_SIZE = 10_000
MEDIUM_SIZE = 100_000
LARGE_SIZE = 1_000_000
BIG_SIZE = 30_000_000
RECIPIENT_COUNTS = (10, 50)  # the multi-recipient scenarios (50: Postfix's per-delivery limit)
