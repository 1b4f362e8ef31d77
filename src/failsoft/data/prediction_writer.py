"""The prediction log's writer process: chunks in, lines on disk, on the other core.

The gateway's event loop is the one thread that serves; every microsecond
the log spends on it is taken from requests. So once the log runs in the
background, the gateway hands each batch of chunks (``prediction_packed``)
to this process over a pipe, and the process makes their lines (the input
digests and the lines of alike chunks), appends them to the segment with
``SegmentWriter`` and fsyncs, then answers. The gateway's worker thread
waits for that answer, as it waited for its own write before, so a batch
counts as written only once it is on disk.

Why a process and not a thread: a Python thread making lines holds the GIL,
and the event loop waits for it at every switch (``benchmarks/serve.py
--candidate assurance``: a writer thread cost more than the work it did).

Failures: a write the disk refuses is answered with its reason and the
gateway keeps the batch for its next turn, as before. If the process is gone
(killed, crashed) the gateway writes in its own process from then on and
logs it; the batch that was in flight is written again (at least once).
The process ignores SIGINT and SIGTERM — Ctrl-C and a stop reach the whole
process group, and the gateway must first hand over what it holds — and
ends when its input closes: at the gateway's close, or when the gateway dies.

    python -m failsoft.data.prediction_writer DIRECTORY OPTIONS_JSON
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from failsoft.data.prediction_packed import lines_of
from failsoft.data.prediction_segments import SegmentWriter, write_all

__all__ = ["WriterGone", "WriterProcess", "main"]

BATCH = struct.Struct("<II")  # chunks, bytes that follow (each chunk: its length, itself)
LENGTH = struct.Struct("<I")
ANSWER = struct.Struct("<BQI")  # 0 written / 1 refused, segments removed so far, reason's length
WRITTEN, REFUSED = 0, 1
SEGMENT_OPTIONS = ("segment_bytes", "segment_s", "max_age_s", "max_total_bytes", "fsync")
CLOSE_WITHIN_S = 30.0


class WriterGone(Exception):
    """The writer process ended, or cannot be reached."""


class WriterProcess:
    """The gateway's side: start the process, hand it batches, close it."""

    def __init__(self, directory: Path, options: Any) -> None:
        settings = {name: getattr(options, name) for name in SEGMENT_OPTIONS}
        # Started as the gateway's workers are: this interpreter, this environment.
        command = [sys.executable, "-m", __name__, str(directory), json.dumps(settings)]
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._to = self._process.stdin.fileno()
        self._from = self._process.stdout.fileno()
        self.removed_segments = 0

    @property
    def pid(self) -> int:
        return self._process.pid

    def write(self, chunks: list[bytes]) -> None:
        """Have ``chunks`` written and fsynced; OSError with the reason when the disk
        refused, WriterGone when the process is."""
        parts = [BATCH.pack(len(chunks), sum(LENGTH.size + len(c) for c in chunks))]
        for chunk in chunks:
            parts += (LENGTH.pack(len(chunk)), chunk)
        try:
            write_all(self._to, parts)
            answer = _read_exactly(self._from, ANSWER.size)
            if answer is None:
                raise WriterGone("the writer process ended")
            status, self.removed_segments, length = ANSWER.unpack(answer)
            reason = _read_exactly(self._from, length) if length else b""
        except OSError as error:  # a broken pipe: the process is gone
            raise WriterGone(str(error)) from None
        if status != WRITTEN:
            raise OSError((reason or b"the writer process refused").decode(errors="replace"))

    def close(self, within_s: float = CLOSE_WITHIN_S) -> None:
        """Close its input (it ends when it has read it all) and wait for it to end."""
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()
        try:
            self._process.wait(within_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes from ``fd``; None at the end of the input."""
    parts = []
    while size:
        part = os.read(fd, size)
        if not part:
            return None
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _chunks(body: bytes, count: int) -> list[bytes]:
    chunks = []
    at = 0
    for _ in range(count):
        (length,) = LENGTH.unpack_from(body, at)
        at += LENGTH.size
        chunks.append(body[at : at + length])
        at += length
    return chunks


def serve(directory: Path, options: Any, source: int, answers: int) -> None:
    """Write the batches read from ``source`` until it ends, answering each on
    ``answers``."""
    segments = SegmentWriter(directory, options)
    try:
        while (head := _read_exactly(source, BATCH.size)) is not None:
            count, size = BATCH.unpack(head)
            body = _read_exactly(source, size)
            if body is None:  # the gateway died mid-batch: it counts the batch as lost
                break
            reason = b""
            try:
                segments.append([lines_of(chunk) for chunk in _chunks(body, count)])
            except OSError as error:
                reason = f"cannot write: {error}".encode()
            except (ValueError, struct.error) as error:
                reason = f"a chunk could not be read: {error}".encode()
            status = REFUSED if reason else WRITTEN
            answer = ANSWER.pack(status, segments.removed_segments, len(reason))
            write_all(answers, [answer, reason])
    finally:
        segments.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.SIG_IGN)
    answers = os.dup(1)
    os.dup2(2, 1)  # a stray print must never corrupt the answers
    options = SimpleNamespace(**json.loads(args[1]))
    serve(Path(args[0]), options, 0, answers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
