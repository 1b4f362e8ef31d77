"""Artifact references inside a configuration: ``artifact: iris@v3`` or a sha256.

A configuration names a stored artifact by ``NAME@VERSION`` (resolved through
the registry) or by content (``sha256:HEX`` or 64 bare hex digits), under
any key called ``artifact`` at any depth. The registry's garbage collector
keeps every artifact that a stored revision references this way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ArtifactRef", "artifact_references", "parse_artifact_ref"]

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_SHA256 = re.compile(r"^(?:sha256:)?([0-9a-fA-F]{64})$")


@dataclass(frozen=True, order=True)
class ArtifactRef:
    """Either ``name`` and ``version``, or ``sha256`` (lower-case hex)."""

    name: str | None = None
    version: str | None = None
    sha256: str | None = None

    def __str__(self) -> str:
        return f"sha256:{self.sha256}" if self.sha256 else f"{self.name}@{self.version}"


def parse_artifact_ref(text: str) -> ArtifactRef:
    """``iris@v3``, ``sha256:HEX`` or ``HEX``; ValueError saying what is accepted otherwise."""
    digest = _SHA256.match(text.strip()) if isinstance(text, str) else None
    if digest:
        return ArtifactRef(sha256=digest.group(1).lower())
    name, at, version = text.partition("@") if isinstance(text, str) else ("", "", "")
    if at and NAME.match(name) and NAME.match(version):
        return ArtifactRef(name=name, version=version)
    raise ValueError(f"{text!r} is not an artifact reference (NAME@VERSION or sha256:HEX)")


def artifact_references(config: Any, *, strict: bool = True) -> set[ArtifactRef]:
    """Every ``artifact`` value in a configuration (dicts and lists, at any depth).

    ``strict`` raises ValueError naming the path of a malformed reference;
    otherwise it is skipped (it cannot name a stored artifact anyway).
    """
    found: set[ArtifactRef] = set()

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                where = f"{path}.{key}" if path else str(key)
                if key == "artifact" and isinstance(value, str):
                    try:
                        found.add(parse_artifact_ref(value))
                    except ValueError as error:
                        if strict:
                            raise ValueError(f"{where}: {error}") from None
                else:
                    walk(value, where)
        elif isinstance(node, list | tuple):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")

    walk(config, "")
    return found
