"""The prediction log on its own: buffer, writer, segments, retention, crash accounting."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from failsoft.config import ConfigError, parse_config
from failsoft.data.prediction_index import Predicted
from failsoft.data.prediction_log import (
    STATE_FILE,
    TALLY_FILE,
    YIELD_EVERY,
    PredictionLog,
    Tally,
    _answers,
    find_records,
    segment_files,
)
from failsoft.data.prediction_options import PredictionLogOptions
from failsoft.data.prediction_record import (
    TRAIL,
    Pending,
    RecordMaker,
    bucket_name,
    lineage_digest,
    pending,
)
from failsoft.data.prediction_segments import IOV_MAX, write_all

MODEL = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "scores", "datatype": "FP32", "shape": [-1, 3]},
    ],
    "versions": {"v1": {"backend": "python", "function": "tests.integration._models:heuristic"}},
}


def config(**predictions: Any) -> Any:
    return parse_config({"predictions": {"enabled": True, **predictions}, "models": {"m": MODEL}})


def item(
    config: Any, request_id: str, label: int = 1, x2: float = 3.0, key: int = 0, **extra: Any
) -> Pending:
    return pending(
        time.time(),
        request_id,
        "acme",
        "m",
        "v1",
        200,
        3,
        key,
        served_version="v1",
        served_by=extra.pop("served_by", "m/v1/r0"),
        degraded=extra.pop("degraded", False),
        inputs={"x": np.array([[1.0, 2.0, x2, 4.0]], dtype=np.float32)},
        outputs={
            "label": np.array([label], dtype=np.int64),
            "scores": np.array([[0.1, 0.8, 0.1]], dtype=np.float32),
        },
    )


def logged(log: PredictionLog, config: Any, request_id: str) -> None:
    log.record(item(config, request_id, key=log.config_key(config)))


def records(directory: Path) -> list[dict[str, Any]]:
    found = []
    for path in segment_files(directory):
        found.extend(orjson.loads(line) for line in path.read_bytes().splitlines() if line)
    return found


def test_every_accepted_record_is_on_disk_after_close(tmp_path: Path) -> None:
    cfg = config(flush_interval_s=60)  # only close() writes
    log = PredictionLog(cfg.predictions, tmp_path)
    for index in range(500):
        logged(log, cfg, f"r{index}")
    assert log.accepted == 500
    log.close()
    written = records(tmp_path)
    assert [r["request_id"] for r in written] == [f"r{i}" for i in range(500)]
    first = written[0]
    assert first["prediction"] == [1]
    assert first["kind"] == "classification"
    assert first["replica"] == "r0"
    assert first["revision"] == 3
    assert first["tenant"] == "acme"
    assert first["attempts"] == [{"replica": "r0", "outcome": "answered"}]
    assert len(first["input_digest"]) == 32
    assert "inputs" not in first
    assert "outputs" not in first
    assert orjson.loads((tmp_path / STATE_FILE).read_bytes())["clean"] is True
    assert log.stats()["written"] == 500
    assert log.stats()["dropped"] == 0


def test_a_full_buffer_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    cfg = config(flush_interval_s=60, buffer_records=16, batch_records=16)
    log = PredictionLog(cfg.predictions, tmp_path)
    log._wake_at = -1  # keep the writer asleep: the buffer fills
    for index in range(40):
        logged(log, cfg, f"r{index}")
    assert log.accepted == 16
    assert log.dropped == 24
    log.close()
    assert len(records(tmp_path)) == 16


def test_sampling_keeps_the_configured_share(tmp_path: Path) -> None:
    cfg = config(sample_rate=0.25, flush_interval_s=60)
    log = PredictionLog(cfg.predictions, tmp_path, rng=random.Random(7))
    for index in range(4000):
        logged(log, cfg, f"r{index}")
    log.close()
    assert log.accepted + log.skipped == 4000
    assert 900 <= log.accepted <= 1100


@pytest.mark.parametrize("rate", [-0.1, 1.5, "half", True])
def test_a_sampling_rate_out_of_range_is_a_clear_error(rate: object) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"predictions": {"sample_rate": rate}, "models": {"m": MODEL}})
    assert "predictions.sample_rate" in str(raised.value)
    assert "from 0 to 1" in str(raised.value)


def test_inputs_and_outputs_only_when_configured(tmp_path: Path) -> None:
    cfg = config(record_inputs=True, record_outputs=True, flush_interval_s=60)
    log = PredictionLog(cfg.predictions, tmp_path)
    logged(log, cfg, "r1")
    log.close()
    [record] = records(tmp_path)
    assert record["inputs"] == {"x": [[1.0, 2.0, 3.0, 4.0]]}
    assert record["outputs"]["label"] == [1]


def test_segments_rotate_by_size_and_retention_keeps_the_total_under_the_cap(
    tmp_path: Path,
) -> None:
    cfg = config(segment_bytes=4096, max_total_bytes=3 * 4096, flush_interval_s=60)
    log = PredictionLog(cfg.predictions, tmp_path)
    for round_no in range(20):
        for index in range(10):
            logged(log, cfg, f"r{round_no}-{index}")
        log.flush()
    log._segments.retention()
    log.close()
    files = segment_files(tmp_path)
    assert len(files) >= 2
    assert sum(path.stat().st_size for path in files) <= 3 * 4096 + 4096
    assert log.removed_segments > 0
    assert records(tmp_path)[-1]["request_id"] == "r19-9"  # the newest are kept


def test_retention_by_age(tmp_path: Path) -> None:
    now = [1_000_000.0]
    cfg = config(segment_s=10, max_age_s=100, flush_interval_s=60)
    log = PredictionLog(cfg.predictions, tmp_path, wall=lambda: now[0])
    logged(log, cfg, "old")
    log.flush()
    old = segment_files(tmp_path)[0]
    now[0] += 1000  # the next write rotates; the old segment is past max_age_s
    import os

    os.utime(old, (now[0] - 500, now[0] - 500))
    logged(log, cfg, "new")
    log.flush()
    log.close()
    assert not old.exists()
    assert [r["request_id"] for r in records(tmp_path)] == ["new"]


def test_a_crash_is_counted_exactly_at_the_next_start(tmp_path: Path) -> None:
    tally = Tally(tmp_path / TALLY_FILE)  # what a process killed mid-way leaves behind
    tally.counts[0], tally.counts[1] = 120, 100
    tally.close()
    cfg = config(flush_interval_s=60)
    log = PredictionLog(cfg.predictions, tmp_path)
    assert log.lost_at_crash == 20
    logged(log, cfg, "r1")
    log.close()
    assert log.stats()["accepted"] == 1
    again = PredictionLog(cfg.predictions, tmp_path)  # that one stopped cleanly
    assert again.lost_at_crash == 0
    again.close()


def test_find_records_skips_a_torn_last_line(tmp_path: Path) -> None:
    cfg = config(flush_interval_s=60)
    log = PredictionLog(cfg.predictions, tmp_path)
    for index in range(5):
        logged(log, cfg, f"r{index}")
    log.close()
    path = segment_files(tmp_path)[0]
    with path.open("ab") as handle:
        handle.write(b'{"request_id":"torn","time":1')  # a crash mid-write
    found, read = find_records(tmp_path, {"r3", "torn", "missing"}, 1 << 20)
    assert set(found) == {"r3"}
    assert read > 0


def test_records_name_the_fallback_tier_and_the_failed_attempts() -> None:
    cfg = config()
    trail = [{"replica": "r0", "outcome": "failed", "failure_class": "replica"}]
    fell_back = item(cfg, "fb", served_by="m/v1/fallback:heuristic", degraded=True)
    fell_back = (*fell_back[:TRAIL], trail, None)
    record = RecordMaker(cfg.predictions).make(fell_back, cfg)
    assert record["fallback_tier"] == "heuristic"
    assert "replica" not in record
    assert record["attempts"] == trail
    assert record["degraded"] is True
    assert "artifact_sha256" not in record  # a heuristic has no artifact


def test_the_request_path_leaves_nothing_for_the_collector_to_track() -> None:
    import gc

    kept = item(config(), "r1")
    gc.collect()  # untracks its inner tuples; the next pass, the item itself
    gc.collect()
    assert not gc.is_tracked(kept)


def test_feature_buckets() -> None:
    edges = [2.5, 4.9]
    assert [bucket_name(v, edges) for v in (1.0, 2.5, 4.0, 4.9, 7.0)] == [
        "<2.5",
        "2.5..4.9",
        "2.5..4.9",
        ">=4.9",
        ">=4.9",
    ]
    assert bucket_name(float("nan"), edges) == "nan"


def test_batch_larger_than_the_buffer_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_records"):
        PredictionLogOptions(buffer_records=100, batch_records=200)


def test_the_plan_applies_a_new_sampling_rate_live_and_the_rest_on_restart() -> None:
    from failsoft.control.plan import plan

    before = config(sample_rate=1.0)
    rate = plan(before, config(sample_rate=0.1))
    assert rate.render().splitlines()[0] == "~ predictions.sample_rate: 0.1"
    assert rate.restart_needed == []
    assert plan(before, config(record_inputs=True)).restart_needed == ["predictions"]


def test_find_records_reads_the_newest_bytes_first(tmp_path: Path) -> None:
    cfg = config(flush_interval_s=60)
    log = PredictionLog(cfg.predictions, tmp_path)
    for index in range(200):
        logged(log, cfg, f"r{index}")
    log.close()
    size = segment_files(tmp_path)[0].stat().st_size
    found, read = find_records(tmp_path, {"r0", "r199"}, size // 4)
    assert set(found) == {"r199"}  # the oldest lie beyond the budget
    assert read <= size // 4


async def test_a_record_the_writer_holds_is_still_found_until_it_is_on_disk(
    tmp_path: Path,
) -> None:
    # Feedback may arrive while the writer has taken a batch out of the buffer and is
    # indexing it a few records at a time, between requests: each record must be
    # findable throughout.
    cfg = config(flush_interval_s=60)
    log = PredictionLog(cfg.predictions, tmp_path)
    ids = [f"r{index}" for index in range(3 * YIELD_EVERY)]
    for request_id in ids:
        logged(log, cfg, request_id)
    seen: list[set[str]] = []
    indexed: set[str] = set()

    def index_and_look(batch: Predicted) -> None:
        indexed.update(batch.request_ids)
        unwritten = set(ids) - indexed
        seen.append(set(log.pending_records(unwritten)) ^ unwritten)

    log.add_consumer(index_and_look)
    log.start()
    await log.stop()  # wakes the writer: it writes what is buffered, then ends
    assert log.written == len(ids)
    assert len(seen) == 3  # the batch was made in three turns of the event loop
    assert seen == [set()] * 3  # each time, every record not yet indexed was found
    log.close()
    assert [r["request_id"] for r in records(tmp_path)] == ids


async def test_the_writer_makes_records_between_requests(tmp_path: Path) -> None:
    # A full batch wakes the writer; it makes YIELD_EVERY records at a time and lets
    # the event loop run other tasks in between, and the disk work is not on the loop.
    cfg = config(flush_interval_s=60, batch_records=2 * YIELD_EVERY)
    log = PredictionLog(cfg.predictions, tmp_path)
    turns: list[int] = []
    log.add_consumer(lambda batch: turns.append(len(batch)))
    log.start()
    others = 0

    async def another_request() -> None:
        nonlocal others
        while log.written < 2 * YIELD_EVERY:
            others += 1
            await asyncio.sleep(0)

    for index in range(2 * YIELD_EVERY):
        logged(log, cfg, f"r{index}")
    await asyncio.wait_for(another_request(), timeout=10)
    assert turns == [YIELD_EVERY, YIELD_EVERY]
    assert others >= 2  # the loop ran other work while the batch was made and written
    await log.stop()
    log.close()
    assert len(records(tmp_path)) == 2 * YIELD_EVERY


async def test_records_are_made_soon_and_written_when_due(tmp_path: Path) -> None:
    # A few dozen waiting wake the writer: their records are made (and the feedback
    # index fed) long before the disk write is due, and they stay findable until then.
    cfg = config(flush_interval_s=60)
    log = PredictionLog(cfg.predictions, tmp_path)
    made = asyncio.Event()
    log.add_consumer(lambda batch: made.set())
    log.start()
    for index in range(YIELD_EVERY):
        logged(log, cfg, f"r{index}")
    await asyncio.wait_for(made.wait(), timeout=10)
    assert (log.written, log.pending) == (0, YIELD_EVERY)
    found = log.pending_records({"r0", f"r{YIELD_EVERY - 1}", "unknown"})
    assert set(found) == {"r0", f"r{YIELD_EVERY - 1}"}
    assert found["r0"]["prediction"] == [1]
    assert records(tmp_path) == []
    await log.stop()  # a stop writes what was made
    assert (log.written, log.pending) == (YIELD_EVERY, 0)
    log.close()


async def test_made_records_waiting_for_the_disk_count_against_the_buffer(
    tmp_path: Path,
) -> None:
    cfg = config(flush_interval_s=60, buffer_records=YIELD_EVERY, batch_records=YIELD_EVERY)
    folder = tmp_path / "log"
    log = PredictionLog(cfg.predictions, folder)
    aside = tmp_path / "aside"
    folder.rename(aside)
    folder.write_text("")  # no segment can be created: every write fails
    made = asyncio.Event()
    log.add_consumer(lambda batch: made.set())
    log.start()
    try:
        for index in range(YIELD_EVERY):
            logged(log, cfg, f"r{index}")
        await asyncio.wait_for(made.wait(), timeout=10)
        logged(log, cfg, "one too many")
        assert (log.pending, log.dropped) == (YIELD_EVERY, 1)
        await log.stop()
        assert log.write_errors >= 1
    finally:
        folder.unlink()
        aside.rename(folder)
    log.close()
    assert len(records(folder)) == YIELD_EVERY


async def test_a_failed_write_keeps_the_batch_for_the_next_round(tmp_path: Path) -> None:
    cfg = config(flush_interval_s=60)
    folder = tmp_path / "log"
    log = PredictionLog(cfg.predictions, folder)
    for index in range(10):
        logged(log, cfg, f"r{index}")
    aside = tmp_path / "aside"
    folder.rename(aside)
    folder.write_text("")  # a file where the folder was: no segment can be created in it
    try:
        log.start()
        await log.stop()
        assert log.write_errors == 1
        assert (log.pending, log.written) == (10, 0)
    finally:
        folder.unlink()
        aside.rename(folder)
    log.close()
    assert len(records(folder)) == 10


async def test_stop_then_close_leaves_nothing_behind(tmp_path: Path) -> None:
    cfg = config(flush_interval_s=60)
    log = PredictionLog(cfg.predictions, tmp_path)
    log.start()
    for index in range(50):
        logged(log, cfg, f"r{index}")
    await log.stop()
    logged(log, cfg, "late")  # accepted after the writer ended: close writes it
    log.close()
    assert log.stats()["pending"] == 0
    assert len(records(tmp_path)) == 51
    assert orjson.loads((tmp_path / STATE_FILE).read_bytes())["clean"] is True


def test_the_input_digest_is_blake2b_of_names_dtypes_shapes_and_bytes() -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    ids = np.array([3, 1], dtype=np.int64)
    expected = hashlib.blake2b(digest_size=16)
    for name, array in (("ids", ids), ("x", x)):  # in name order
        expected.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        expected.update(array.tobytes())
    assert lineage_digest({"x": x, "ids": ids}) == expected.hexdigest()
    assert lineage_digest({"ids": ids, "x": x}) == expected.hexdigest()
    assert lineage_digest({"ids": ids, "x": x}) == expected.hexdigest()  # a cached start
    wide = np.arange(16, dtype=np.float32).reshape(2, 8)[:, ::2]  # not contiguous
    assert lineage_digest({"x": wide}) == lineage_digest({"x": np.ascontiguousarray(wide)})
    assert lineage_digest({"x": x}) != lineage_digest({"x": x.reshape(4, 2)})


async def test_the_writer_hashes_an_artifact_off_the_event_loop(tmp_path: Path) -> None:
    # Reading a model file to hash it can take seconds: never on the event loop.
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(random.Random(7).randbytes(1 << 20))
    onnx = {**MODEL, "versions": {"v1": {"backend": "onnx", "path": str(artifact)}}}
    cfg = parse_config({"predictions": {"enabled": True}, "models": {"m": onnx}})
    log = PredictionLog(cfg.predictions, tmp_path / "log")
    hashed_on: list[int] = []
    hash_artifacts = log._maker.hash_artifacts

    def spied(wanted: list[Any]) -> None:
        hashed_on.append(threading.get_ident())
        hash_artifacts(wanted)

    log._maker.hash_artifacts = spied  # type: ignore[method-assign]
    for index in range(3):
        logged(log, cfg, f"r{index}")
    log.start()
    await log.stop()
    log.close()
    assert len(hashed_on) == 1  # once for the batch: its records find it known
    assert hashed_on[0] != threading.get_ident()
    expected = hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert {r["artifact_sha256"] for r in records(tmp_path / "log")} == {expected}


def test_write_all_writes_every_chunk_in_order_beyond_one_system_call(tmp_path: Path) -> None:
    chunks = [f"chunk {index}\n".encode() for index in range(IOV_MAX * 2 + 5)]
    chunks[7] = b""  # an empty chunk is skipped
    path = tmp_path / "out"
    with path.open("wb", buffering=0) as handle:
        write_all(handle.fileno(), chunks)
    assert path.read_bytes() == b"".join(chunks)


async def test_under_steady_load_chunks_are_full_and_writes_are_not_put_off(
    tmp_path: Path,
) -> None:
    # Requests log a record at every turn of the event loop. The writer makes full chunks
    # only (but for what waits when a write is due), and takes what waits when it starts:
    # taking records as they came, it never finished and never wrote while the load went
    # on.
    cfg = config(flush_interval_s=0.05)
    log = PredictionLog(cfg.predictions, tmp_path)
    sizes: list[int] = []
    log.add_consumer(lambda batch: sizes.append(len(batch)))
    log.start()
    logged_count = 0
    began = time.monotonic()
    while log.written == 0 and time.monotonic() - began < 10 and logged_count < 60_000:
        logged(log, cfg, f"r{logged_count}")
        logged_count += 1
        await asyncio.sleep(0)
    assert log.written > 0  # written while the load went on
    assert log.dropped == 0
    assert sizes.count(YIELD_EVERY) >= len(sizes) - 2  # full chunks, but at a due write
    await log.stop()
    log.close()
    assert log.written == logged_count


def test_the_answers_a_chunk_names_are_found_whether_one_or_many() -> None:
    made = config()
    alike = [item(made, f"r{n}") for n in range(64)]
    assert _answers(alike) == {(0, "m", "v1", "v1", "m/v1/r0")}
    mixed = [*alike[:10], item(made, "other", served_by="m/v1/r1"), *alike[10:]]
    mixed.append(item(made, "later", key=7))
    assert _answers(mixed) == {
        (0, "m", "v1", "v1", "m/v1/r0"),
        (0, "m", "v1", "v1", "m/v1/r1"),
        (7, "m", "v1", "v1", "m/v1/r0"),
    }
    assert _answers([]) == set()
