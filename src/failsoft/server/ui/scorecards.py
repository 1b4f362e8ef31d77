"""Drill scorecards for the console: the ``<name>.json`` and ``<name>.png`` that
``failsoft drill run --out DIR`` writes, read from one configured directory.

Only names listed there are served (no path from a request reaches the file
system), at most ``LIMIT`` newest, each file read with a size bound.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

LIMIT = 50
JSON_LIMIT = 2 * 1024 * 1024
PNG_LIMIT = 8 * 1024 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class Card:
    name: str
    passed: bool | None  # None: the file could not be read as a scorecard
    requests: int | None
    checks: list[dict[str, Any]]
    chart: bool


def read_cards(folder: Path) -> list[Card]:
    """The newest scorecards in ``folder`` (a blocking call: run it on a thread)."""
    try:
        found = [p for p in folder.glob("*.json") if p.is_file() and _NAME.match(p.stem)]
    except OSError:
        return []
    found.sort(key=_mtime, reverse=True)
    return [_card(path) for path in found[:LIMIT]]


def read_chart(folder: Path, name: str) -> bytes | None:
    """The chart of scorecard ``name``, if that scorecard is listed and has one."""
    if not _NAME.match(name) or name not in {card.name for card in read_cards(folder)}:
        return None
    path = folder / f"{name}.png"
    try:
        if not path.is_file() or path.stat().st_size > PNG_LIMIT:
            return None
        return path.read_bytes()
    except OSError:
        return None


def _card(path: Path) -> Card:
    chart = path.with_suffix(".png").is_file()
    try:
        if path.stat().st_size > JSON_LIMIT:
            raise ValueError("too large")
        data = orjson.loads(path.read_bytes())
        checks = [
            {key: str(check.get(key, "")) for key in ("name", "measured", "expected")}
            | {"ok": bool(check.get("ok"))}
            for check in data.get("checks", [])
            if isinstance(check, dict)
        ]
        requests = data.get("requests")
        return Card(
            path.stem,
            bool(data.get("passed")),
            requests if isinstance(requests, int) else None,
            checks,
            chart,
        )
    except (OSError, ValueError, AttributeError, orjson.JSONDecodeError):
        return Card(path.stem, None, None, [], chart)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
