"""How the store writes values that must hash the same everywhere.

Canonical JSON is sorted keys, no whitespace, UTF-8, no NaN or infinity
(what ``json.dumps`` makes of it; not RFC 8785: floats keep Python's repr).
Timestamps are UTC text with microseconds (``2024-05-01T12:00:00.000000Z``),
so they compare as strings, read the same on SQLite and PostgreSQL, and
round-trip through JSON backups byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any


def canonical_json(value: Any) -> bytes:
    """``value`` as canonical JSON bytes; ValueError/TypeError when it is not JSON."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_text(epoch_s: float) -> str:
    """A wall-clock time (seconds since the epoch) as fixed-width UTC text."""
    moment = datetime.fromtimestamp(epoch_s, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
