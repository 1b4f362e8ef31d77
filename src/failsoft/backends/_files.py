"""Reading model files, refusing any whose content does not match its pin."""

from __future__ import annotations

import hashlib
from pathlib import Path

from failsoft.errors import BackendLoadError


def read_pinned(path: Path, sha256: str | None) -> bytes:
    """The file's bytes, refused unless they match the pinned digest (when pinned).

    Callers load from the returned bytes, never from the path again, so the
    file checked is the file loaded.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BackendLoadError(f"cannot read model file {path}: {error.strerror}") from None
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256.lower():
            raise BackendLoadError(
                f"{path}: sha256 is {digest}, but the configuration pins {sha256.lower()}"
            )
    return data
