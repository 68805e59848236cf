"""Verifies the DKIM signature of a delivered message against the key txrelay stores.

The demo's domains are not in public DNS, so the TXT record a receiver would fetch is built
from the DKIM key in txrelay's database (the same record `txrelay domain dns` prints).
Usage: verify_dkim.py --config /etc/txrelay/txrelay.toml MESSAGE_FILE
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import dkim

from txrelay.config import load_config
from txrelay.store import database

SELECT_RECORD = """
SELECT k.algorithm, k.public_key_b64
  FROM sending_domains d JOIN dkim_keys k ON k.id = d.dkim_key_id
 WHERE d.domain = %s AND k.selector = %s
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("message", type=Path)
    args = parser.parse_args()
    config = load_config(Path(args.config), required=True)
    conn = database.connect(config.database)

    def dns_txt(name: bytes, timeout: int = 5) -> bytes | None:
        match = re.fullmatch(rb"([^.]+(?:\.[^.]+)*)\._domainkey\.(.+?)\.?", name)
        if not match:
            return None
        row = conn.execute(SELECT_RECORD, (match.group(2).decode(),
                                           match.group(1).decode())).fetchone()
        if row is None:
            return None
        return f"v=DKIM1; k={row['algorithm']}; p={row['public_key_b64']}".encode()

    raw = args.message.read_bytes()
    ok = dkim.verify(raw, dnsfunc=dns_txt)
    signature = re.search(rb"^DKIM-Signature:(.*?)(?=^\S)", raw, re.S | re.M | re.I)
    signed = re.search(rb"h=([^;]+)", signature.group(1)) if signature else None
    headers = re.sub(rb"\s+", b"", signed.group(1)).decode() if signed else "?"
    print(f"DKIM signature {'VALID' if ok else 'INVALID'}; signed headers: {headers}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
