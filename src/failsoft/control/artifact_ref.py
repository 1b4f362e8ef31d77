"""How a configuration names an artifact: ``iris@v3`` or its sha256.

A leaf module (no I/O, no fsspec), so that the configuration can parse
``artifact:`` references without loading the registry::

    ArtifactRef.parse("iris@v3")            # name and version, resolved by the control store
    ArtifactRef.parse("9f86d081…")          # 64 hex characters: the content itself
    ArtifactRef.parse("sha256:9f86d081…")   # the same, with its algorithm spelled out

A digest is pinned: it names the bytes, so no later push can change what it
means. ``name@version`` is resolved to a digest through the store's artifact
rows when a revision is compiled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["ARTIFACT_KINDS", "ArtifactKind", "ArtifactRef", "ArtifactRefError"]

ArtifactKind = Literal["onnx", "sklearn", "python", "profile"]
"""What the bytes are, so that the right backend loads them (the configuration's ``backend``);
``profile``: a reference profile pushed beside a model (``model push --profile``)."""
ARTIFACT_KINDS: tuple[str, ...] = ArtifactKind.__args__  # type: ignore[attr-defined]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_HEX = re.compile(r"[0-9a-fA-F]{64}")
_FORMS = "write name@version (iris@v3) or a sha256 (64 hex characters, optionally sha256:…)"


class ArtifactRefError(ValueError):
    """A reference that is neither ``name@version`` nor a sha256; the message says why.

    A ValueError, so that a pydantic validator reports it at the key's path."""


@dataclass(frozen=True, slots=True)
class ArtifactRef:
    """Exactly one of ``sha256`` or (``name``, ``version``) is set."""

    name: str | None = None
    version: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if self.sha256 is not None:
            if self.name is not None or self.version is not None:
                raise ArtifactRefError("a reference is a sha256 or name@version, not both")
            if not _HEX.fullmatch(self.sha256) or self.sha256 != self.sha256.lower():
                raise ArtifactRefError(f"not a lowercase sha256 digest: {self.sha256!r}")
        elif self.name is None or self.version is None:
            raise ArtifactRefError(f"a reference needs a name and a version; {_FORMS}")
        else:
            _check_part("name", self.name, f"{self.name}@{self.version}")
            _check_part("version", self.version, f"{self.name}@{self.version}")

    @classmethod
    def parse(cls, text: str) -> ArtifactRef:
        """``name@version``, a 64-hex sha256 or ``sha256:<hex>``; ArtifactRefError otherwise."""
        if not isinstance(text, str):
            raise ArtifactRefError(f"an artifact reference is text, got {type(text).__name__}")
        given = text.strip()
        if not given:
            raise ArtifactRefError(f"empty artifact reference; {_FORMS}")
        if "@" in given:
            name, _, version = given.partition("@")
            if not name:
                raise ArtifactRefError(f"{text!r} has no name before '@'; {_FORMS}")
            if not version:
                raise ArtifactRefError(f"{text!r} has no version after '@'; {_FORMS}")
            if "@" in version:
                raise ArtifactRefError(f"{text!r} has more than one '@'; {_FORMS}")
            return cls(name=name, version=version)
        digest = given.removeprefix("sha256:")
        if _HEX.fullmatch(digest):
            return cls(sha256=digest.lower())
        if digest is not given or _looks_like_hex(digest):
            raise ArtifactRefError(
                f"{text!r} is not a sha256 digest: it needs exactly 64 hex characters "
                f"(0-9, a-f), got {len(digest)} characters"
                + ("" if re.fullmatch(r"[0-9a-fA-F]*", digest) else " with non-hex ones")
            )
        raise ArtifactRefError(f"{text!r} has no version; {_FORMS}")

    @property
    def pinned(self) -> bool:
        """True when the reference is a digest, which no push can change."""
        return self.sha256 is not None

    def __str__(self) -> str:
        return self.sha256 if self.sha256 is not None else f"{self.name}@{self.version}"


def _check_part(what: str, value: str, whole: str) -> None:
    if not _NAME.fullmatch(value):
        raise ArtifactRefError(
            f"{whole!r}: the {what} {value!r} must start with a letter or digit and hold only "
            "letters, digits, '_', '.' and '-' (at most 128 characters)"
        )


def _looks_like_hex(text: str) -> bool:
    """Long enough and hex enough that the author meant a digest, not a bare name."""
    return len(text) >= 32 and sum(c in "0123456789abcdefABCDEF" for c in text) >= len(text) - 2
