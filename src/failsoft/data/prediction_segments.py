"""The prediction log's files: segments appended to, rotated by size and age, and removed
by age and by the total size of the folder.

One ``SegmentWriter`` appends at a time: the log's writer process
(``prediction_writer``) while the gateway serves, the gateway itself at a
stop or when that process is gone. Each names its segments with its own pid,
so two never share a file.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["IOV_MAX", "SEGMENT_PREFIX", "SEGMENT_SUFFIX", "SegmentWriter", "segment_files"]

SEGMENT_PREFIX = "predictions-"
SEGMENT_SUFFIX = ".jsonl"
IOV_MAX = 1024  # buffers one writev takes (the POSIX minimum; Linux allows exactly this)
RETENTION_EVERY_S = 30.0


def segment_files(directory: Path) -> list[Path]:
    """The segment files, oldest first (their names sort by start time)."""
    try:
        names = sorted(
            name
            for name in os.listdir(directory)
            if name.startswith(SEGMENT_PREFIX) and name.endswith(SEGMENT_SUFFIX)
        )
    except OSError:
        return []
    return [directory / name for name in names]


def write_all(fd: int, chunks: list[bytes]) -> None:
    """Write ``chunks`` to ``fd`` in order, in as few system calls as the system allows
    (no joined copy of the batch)."""
    views = [memoryview(chunk) for chunk in chunks if chunk]
    while views:
        written = os.writev(fd, views[:IOV_MAX])
        done = 0
        while done < len(views) and written >= len(views[done]):
            written -= len(views[done])
            done += 1
        del views[:done]
        if written:  # a short write ends inside a chunk
            views[0] = views[0][written:]


class SegmentWriter:
    """Appends chunks of lines to the active segment (``fsync`` after each append when
    asked), rotating and removing segments as the options say."""

    def __init__(
        self, directory: Path, options: Any, wall: Callable[[], float] = time.time
    ) -> None:
        self.directory = directory
        self.options = options  # segment_bytes, segment_s, max_age_s, max_total_bytes, fsync
        self._wall = wall
        self._segment: BinaryIO | None = None
        self._segment_path: Path | None = None
        self._segment_bytes = 0
        self._segment_started = 0.0
        self._segment_seq = 0
        self._last_retention = 0.0
        self.removed_segments = 0

    def append(self, chunks: list[bytes]) -> None:
        """Write ``chunks`` (whole lines) to the active segment; OSError when the disk
        refuses (the segment is closed: the next append opens a new one)."""
        size = sum(map(len, chunks))
        try:
            self._rotate_if_due(size)
            assert self._segment is not None
            if size:
                write_all(self._segment.fileno(), chunks)
                if self.options.fsync:
                    os.fsync(self._segment.fileno())
        except OSError:
            self.close()
            raise
        self._segment_bytes += size
        now = self._wall()
        if now - self._last_retention >= RETENTION_EVERY_S:
            self._last_retention = now
            self.retention()

    def close(self) -> None:
        if self._segment is not None:
            with contextlib.suppress(OSError):
                self._segment.close()
        self._segment = None

    def _rotate_if_due(self, adding: int) -> None:
        now = self._wall()
        if self._segment is not None and (
            self._segment_bytes + adding > self.options.segment_bytes
            or now - self._segment_started >= self.options.segment_s
        ):
            self.close()
            self.retention()
        if self._segment is None:
            self._segment_seq += 1
            name = f"{SEGMENT_PREFIX}{int(now * 1000):013d}-{os.getpid()}-{self._segment_seq:05d}"
            self._segment_path = self.directory / f"{name}{SEGMENT_SUFFIX}"
            self._segment = self._segment_path.open("ab", buffering=0)
            self._segment_bytes = 0
            self._segment_started = now

    def retention(self) -> None:
        """Remove closed segments older than max_age_s, then the oldest beyond max_total_bytes."""
        now = self._wall()
        files = [path for path in segment_files(self.directory) if path != self._segment_path]
        sizes: dict[Path, int] = {}
        for path in files:
            try:
                stat = path.stat()
            except OSError:
                continue
            if now - stat.st_mtime > self.options.max_age_s:
                self._remove(path)
            else:
                sizes[path] = stat.st_size
        total = sum(sizes.values()) + self._segment_bytes
        for path in sizes:  # oldest first
            if total <= self.options.max_total_bytes:
                break
            total -= sizes[path]
            self._remove(path)

    def _remove(self, path: Path) -> None:
        try:
            path.unlink()
        except OSError:
            return
        self.removed_segments += 1
