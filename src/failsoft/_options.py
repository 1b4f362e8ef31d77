"""The base of every options model: unknown keys rejected, immutable once built."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def validation_problems(
    error: ValidationError,
    location: Callable[[tuple[int | str, ...]], str] | None = None,
    root: str = "(top level)",
) -> list[str]:
    """One line per problem, each naming the key path: ``faults[0].kind: unknown key``."""
    problems = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        where = location(loc) if location else _dotted(loc) or root
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif "input" in item and not isinstance(item["input"], dict | list):
            shown = repr(item["input"])
            message += f" (got {shown[:60] + '...' if len(shown) > 60 else shown})"
        problems.append(f"{where}: {message}")
    return problems


def _dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(f"[{part}]" if isinstance(part, int) else str(part) for part in loc).replace(
        ".[", "["
    )
