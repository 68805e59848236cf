"""Formats the milter's structured log lines: key=value, values quoted when they need it."""

from __future__ import annotations

from typing import Any


def format_fields(**fields: Any) -> str:
    """key=value pairs in the given order; None values are left out."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        text = str(value)
        if not text or any(c.isspace() or c in '"=\\' for c in text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={_printable(text)}")
    return " ".join(parts)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
