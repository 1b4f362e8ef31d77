"""One place that holds artifact bytes: a local directory or any fsspec URL.

The layout is content-addressed: the bytes whose sha256 is ``d`` live at
``<location>/sha256/<d[:2]>/<d>``. A ``Location`` knows nothing about which
artifacts should exist or which copy is good; ``registry.ArtifactLocations``
decides that. What it guarantees:

- **Local directories** (a path, or ``file://``): a copy is written to a
  temporary name in the same directory (``.<digest>.<random>.tmp``), flushed
  and fsynced, and renamed over the final name only once the bytes written
  hash to the digest. A crash leaves at worst a temporary file, never a file
  under a digest's name with other bytes in it. ``stale_temporaries`` finds
  those leftovers.
- **Other filesystems** (``memory://``, ``s3://``, ``gs://`` ...) are written
  under the final name directly: object stores publish an object only when its
  upload completes, and renaming there is a copy. A filesystem that shows a
  half-written file (fsspec's ``memory://`` does, while it is open) is covered
  by the rule every reader follows: a copy is used only after its bytes hash
  to the digest. A write whose bytes do not hash to the digest is removed.

Methods raise ``FileNotFoundError`` for a missing copy and whatever the
filesystem raises otherwise; the registry turns both into reports. Blocking
I/O throughout: call it from a thread, not from the event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import fsspec  # type: ignore[import-untyped]
from fsspec.implementations.local import LocalFileSystem  # type: ignore[import-untyped]

__all__ = ["CHUNK_BYTES", "DigestMismatch", "Location", "StoredCopy", "check_sha256"]

CHUNK_BYTES = 1 << 20  # read, hash and write in 1 MiB pieces: a large artifact is never held whole
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TEMP = re.compile(r"\.([0-9a-f]{64})\.[0-9a-f]+\.tmp")


def check_sha256(digest: str) -> str:
    """The digest itself when it is 64 lowercase hex characters; ValueError otherwise.

    Every digest becomes part of a path, so none is used unchecked."""
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise ValueError(f"not a sha256 digest (64 lowercase hex characters): {digest!r}")
    return digest


class DigestMismatch(ValueError):
    """The bytes given to ``Location.write`` do not hash to the digest they were stored under."""


@dataclass(frozen=True, slots=True)
class StoredCopy:
    """A file in a location's layout, as listed (not yet verified)."""

    sha256: str
    size: int


class Location:
    """A directory (local path or fsspec URL) holding copies under the sha256 layout."""

    def __init__(self, url: str | os.PathLike[str]) -> None:
        text = os.fspath(url)
        if not text.strip():
            raise ValueError("an artifact location must not be empty")
        self.url = text
        if "://" in text:
            fs, root = fsspec.core.url_to_fs(text)
        else:
            fs, root = LocalFileSystem(), os.path.abspath(text)
        self._fs: Any = fs
        self.local = isinstance(fs, LocalFileSystem)
        root = str(root).rstrip("/")
        self.root = os.path.abspath(root) if self.local else root
        self._base = f"{self.root}/sha256"

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def path(self, digest: str) -> str:
        """Where the copy of ``digest`` lives in this location."""
        check_sha256(digest)
        return f"{self._base}/{digest[:2]}/{digest}"

    # -- reading ------------------------------------------------------------------

    def open(self, digest: str) -> IO[bytes]:
        """The stored copy, open for reading; ``FileNotFoundError`` when there is none."""
        path = self.path(digest)
        if self.local:
            return open(path, "rb")  # the caller closes it
        if not self._fs.isfile(path):
            raise FileNotFoundError(path)
        stream: IO[bytes] = self._fs.open(path, "rb")
        return stream

    def chunks(self, digest: str) -> Iterator[bytes]:
        """The stored copy in pieces of at most ``CHUNK_BYTES``."""
        with self.open(digest) as stream:
            while chunk := stream.read(CHUNK_BYTES):
                yield chunk

    def measure(self, digest: str) -> tuple[str, int]:
        """The sha256 and size of the stored copy, read in chunks."""
        hasher = hashlib.sha256()
        size = 0
        for chunk in self.chunks(digest):
            hasher.update(chunk)
            size += len(chunk)
        return hasher.hexdigest(), size

    def listing(self) -> tuple[list[StoredCopy], list[str]]:
        """Every copy stored in the layout, and the other files found there (strays:
        temporaries, names that are no digest, a digest under the wrong prefix)."""
        copies: list[StoredCopy] = []
        strays: list[str] = []
        for path, size in self._files():
            parent, _, name = path.rpartition("/")
            prefix = parent.rpartition("/")[2]
            in_place = parent == f"{self._base}/{prefix}" and prefix == name[:2]
            if in_place and _SHA256.fullmatch(name):
                copies.append(StoredCopy(name, size))
            else:
                strays.append(path)
        copies.sort(key=lambda copy: copy.sha256)
        strays.sort()
        return copies, strays

    def _files(self) -> Iterator[tuple[str, int]]:
        if self.local:
            if not os.path.isdir(self._base):
                return
            for directory, _, names in os.walk(self._base):
                for name in names:
                    path = os.path.join(directory, name)
                    with contextlib.suppress(FileNotFoundError):  # removed while listing
                        yield path.replace(os.sep, "/"), os.stat(path).st_size
            return
        if not self._fs.exists(self._base):
            return
        found: dict[str, dict[str, Any]] = self._fs.find(self._base, detail=True)
        absolute = self._base.startswith("/")  # memory:// paths are, s3:// ones are not
        for path, info in found.items():
            name = "/" + path.lstrip("/") if absolute else path
            yield name, int(info.get("size") or 0)

    def stale_temporaries(self, older_than_s: float, now: float) -> list[tuple[str, int]]:
        """Temporary files (local locations only) last written more than ``older_than_s``
        before ``now`` (wall-clock seconds): leftovers of writes that crashed."""
        if not self.local or not os.path.isdir(self._base):
            return []
        stale = []
        for directory, _, names in os.walk(self._base):
            for name in names:
                if not _TEMP.fullmatch(name):
                    continue
                path = os.path.join(directory, name)
                with contextlib.suppress(FileNotFoundError):
                    status = os.stat(path)
                    if now - status.st_mtime > older_than_s:
                        stale.append((path, status.st_size))
        return sorted(stale)

    # -- writing ------------------------------------------------------------------

    def write(self, digest: str, chunks: Iterable[bytes]) -> int:
        """Store ``chunks`` as the copy of ``digest``, replacing any copy there, and
        return its size. The bytes are hashed as they are written: when they do not
        hash to ``digest`` (the source changed while it was read) nothing is kept
        under the digest's name and ``DigestMismatch`` is raised."""
        path = self.path(digest)
        if self.local:
            return self._write_local(digest, path, chunks)
        parent = path.rpartition("/")[0]
        with contextlib.suppress(Exception):  # object stores have no directories
            self._fs.makedirs(parent, exist_ok=True)
        hasher = hashlib.sha256()
        size = 0
        try:
            with self._fs.open(path, "wb") as stream:
                for chunk in chunks:
                    stream.write(chunk)
                    hasher.update(chunk)
                    size += len(chunk)
        except BaseException:
            with contextlib.suppress(Exception):
                self._fs.rm(path)
            raise
        if hasher.hexdigest() != digest:
            with contextlib.suppress(Exception):
                self._fs.rm(path)
            raise DigestMismatch(_mismatch(digest, hasher.hexdigest(), size))
        return size

    def _write_local(self, digest: str, path: str, chunks: Iterable[bytes]) -> int:
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        temporary = os.path.join(directory, f".{digest}.{secrets.token_hex(6)}.tmp")
        # O_EXCL: never write into someone else's temporary; 0o666 & ~umask like any new file.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        hasher = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(descriptor, "wb") as stream:
                for chunk in chunks:
                    stream.write(chunk)
                    hasher.update(chunk)
                    size += len(chunk)
                stream.flush()
                os.fsync(stream.fileno())
            if hasher.hexdigest() != digest:
                raise DigestMismatch(_mismatch(digest, hasher.hexdigest(), size))
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _fsync_directory(directory)
        return size

    def remove(self, digest: str) -> None:
        """Delete the copy of ``digest``; ``FileNotFoundError`` when there is none."""
        self.remove_path(self.path(digest))

    def remove_path(self, path: str) -> None:
        if self.local:
            os.unlink(path)
        elif not self._fs.isfile(path):
            raise FileNotFoundError(path)
        else:
            self._fs.rm(path)


def _mismatch(digest: str, actual: str, size: int) -> str:
    return (
        f"the bytes written hash to {actual[:12]}… ({size} bytes), not {digest[:12]}…: "
        "the source changed while it was read"
    )


def _fsync_directory(directory: str) -> None:
    """Make the rename durable (POSIX); a filesystem that cannot is left as it is."""
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
