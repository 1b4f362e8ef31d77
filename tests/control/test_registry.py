from __future__ import annotations

import hashlib
import os
import random
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import fsspec  # type: ignore[import-untyped]
import pytest

from failsoft.control.locations import CHUNK_BYTES, DigestMismatch, Location
from failsoft.control.registry import (
    ArtifactCopyBad,
    ArtifactLocations,
    ArtifactNotFound,
    ArtifactRemoved,
    ArtifactRepaired,
    ArtifactUnavailable,
    ArtifactUnrecoverable,
    ArtifactWriteError,
    ArtifactWriteFailed,
)
from failsoft.observe.events import Event

E = TypeVar("E", bound=Event)

IRIS = b"iris model bytes " * 100
BREAST = b"breast-cancer model bytes " * 50
OTHER = b"a third artifact"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def memory_url() -> Iterator[str]:
    """A memory:// location of this test's own: fsspec's memory filesystem is global."""
    root = f"/failsoft-test-{uuid.uuid4().hex}"
    yield f"memory://{root}"
    memory = fsspec.filesystem("memory")
    if memory.exists(root):
        memory.rm(root, recursive=True)


class Harness:
    def __init__(self, *urls: str | Path, min_copies: int = 1) -> None:
        self.events: list[Event] = []
        self.registry = ArtifactLocations(urls, emit=self.events.append, min_copies=min_copies)

    def of(self, kind: type[E]) -> list[E]:
        return [event for event in self.events if isinstance(event, kind)]

    def location(self, index: int) -> Location:
        return self.registry.locations[index]

    def stored(self, index: int, digest: str) -> bytes | None:
        location = self.location(index)
        try:
            with location.open(digest) as stream:
                data: bytes = stream.read()
        except FileNotFoundError:
            return None
        return data

    def overwrite(self, index: int, digest: str, data: bytes) -> None:
        """Damage a copy behind the registry's back."""
        location = self.location(index)
        if location.local:
            Path(location.path(digest)).write_bytes(data)
        else:
            fsspec.filesystem("memory").pipe_file(location.path(digest), data)

    def flip_one_byte(self, index: int, digest: str) -> None:
        data = bytearray(self.stored(index, digest) or b"")
        data[len(data) // 2] ^= 0x01
        self.overwrite(index, digest, bytes(data))

    def delete(self, index: int, digest: str) -> None:
        self.location(index).remove(digest)


@pytest.fixture
def three(tmp_path: Path, memory_url: str) -> Harness:
    """Two local directories and one memory:// location, read in this order."""
    return Harness(tmp_path / "a", tmp_path / "b", memory_url)


# -- put ------------------------------------------------------------------------------


def test_put_stores_a_copy_in_every_location_under_the_sha256_layout(
    three: Harness, tmp_path: Path
) -> None:
    result = three.registry.put(IRIS)

    digest = sha(IRIS)
    assert result.sha256 == digest
    assert result.size == len(IRIS)
    assert result.written == three.registry.urls
    assert result.present == ()
    assert result.failed == ()
    for index in range(3):
        assert three.stored(index, digest) == IRIS
    assert (tmp_path / "a" / "sha256" / digest[:2] / digest).read_bytes() == IRIS
    assert three.location(2).path(digest).endswith(f"/sha256/{digest[:2]}/{digest}")
    assert not any(
        name.endswith(".tmp") for name in os.listdir(tmp_path / "a" / "sha256" / digest[:2])
    )
    assert three.events == []  # a new artifact's missing copies are not problems


def test_put_is_idempotent_for_good_copies(three: Harness) -> None:
    three.registry.put(IRIS)
    before = os.stat(three.location(0).path(sha(IRIS)))

    again = three.registry.put(IRIS)

    assert again.written == ()
    assert again.present == three.registry.urls
    assert os.stat(three.location(0).path(sha(IRIS))).st_ino == before.st_ino  # not rewritten
    assert three.events == []


def test_put_rewrites_a_corrupt_copy_and_reports_it(three: Harness) -> None:
    digest = three.registry.put(IRIS).sha256
    three.flip_one_byte(1, digest)

    result = three.registry.put(IRIS)

    assert result.written == (three.registry.urls[1],)
    assert three.stored(1, digest) == IRIS
    [bad] = three.of(ArtifactCopyBad)
    assert (bad.location, bad.problem) == (three.registry.urls[1], "corrupt")
    assert three.of(ArtifactRepaired) == [ArtifactRepaired(digest, three.registry.urls[1], "put")]


def test_put_reports_a_failing_location_and_stores_in_the_others(
    tmp_path: Path, memory_url: str
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a directory should be")
    harness = Harness(tmp_path / "a", blocked, memory_url)

    result = harness.registry.put(IRIS)

    assert result.written == (harness.registry.urls[0], harness.registry.urls[2])
    [(where, why)] = result.failed
    assert where == str(blocked)
    assert why.startswith("write failed: ")
    [failed] = harness.of(ArtifactWriteFailed)
    assert failed.location == str(blocked)
    assert harness.registry.counters.write_failed == 1


def test_put_fails_naming_every_location_when_none_can_hold_it(tmp_path: Path) -> None:
    for name in ("x", "y"):
        (tmp_path / name).write_text("not a directory")
    harness = Harness(tmp_path / "x", tmp_path / "y")

    with pytest.raises(ArtifactWriteError) as caught:
        harness.registry.put(IRIS)

    message = str(caught.value)
    assert f"sha256:{sha(IRIS)}" in message
    assert "could not store" in message
    assert str(tmp_path / "x") in message
    assert str(tmp_path / "y") in message


def test_put_fails_below_min_copies(tmp_path: Path) -> None:
    (tmp_path / "y").write_text("not a directory")
    harness = Harness(tmp_path / "x", tmp_path / "y", min_copies=2)

    with pytest.raises(ArtifactWriteError, match="in 2 locations"):
        harness.registry.put(IRIS)
    assert harness.stored(0, sha(IRIS)) == IRIS  # the good copy stays: gc removes it if unused


def test_a_write_whose_bytes_do_not_match_the_digest_leaves_nothing(
    tmp_path: Path, memory_url: str
) -> None:
    for location in (Location(tmp_path / "a"), Location(memory_url)):
        with pytest.raises(DigestMismatch, match="the source changed"):
            location.write(sha(IRIS), iter([IRIS, b"appended while it was read"]))
        copies, strays = location.listing()
        assert (copies, strays) == ([], [])


def test_a_write_that_crashes_midway_leaves_no_file_that_looks_valid(tmp_path: Path) -> None:
    location = Location(tmp_path / "a")

    def dying() -> Iterator[bytes]:
        yield IRIS[:10]
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        location.write(sha(IRIS), dying())
    assert location.listing() == ([], [])
    assert not os.path.exists(location.path(sha(IRIS)))


def test_put_streams_a_large_file(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    size = 8 << 20
    source.write_bytes(random.Random(7).randbytes(size))
    harness = Harness(tmp_path / "a", tmp_path / "b")

    tracemalloc.start()
    try:
        result = harness.registry.put(source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.sha256 == sha(source.read_bytes())
    assert result.size == size
    assert peak < 3 * CHUNK_BYTES < size  # read, hashed and written a chunk at a time
    for index in range(2):
        assert Path(harness.location(index).path(result.sha256)).read_bytes() == source.read_bytes()


# -- reads ----------------------------------------------------------------------------


def test_get_fails_over_when_the_first_copy_is_missing_and_repairs_it(three: Harness) -> None:
    digest = three.registry.put(IRIS).sha256
    three.delete(0, digest)

    assert three.registry.get(digest) == IRIS

    first, second = three.registry.urls[:2]
    assert three.of(ArtifactCopyBad) == [ArtifactCopyBad(digest, first, "missing", "no copy")]
    assert three.of(ArtifactRepaired) == [ArtifactRepaired(digest, first, second)]
    assert three.stored(0, digest) == IRIS
    assert three.registry.counters.copies_missing == 1
    assert three.registry.counters.repaired == 1


def test_get_skips_a_copy_with_one_byte_changed_reports_and_repairs_it(three: Harness) -> None:
    digest = three.registry.put(IRIS).sha256
    three.flip_one_byte(0, digest)

    assert three.registry.get(digest) == IRIS

    [bad] = three.of(ArtifactCopyBad)
    assert isinstance(bad, ArtifactCopyBad)
    assert (bad.sha256, bad.location, bad.problem) == (digest, three.registry.urls[0], "corrupt")
    assert f"{len(IRIS)} bytes hash to" in bad.detail
    assert three.stored(0, digest) == IRIS
    assert three.registry.counters.copies_corrupt == 1
    three.events.clear()
    assert three.registry.get(digest) == IRIS
    assert three.events == []  # repaired: nothing to report the second time


def test_a_corrupt_copy_in_a_non_local_location_is_repaired_too(
    tmp_path: Path, memory_url: str
) -> None:
    harness = Harness(memory_url, tmp_path / "a")
    digest = harness.registry.put(IRIS).sha256
    harness.flip_one_byte(0, digest)

    assert harness.registry.get(digest) == IRIS

    assert [event.problem for event in harness.of(ArtifactCopyBad)] == ["corrupt"]
    assert harness.stored(0, digest) == IRIS


def test_an_unreadable_location_is_skipped_and_its_failed_repair_reported(
    tmp_path: Path,
) -> None:
    harness = Harness(tmp_path / "a", tmp_path / "b")
    digest = harness.registry.put(IRIS).sha256
    path = Path(harness.location(0).path(digest))
    path.unlink()
    path.mkdir()  # a directory where the copy should be: reading it fails, so does the repair

    assert harness.registry.get(digest) == IRIS

    [bad] = harness.of(ArtifactCopyBad)
    assert bad.problem == "unreadable"
    assert "IsADirectoryError" in bad.detail
    assert len(harness.of(ArtifactWriteFailed)) == 1
    assert harness.of(ArtifactRepaired) == []


def test_get_raises_naming_each_location_when_no_copy_is_good(three: Harness) -> None:
    digest = three.registry.put(IRIS).sha256
    three.flip_one_byte(0, digest)
    three.delete(1, digest)
    three.overwrite(2, digest, b"truncated")

    with pytest.raises(ArtifactUnavailable) as caught:
        three.registry.get(digest)

    error = caught.value
    assert not isinstance(error, ArtifactNotFound)
    message = str(error)
    assert f"artifact sha256:{digest} has no good copy" in message
    a, b, memory = three.registry.urls
    assert f"{a}: corrupt (its {len(IRIS)} bytes hash to" in message
    assert f"{b}: missing" in message
    assert f"{memory}: corrupt (its 9 bytes hash to" in message
    assert [location for location, _ in error.problems] == [a, b, memory]
    [lost] = three.of(ArtifactUnrecoverable)
    assert lost.sha256 == digest
    assert three.of(ArtifactRepaired) == []
    assert three.stored(1, digest) is None  # nothing was "repaired" from a bad copy
    assert three.registry.counters.unrecoverable == 1


def test_get_of_an_unknown_digest_is_not_found(three: Harness) -> None:
    digest = sha(b"never pushed")

    with pytest.raises(ArtifactNotFound, match=f"sha256:{digest} is in none of"):
        three.registry.get(digest)
    assert three.events == []


@pytest.mark.parametrize("digest", ["../../etc/passwd", sha(IRIS).upper(), sha(IRIS)[:-1], ""])
def test_digests_are_checked_before_they_become_paths(three: Harness, digest: str) -> None:
    with pytest.raises(ValueError, match="not a sha256 digest"):
        three.registry.get(digest)


def test_fetch_streams_a_verified_copy_to_a_file_and_repairs(
    three: Harness, tmp_path: Path
) -> None:
    digest = three.registry.put(IRIS).sha256
    three.flip_one_byte(0, digest)
    dest = tmp_path / "cache" / "iris.onnx"

    assert three.registry.fetch(digest, dest) == dest

    assert dest.read_bytes() == IRIS
    assert os.listdir(dest.parent) == ["iris.onnx"]  # no temporaries left
    assert three.stored(0, digest) == IRIS
    assert [event.problem for event in three.of(ArtifactCopyBad)] == ["corrupt"]


def test_fetch_writes_nothing_when_no_copy_is_good(three: Harness, tmp_path: Path) -> None:
    digest = three.registry.put(IRIS).sha256
    for index in range(3):
        three.flip_one_byte(index, digest)
    dest = tmp_path / "cache" / "iris.onnx"

    with pytest.raises(ArtifactUnavailable):
        three.registry.fetch(digest, dest)
    assert os.listdir(dest.parent) == []


def test_fetch_streams_a_large_artifact(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(8 << 20)
    harness = Harness(tmp_path / "a", tmp_path / "b")
    digest = harness.registry.put(data).sha256
    del data
    harness.flip_one_byte(0, digest)

    tracemalloc.start()
    try:
        harness.registry.fetch(digest, tmp_path / "out")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 3 * CHUNK_BYTES < (8 << 20)
    assert sha((tmp_path / "out").read_bytes()) == digest
    assert harness.stored(0, digest) == (tmp_path / "out").read_bytes()


# -- verify ---------------------------------------------------------------------------


def test_verify_scrubs_every_copy_repairs_and_counts(three: Harness, tmp_path: Path) -> None:
    iris, breast, other = (three.registry.put(data).sha256 for data in (IRIS, BREAST, OTHER))
    three.delete(0, iris)
    three.flip_one_byte(1, breast)
    for index in range(3):
        three.overwrite(index, other, b"rotten")
    registered_but_lost = sha(b"in the store, in no location")
    stray = tmp_path / "a" / "sha256" / "zz" / "notes.txt"
    stray.parent.mkdir(parents=True)
    stray.write_text("not an artifact")

    report = three.registry.verify(expected={registered_but_lost})

    assert report.artifacts == 4
    assert report.copies_checked == 12
    assert report.good == 2 + 2 + 0 + 0
    assert (report.missing, report.corrupt, report.unreadable) == (1 + 3, 1 + 3, 0)
    assert (report.repaired, report.repair_failed) == (2, 0)
    assert sorted(report.unrecoverable) == sorted([other, registered_but_lost])
    assert report.strays == [(three.registry.urls[0], str(stray))]
    assert not report.ok
    repaired = {(f.sha256, f.location, f.problem) for f in report.findings if f.repaired}
    assert repaired == {
        (iris, three.registry.urls[0], "missing"),
        (breast, three.registry.urls[1], "corrupt"),
    }
    assert three.stored(0, iris) == IRIS
    assert three.stored(1, breast) == BREAST
    assert {event.sha256 for event in three.of(ArtifactUnrecoverable)} == {
        other,
        registered_but_lost,
    }
    assert "4 artifacts, 12 copies checked in 3 locations" in report.summary()

    again = three.registry.verify()
    assert (again.repaired, again.missing) == (0, 0)
    assert again.unrecoverable == [other]


def test_verify_without_repair_only_reports(three: Harness) -> None:
    digest = three.registry.put(IRIS).sha256
    three.flip_one_byte(2, digest)

    report = three.registry.verify(repair=False)

    assert (report.corrupt, report.repaired) == (1, 0)
    [finding] = report.findings
    assert (finding.location, finding.repaired) == (three.registry.urls[2], False)
    assert not report.ok
    assert three.stored(2, digest) != IRIS
    assert three.registry.verify().ok  # and a repairing scrub fixes it
    assert three.stored(2, digest) == IRIS


def test_verify_of_healthy_locations_is_ok(three: Harness) -> None:
    for data in (IRIS, BREAST):
        three.registry.put(data)

    report = three.registry.verify(expected=[sha(IRIS)])

    assert report.ok
    assert (report.artifacts, report.good, report.findings) == (2, 6, [])
    assert three.events == []


# -- gc -------------------------------------------------------------------------------


def test_gc_removes_what_is_not_kept_from_every_location(three: Harness) -> None:
    iris, breast, other = (three.registry.put(data).sha256 for data in (IRIS, BREAST, OTHER))

    report = three.registry.gc(keep={iris})

    assert not report.dry_run
    assert report.digests_removed == {breast, other}
    assert len(report.removed) == 6
    assert report.bytes_freed == 3 * (len(BREAST) + len(OTHER))
    assert report.kept == 3
    assert report.failed == []
    for index in range(3):
        assert three.stored(index, iris) == IRIS
        assert three.stored(index, breast) is None
    assert len(three.of(ArtifactRemoved)) == 6
    assert three.registry.counters.removed == 6
    assert three.registry.get(iris) == IRIS
    with pytest.raises(ArtifactNotFound):
        three.registry.get(breast)


def test_gc_dry_run_reports_and_removes_nothing(three: Harness) -> None:
    iris, breast = (three.registry.put(data).sha256 for data in (IRIS, BREAST))

    report = three.registry.gc(keep=[iris], dry_run=True)

    assert report.dry_run
    assert report.digests_removed == {breast}
    assert report.bytes_freed == 3 * len(BREAST)
    for index in range(3):
        assert three.stored(index, breast) == BREAST
    assert three.of(ArtifactRemoved) == []


def test_gc_with_a_keep_entry_that_is_no_digest_removes_nothing(three: Harness) -> None:
    iris = three.registry.put(IRIS).sha256

    with pytest.raises(ValueError, match="gc: nothing removed"):
        three.registry.gc(keep={f"sha256:{iris}"})
    assert three.stored(0, iris) == IRIS


def test_gc_removes_temporaries_of_crashed_writes_once_they_are_old(tmp_path: Path) -> None:
    harness = Harness(tmp_path / "a")
    iris = harness.registry.put(IRIS).sha256
    directory = Path(harness.location(0).path(iris)).parent
    old = directory / f".{iris}.0123456789ab.tmp"
    fresh = directory / f".{iris}.ba9876543210.tmp"
    old.write_bytes(IRIS[:5])
    fresh.write_bytes(IRIS[:7])
    an_hour_ago = time.time() - 3700
    os.utime(old, (an_hour_ago, an_hour_ago))

    report = harness.registry.gc(keep={iris})

    assert [(removal.sha256, removal.path, removal.size) for removal in report.removed] == [
        ("", str(old), 5)
    ]
    assert not old.exists()
    assert fresh.exists()  # maybe a put in progress
    assert harness.stored(0, iris) == IRIS


# -- configuration --------------------------------------------------------------------


def test_locations_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one location"):
        ArtifactLocations([])
    with pytest.raises(ValueError, match="is the same place as"):
        ArtifactLocations([tmp_path / "a", f"file://{tmp_path}/a"])
    with pytest.raises(ValueError, match="min_copies must be between 1 and 2"):
        ArtifactLocations([tmp_path / "a", tmp_path / "b"], min_copies=3)
    with pytest.raises(ValueError, match="must not be empty"):
        ArtifactLocations([""])


def test_file_urls_and_paths_name_the_same_layout(tmp_path: Path) -> None:
    by_url = ArtifactLocations([f"file://{tmp_path}/a"])
    digest = by_url.put(IRIS).sha256

    assert ArtifactLocations([tmp_path / "a"]).get(digest) == IRIS
