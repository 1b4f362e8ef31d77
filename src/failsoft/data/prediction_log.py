"""The prediction log: every answer (or a sampled share), written off the request path.

The request path does one thing: append a ``Pending`` (references only) to a
bounded buffer. When the buffer is full the record is dropped and counted —
serving never waits for the disk. A task on the event loop (``start``) wakes
as soon as 64 items wait and makes them into one chunk (``prediction_lines``:
alike answers packed column by column, any other encoded as JSON lines),
with a turn of the loop between chunks; every ``flush_interval_s`` (or when
a batch is full) a worker thread hands the chunks to the writer process
(``prediction_writer``), which makes the packed chunks' lines, appends them to
the active segment (``prediction_segments``) with one ``writev`` and fsyncs
it. A log never started, a stop, and a gateway whose writer process is gone
write in this process instead.

Why this shape (each measured with ``benchmarks/serve.py --candidate
assurance`` on 2-core virtual machines): a Python writer thread of its own
slowed the event loop far beyond the writer's own work (GIL hand-offs), so
the records are made on the loop and what costs per record — input digests,
lines — is done in another process. Records made soon after their requests,
rather than a batch every half second, let go of the requests' objects
within milliseconds. Chunks rather than a bytes object per line: thousands
of lines held until the write filled fresh allocator arenas, paid for in
page faults at each batch. The state file is written at the first write and
at close only: its rename at every batch made the file system flush it each
time.

Delivery is at-least-once on a clean stop: ``close`` (SIGTERM, Ctrl-C) drains
the buffer before the process exits. A crash loses what was not yet written
— at most ``buffer_records``, in practice under ``flush_interval_s`` of
traffic — and that is counted: the request path counts each accepted record,
and the writer each written one, in a memory-mapped file (``Tally``). The
page cache keeps those counts when the process dies (SIGKILL, the OOM
killer, a segfault), so the next start knows exactly how many records were
lost, logs it and reports it (``failsoft_prediction_log_lost_at_crash``).
Only a power loss can take the last counts with it.

Attempts: the pipeline emits events for failed attempts and fallback tiers;
``observe`` files them under the request id of the current request (a
context variable every task of the request inherits), and ``record`` takes
them with the prediction.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import mmap
import operator
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from failsoft.data.doorbell import Doorbell
from failsoft.data.prediction_index import Predicted
from failsoft.data.prediction_lines import ChunkEncoder, uniform
from failsoft.data.prediction_options import PredictionLogOptions
from failsoft.data.prediction_packed import count_of, lines_of
from failsoft.data.prediction_record import TRAIL, Pending, RecordMaker
from failsoft.data.prediction_segments import SegmentWriter, segment_files
from failsoft.data.prediction_writer import WriterGone, WriterProcess
from failsoft.observe.events import Event, EventBus
from failsoft.observe.logging import request_id_var
from failsoft.pipeline.fallback import FallbackTierFailed, FallbackUsed
from failsoft.pipeline.version import AttemptFailed, PoisonDetected, RetryDenied
from failsoft.waiting import wait_at_most

__all__ = ["PredictionLog", "find_records", "segment_files"]

log = logging.getLogger("failsoft.predictions")

STATE_FILE = "predictions.state.json"
TALLY_FILE = "predictions.tally"
YIELD_EVERY = 64  # records made between two turns of the event loop (about 0.3 ms)
MAX_CONFIGS = 8
STOP_WITHIN_S = 30.0  # for the writer's last batch at a stop
MAX_TRAILS = 10_000  # requests with events not yet taken by ``record``
TRAIL_EVENTS = (AttemptFailed, PoisonDetected, RetryDenied, FallbackTierFailed, FallbackUsed)
Consumer = Callable[[Predicted], None]
ANSWER = (7, 3, 4, 8, 9)  # a Pending's configuration, model, asked, served version, served by
ANSWERED_BY = operator.itemgetter(*ANSWER)
ANSWER_FIELDS = tuple(map(operator.itemgetter, ANSWER))


def _answers(items: list[Pending]) -> set[tuple[Any, ...]]:
    """The distinct ``ANSWERED_BY`` of ``items``. Nearly always one: checked field by field
    (a pass in C each, identity first) before a tuple is made and hashed per item."""
    if not items:
        return set()
    if all(uniform(list(map(field, items))) for field in ANSWER_FIELDS):
        return {ANSWERED_BY(items[0])}
    return set(map(ANSWERED_BY, items))


def find_records(
    directory: Path, request_ids: set[str], max_bytes: int
) -> tuple[dict[str, dict[str, Any]], int]:
    """The records of ``request_ids`` in the newest ``max_bytes`` of segments, and the bytes
    read. A torn last line (a crash mid-write) is skipped."""
    found: dict[str, dict[str, Any]] = {}
    budget = max_bytes
    read = 0
    for path in reversed(segment_files(directory)):
        if budget <= 0 or len(found) == len(request_ids):
            break
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if len(data) > budget:  # the newest part of the segment: its end
            data = data[-budget:]
            data = data[data.find(b"\n") + 1 :]
        budget -= len(data)
        read += len(data)
        match_lines(data.splitlines(), request_ids - set(found), found)
    return found, read


def match_lines(lines: list[bytes], request_ids: set[str], found: dict[str, Any]) -> None:
    """Add to ``found`` the records of ``request_ids`` among encoded ``lines`` (the first
    of each; lines that do not parse are skipped)."""
    if not request_ids:
        return
    needles = {f'"request_id":"{rid}"'.encode(): rid for rid in request_ids}
    for line in lines:
        start = line.find(b'"request_id":"')
        if start < 0:
            continue
        end = line.find(b'"', start + 14)
        rid = needles.get(line[start : end + 1])
        if rid is None or rid in found:
            continue
        try:
            found[rid] = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue


class Encoded:
    """Records made, not yet on disk: chunks (``prediction_packed``), and how many records
    they hold."""

    __slots__ = ("chunks", "records")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.records = 0

    def add(self, chunk: bytes, records: int) -> None:
        self.chunks.append(chunk)
        self.records += records

    def put_back(self, earlier: Encoded) -> None:
        """``earlier``'s records go first again (a write that failed)."""
        self.chunks[:0] = earlier.chunks
        self.records += earlier.records


class Tally:
    """Two counters (accepted, written) in a memory-mapped file that outlive the process.

    One gateway per folder: two processes counting in one file would mix their counts.
    """

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < 16:
                os.ftruncate(fd, 16)
            self._map = mmap.mmap(fd, 16)
        finally:
            os.close(fd)
        self.counts = memoryview(self._map).cast("Q")

    def lost(self) -> int:
        """What the previous process accepted and never wrote; then both count from 0."""
        lost = max(self.counts[0] - self.counts[1], 0)
        self.counts[0] = self.counts[1] = 0
        return lost

    def close(self) -> None:
        self.counts.release()
        self._map.close()


class PredictionLog:
    def __init__(
        self,
        options: PredictionLogOptions,
        directory: Path,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.options = options
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._rng = rng or random.Random()
        self._wall = wall
        self._rate = options.sample_rate
        self._capacity = options.buffer_records
        self._wake_at = YIELD_EVERY  # records are made soon: see _make_in_turns
        self._buffer: collections.deque[Pending] = collections.deque()
        self._made = Encoded()  # records made, not yet written
        self._writing = Encoded()  # records the worker thread is writing
        self._trails: dict[str, list[dict[str, Any]]] = {}
        self._maker = RecordMaker(options)
        self._encoder = ChunkEncoder(self._maker)
        self._configs: dict[int, Any] = {}
        self._last_config: Any = None
        self._last_key = 0
        self._consumers: list[Consumer] = []
        self._wake: Doorbell | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = False
        self._finished = False  # files closed
        self._write_lock = threading.Lock()  # the worker thread and close() never write at once
        # Counters: written on one thread each, read anywhere (plain ints under the GIL).
        self.skipped = 0  # not sampled
        self.dropped = 0  # buffer full
        self.write_errors = 0
        self.bad_records = 0
        self._tally = Tally(directory / TALLY_FILE)
        self._counts = self._tally.counts
        self.lost_at_crash = self._previous_run()
        self._segments = SegmentWriter(directory, options, wall)
        self._wants_process = False  # started: batches go to a writer process
        self._process: WriterProcess | None = None
        self._state_saved = False  # written once at the first write, and at close

    # -- the request path ----------------------------------------------------------

    def observe(self, event: Event) -> None:
        """A failed attempt or a fallback step of the current request."""
        request_id = request_id_var.get(None)
        if request_id is None:
            return
        trail = self._trails.get(request_id)
        if trail is None:
            if len(self._trails) >= MAX_TRAILS:  # requests that never reached record()
                self._trails.pop(next(iter(self._trails)))
            trail = self._trails[request_id] = []
        if isinstance(event, AttemptFailed):
            trail.append(
                {
                    "version": event.version,
                    "replica": event.replica,
                    "outcome": "failed",
                    "failure_class": event.failure_class.value,
                    "message": event.message[:300],
                    "seconds": round(event.seconds, 6),
                }
            )
        elif isinstance(event, PoisonDetected):
            trail.append(
                {
                    "version": event.version,
                    "replica": event.replicas or None,
                    "outcome": "poison",
                    "failure_class": "request",
                    "message": event.reason[:300],
                }
            )
        elif isinstance(event, RetryDenied):
            trail.append(
                {"version": event.version, "outcome": "retry denied", "message": event.reason}
            )
        elif isinstance(event, FallbackTierFailed):
            trail.append(
                {"tier": event.tier, "outcome": "tier failed", "message": event.message[:300]}
            )
        elif isinstance(event, FallbackUsed):
            trail.append(
                {
                    "version": event.version,
                    "tier": event.tier,
                    "outcome": "fallback",
                    "message": event.reason[:300],
                }
            )

    def config_key(self, config: Any) -> int:
        """The key a ``Pending`` names its configuration by (kept here, not in the item)."""
        if config is self._last_config:  # nearly always: a revision lasts
            return self._last_key
        key = id(config)
        configs = self._configs
        if configs.get(key) is not config:
            if len(configs) >= MAX_CONFIGS:  # revisions come and go: keep the newest
                del configs[next(iter(configs))]
            configs[key] = config
        self._last_config, self._last_key = config, key
        return key

    def record(self, item: Pending) -> None:
        """Keep one prediction: never blocks; a full buffer drops it and counts it."""
        trails = self._trails
        if trails:
            trail = trails.pop(item[1], None)
            if trail is not None:
                item = (*item[:TRAIL], trail, item[TRAIL + 1])
        if self._rate < 1.0 and self._rng.random() >= self._rate:
            self.skipped += 1
            return
        buffer = self._buffer
        waiting = len(buffer) + self._made.records + self._writing.records  # not on disk
        if waiting >= self._capacity or self._closed:
            self.dropped += 1
            return
        buffer.append(item)
        self._counts[0] += 1  # in the page cache: survives the process
        if len(buffer) == self._wake_at and self._wake is not None:
            self._wake.ring()

    def subscribe_to(self, bus: EventBus) -> None:
        bus.subscribe(self.observe, TRAIL_EVENTS)

    def add_consumer(self, consumer: Consumer) -> None:
        """``consumer(predicted)`` runs as records are made (a few at a time, just before
        they are written): on the event loop once started, else in ``flush``."""
        self._consumers.append(consumer)

    def set_sample_rate(self, rate: float) -> None:
        self._rate = rate

    @property
    def accepted(self) -> int:
        return int(self._counts[0])

    @property
    def written(self) -> int:
        return int(self._counts[1])

    @property
    def pending(self) -> int:
        """Accepted, not yet written: what a crash now would lose."""
        return len(self._buffer) + self._made.records + self._writing.records

    def pending_records(self, request_ids: set[str]) -> dict[str, dict[str, Any]]:
        """Records of ``request_ids`` not yet on disk: in the buffer, made and waiting for
        the disk, or being written (may run on another thread)."""
        # A record moves buffer -> made -> writing -> disk, and is in its next place
        # before it leaves the last one: read them in that order and none is missed.
        found = {item[1]: self._make(item) for item in [*self._buffer] if item[1] in request_ids}
        chunks = [*self._made.chunks, *self._writing.chunks]
        lines = b"".join(map(lines_of, chunks)).splitlines()
        match_lines(lines, request_ids - set(found), found)
        return found

    def _make(self, item: Pending) -> dict[str, Any]:
        return self._maker.make(item, self._configs.get(item[7]))

    # -- the writer: a task on the event loop -------------------------------------------

    def start(self) -> None:
        """Write in the background from now on (call on the running event loop)."""
        if self._task is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._wake = Doorbell(loop)
            self._wants_process = True
            self._task = loop.create_task(self._run(), name="prediction-log")

    async def stop(self) -> None:
        """End the background writer once what it holds is on disk; ``close`` writes
        what is left."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        if self._wake is not None:
            self._wake.ring()
        try:
            await wait_at_most(asyncio.shield(task), STOP_WITHIN_S)
        except TimeoutError:  # a disk that hangs: close() still writes what it can
            log.error("prediction log: the writer did not end", extra={"within_s": STOP_WITHIN_S})

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.options.flush_interval_s
        wake = self._wake
        assert wake is not None
        retry_at = loop.time()
        due = retry_at + interval
        while True:
            await wake.wait(due)
            stopping = self._stopping
            try:
                await self._make_in_turns(everything=stopping or loop.time() >= due)
                now = loop.time()
                made = self._made.records
                full = made >= self.options.batch_records
                if made and (stopping or now >= due or (full and now >= retry_at)):
                    due = now + interval
                    if not await self._write_in_turn():
                        retry_at = due  # a disk that refuses: not again at every wake
            except Exception:  # never let the writer die: count, log, go on
                log.exception("prediction log: writing failed")
            if stopping:
                wake.cancel_timer()
                return
            if loop.time() >= due:
                due = loop.time() + interval

    async def _make_in_turns(self, everything: bool) -> None:
        """Make the records of what is buffered now, YIELD_EVERY at a time with a turn of
        the event loop between chunks (requests waiting go first). Made soon after their
        requests, records hold on to the requests' objects for milliseconds, not for
        half a second.

        Full chunks only, unless ``everything`` (a write is due): a chunk's work is done
        column by column (``prediction_lines``). And only what waits when it starts:
        under load a few records come in at every turn, and taking them as they came
        made chunks of a dozen and put the write off for as long as the load lasted."""
        buffer = self._buffer
        waiting = len(buffer)
        left = waiting if everything else waiting - waiting % YIELD_EVERY
        while left > 0 and not self._closed:
            items = list(itertools.islice(buffer, min(left, YIELD_EVERY)))
            await self._hash_artifacts(items)
            if self._closed:  # close() took over while the artifacts were hashed
                return
            self._make_chunk(items)
            left -= len(items)
            await asyncio.sleep(0)
        if len(buffer) >= YIELD_EVERY and self._wake is not None:
            self._wake.ring()  # more came meanwhile: the next round takes them

    async def _write_in_turn(self) -> bool:
        """Append the records made so far on a worker thread (write and fsync release the
        GIL); on failure they are kept for the next turn."""
        batch = self._hand_over()
        written = False
        try:
            written = await asyncio.to_thread(self._append, batch)
        finally:
            self._handed_back(batch, written)
        return written

    def _hand_over(self) -> Encoded:
        """The records made so far, now being written."""
        batch = self._writing = self._made  # this order: see pending_records
        self._made = Encoded()
        return batch

    def _handed_back(self, batch: Encoded, written: bool) -> None:
        """After a write: on disk, or kept to go first next time."""
        if not written:
            self._made.put_back(batch)
        self._writing = Encoded()

    async def _hash_artifacts(self, items: list[Pending]) -> None:
        """Have the artifacts these records name hashed on a worker thread if they are not
        yet: making a record on the event loop must never read a model file."""
        answers = _answers(items)
        wanted: list[tuple[Any, str, str]] = []
        for key, model, asked, served_version, served_by in answers:
            config = self._configs.get(key)
            target = self._maker.unhashed(config, model, asked, served_version, served_by)
            if target is not None:
                wanted.append((config, *target))
        if wanted:
            await asyncio.to_thread(self._maker.hash_artifacts, wanted)

    def flush(self) -> None:
        """Make and write everything now, on this thread (close; a log never started)."""
        buffer = self._buffer
        while buffer:
            self._make_chunk(list(itertools.islice(buffer, YIELD_EVERY)))
        if self._made.records:
            batch = self._hand_over()
            written = False
            try:
                written = self._append(batch)
            finally:
                self._handed_back(batch, written)

    def _make_chunk(self, items: list[Pending]) -> None:
        """Make and encode the records of ``items`` (the head of the buffer), keep them as
        one chunk of lines, take the items out of the buffer (only now: each record is
        always findable), then hand their predictions to the consumers.

        One chunk, not a line each: thousands of small lines held until the write fill
        fresh allocator arenas, which the allocator returns to the system when they are
        freed, so each batch paid a page fault per line or so (5 us a record on a
        virtual machine). A chunk's lines are freed at once, into memory still warm."""
        predicted = Predicted()
        chunk, bad = self._encoder.encode(items, self._configs, predicted)
        if bad:
            self.bad_records += bad
            self._counts[1] += bad  # never to be written: not lost at a crash either
        if chunk:
            self._made.add(chunk, count_of(chunk))
        buffer = self._buffer
        for _ in range(len(items)):
            buffer.popleft()
        for consumer in self._consumers:
            try:
                consumer(predicted)
            except Exception:
                log.exception("prediction log: a consumer failed")

    def _append(self, batch: Encoded) -> bool:
        """Write a batch and fsync it (on a worker thread: the event loop goes on); False
        when the disk refused."""
        with self._write_lock:
            if self._finished:  # a writer not stopped before close: its batch stays
                return False
            try:
                self._write(batch.chunks)
            except OSError as error:
                self.write_errors += 1
                log.error("prediction log: cannot write", extra={"error": str(error)})
                return False
            self._counts[1] += batch.records
            if not self._state_saved:  # from now on a crash leaves "clean": false
                self._state_saved = True
                self._save_state(clean=False)
        return True

    def _write(self, chunks: list[bytes]) -> None:
        """By the writer process once the log runs in the background, else (or when that
        process is gone) here."""
        process = self._writer_process()
        if process is not None:
            try:
                process.write(chunks)
                return
            except WriterGone as error:
                log.error(
                    "prediction log: the writer process is gone; the gateway writes from now on",
                    extra={"error": str(error)},
                )
                self._process = None
                process.close(within_s=1.0)
                self._segments.removed_segments += process.removed_segments
        self._segments.append([lines_of(chunk) for chunk in chunks])

    def _writer_process(self) -> WriterProcess | None:
        if self._process is None and self._wants_process:
            self._wants_process = False  # one try: if it cannot start, the gateway writes
            try:
                self._process = WriterProcess(self.directory, self.options)
            except OSError as error:
                log.error(
                    "prediction log: cannot start the writer process; the gateway writes",
                    extra={"error": str(error)},
                )
        return self._process

    @property
    def removed_segments(self) -> int:
        process = self._process
        return self._segments.removed_segments + (process.removed_segments if process else 0)

    # -- crash accounting ------------------------------------------------------------

    def _save_state(self, *, clean: bool) -> None:
        state = {
            "pid": os.getpid(),
            "time": self._wall(),
            "accepted": self.accepted,
            "written": self.written,
            "dropped": self.dropped,
            "pending": self.pending,
            "clean": clean,
        }
        path = self.directory / STATE_FILE
        temporary = path.with_suffix(".tmp")
        try:
            temporary.write_bytes(orjson.dumps(state))
            os.replace(temporary, path)
        except OSError:
            self.write_errors += 1

    def _previous_run(self) -> int:
        """Records the previous run accepted and never wrote (0 after a clean stop)."""
        lost = self._tally.lost()
        if lost:
            log.warning(
                "prediction log: the previous run did not stop cleanly; records it had "
                "accepted and not yet written are lost",
                extra={"lost": lost},
            )
        return lost

    # -- stopping ----------------------------------------------------------------------

    def close(self) -> None:
        """Write everything accepted and close the files (SIGTERM, clean stop); once
        started, ``await stop()`` first."""
        if self._closed:
            return
        self._stopping = True
        self._closed = True
        self.flush()  # whatever came in since the writer's last batch
        with self._write_lock:
            self._finished = True
            if self._process is not None:
                self._process.close()
            self._segments.close()
            self._save_state(clean=not self.pending)
            self._counts = memoryview(bytearray(self._counts.tobytes())).cast("Q")
            self._tally.close()

    def stats(self) -> dict[str, int]:
        return {
            "accepted": self.accepted,
            "written": self.written,
            "pending": self.pending,
            "dropped": self.dropped,
            "skipped": self.skipped,
            "write_errors": self.write_errors,
            "bad_records": self.bad_records,
            "removed_segments": self.removed_segments,
            "lost_at_crash": self.lost_at_crash,
        }

    def __iter__(self) -> Iterator[Path]:
        return iter(segment_files(self.directory))
