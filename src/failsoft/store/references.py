"""The artifacts a configuration references, wherever an ``artifact:`` key appears.

A configuration names a stored artifact by ``NAME@VERSION`` (resolved through
the registry) or by content (a sha256), under any key called ``artifact`` at
any depth; ``failsoft.control.artifact_ref.ArtifactRef`` parses each one. The
registry's garbage collector keeps every artifact a stored revision
references this way (``Store.referenced_sha256``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from failsoft.control.artifact_ref import ArtifactRef, ArtifactRefError

__all__ = ["artifact_references"]


def artifact_references(config: Any, *, strict: bool = True) -> set[ArtifactRef]:
    """Every ``artifact`` value in a configuration (dicts and lists, at any depth).

    ``strict`` raises ArtifactRefError (a ValueError) naming the path of a
    malformed reference; otherwise it is skipped: it cannot name a stored
    artifact anyway.
    """
    found: set[ArtifactRef] = set()

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                where = f"{path}.{key}" if path else str(key)
                if key == "artifact" and isinstance(value, str):
                    try:
                        found.add(ArtifactRef.parse(value))
                    except ArtifactRefError as error:
                        if strict:
                            raise ArtifactRefError(f"{where}: {error}") from None
                else:
                    walk(value, where)
        elif isinstance(node, list | tuple):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")

    walk(config, "")
    return found
