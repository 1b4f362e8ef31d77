"""The log's writer process: batches written on the other core, and the gateway going on
without it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from failsoft.data.prediction_log import YIELD_EVERY, PredictionLog, segment_files
from failsoft.data.prediction_packed import pack_lines
from failsoft.data.prediction_writer import WriterProcess
from tests.data.test_prediction_log import config, logged, records


def pid_of(segment: Path) -> int:
    return int(segment.name.split("-")[2])


async def logged_in_background(folder: Path, count: int) -> tuple[PredictionLog, Any]:
    """A started log, ``count`` records logged (r0, r1, ...), then stopped: written."""
    cfg = config(flush_interval_s=60)
    log = PredictionLog(cfg.predictions, folder)
    log.start()
    for index in range(count):
        logged(log, cfg, f"r{index}")
    await log.stop()
    return log, cfg


async def test_a_started_log_writes_through_its_writer_process(tmp_path: Path) -> None:
    # Two alike chunks, and a few made at the stop.
    log, _ = await logged_in_background(tmp_path, 2 * YIELD_EVERY + 5)
    assert log.written == 2 * YIELD_EVERY + 5
    writer = log._process
    assert writer is not None
    assert {pid_of(path) for path in segment_files(tmp_path)} == {writer.pid}
    assert writer.pid != os.getpid()
    log.close()
    assert writer._process.poll() == 0  # it ended when its input closed
    assert [r["request_id"] for r in records(tmp_path)] == [
        f"r{index}" for index in range(2 * YIELD_EVERY + 5)
    ]


async def test_when_the_writer_process_dies_the_gateway_writes_and_loses_nothing(
    tmp_path: Path,
) -> None:
    log, cfg = await logged_in_background(tmp_path, 10)
    writer = log._process
    assert writer is not None
    os.kill(writer.pid, signal.SIGKILL)
    writer._process.wait(timeout=10)
    for index in range(10, 15):
        logged(log, cfg, f"r{index}")
    log.close()  # its write finds the process gone: written here instead
    assert log.write_errors == 0
    assert (log.written, log.pending) == (15, 0)
    assert [r["request_id"] for r in records(tmp_path)] == [f"r{i}" for i in range(15)]
    assert pid_of(segment_files(tmp_path)[-1]) == os.getpid()


def test_a_chunk_it_cannot_read_is_refused_with_its_reason_and_the_next_is_written(
    tmp_path: Path,
) -> None:
    writer = WriterProcess(tmp_path, config().predictions)
    try:
        with pytest.raises(OSError, match="could not be read"):
            writer.write([b"?not a chunk"])
        writer.write([pack_lines([b'{"request_id":"a"}', b'{"request_id":"b"}'])])
    finally:
        writer.close()
    lines = segment_files(tmp_path)[0].read_bytes().splitlines()
    assert [orjson.loads(line)["request_id"] for line in lines] == ["a", "b"]


def test_run_by_hand_without_its_arguments_it_says_how_to_run_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "failsoft.data.prediction_writer"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert b"OPTIONS_JSON" in done.stderr
