"""The artifact registry's bytes: content-addressed copies in several locations.

``ArtifactLocations`` keeps every artifact, named by its sha256, in each of a
list of locations (local directories or fsspec URLs, see ``locations.py``).
The control store records which name and version a digest is; this module
only keeps the bytes, and keeps them honest:

``put(source)``
    Hashes the source once (in chunks: a file is never held in memory) and
    writes it to **every** location that lacks a good copy. A location that
    already holds a good copy is left alone (put is idempotent); one that holds
    a corrupt copy is overwritten (and reported as repaired). Each write hashes
    the bytes it writes again and keeps nothing that does not match, so a
    source file that changes during the put is never stored under the old
    digest. A location that fails is reported (``ArtifactWriteFailed`` and the
    result's ``failed``); the put raises ``ArtifactWriteError`` only when fewer
    than ``min_copies`` (1 by default) good copies exist afterwards, naming
    what went wrong in each location. ``verify`` later fills in the copies a
    put could not write.
``get(digest)`` / ``fetch(digest, dest)``
    Read from the first location, in the configured order, whose copy hashes
    to the digest. A missing, corrupt or unreadable copy is skipped, reported
    (``ArtifactCopyBad``, the ``counters``) and then repaired from the good
    bytes (``ArtifactRepaired``). Bytes that do not hash to the digest are
    never returned. When no copy is good: ``ArtifactNotFound`` if no location
    has one at all, else ``ArtifactUnavailable`` naming each location's
    problem (and an ``ArtifactUnrecoverable`` event).
``verify(expected)``
    Scrubs every copy of every artifact in every location (those listed there,
    plus the digests the store expects), repairs what a good copy can repair,
    and reports counts, findings and what cannot be recovered.
``gc(keep)``
    Removes every artifact not in ``keep`` from every location (with
    ``dry_run``, only says what it would remove), and temporaries left by
    crashed writes.

All of it is blocking I/O: the gateway calls it from a thread
(``asyncio.to_thread``), never on the event loop. Events are emitted on the
calling thread through ``emit``; a caller on another thread passes an ``emit``
that hands them to its loop (``loop.call_soon_threadsafe(bus.emit, event)``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from failsoft.control.locations import (
    CHUNK_BYTES,
    DigestMismatch,
    Location,
    check_sha256,
)
from failsoft.errors import FailsoftError, FailureClass
from failsoft.observe.events import Event

__all__ = [
    "ArtifactCopyBad",
    "ArtifactCounters",
    "ArtifactLocations",
    "ArtifactNotFound",
    "ArtifactRemoved",
    "ArtifactRepaired",
    "ArtifactUnavailable",
    "ArtifactUnrecoverable",
    "ArtifactWriteError",
    "ArtifactWriteFailed",
    "CopyFinding",
    "CopyProblem",
    "GcReport",
    "PutResult",
    "Removal",
    "VerifyReport",
]

CopyProblem = Literal["missing", "corrupt", "unreadable"]
Source = bytes | str | os.PathLike[str]

# -- events -------------------------------------------------------------------------


@dataclass(slots=True)
class ArtifactCopyBad(Event):
    """A copy was skipped or found bad: missing, corrupt (hashes to something else) or
    unreadable (the location failed). A repair, if one follows, is its own event."""

    sha256: str
    location: str
    problem: CopyProblem
    detail: str


@dataclass(slots=True)
class ArtifactRepaired(Event):
    """A missing or bad copy was rewritten from a good one (``source``: its location,
    or ``put`` when the bytes came from the one pushing them)."""

    sha256: str
    location: str
    source: str


@dataclass(slots=True)
class ArtifactWriteFailed(Event):
    """Writing a copy (a put or a repair) failed in one location."""

    sha256: str
    location: str
    detail: str


@dataclass(slots=True)
class ArtifactUnrecoverable(Event):
    """No location holds a good copy, and at least one holds a bad one: data lost."""

    sha256: str
    problems: tuple[tuple[str, str], ...]  # (location, what is wrong there)


@dataclass(slots=True)
class ArtifactRemoved(Event):
    """gc removed a copy no stored revision references."""

    sha256: str
    location: str
    size: int


# -- errors -------------------------------------------------------------------------


class ArtifactUnavailable(FailsoftError):
    """No location holds a copy that hashes to the digest; ``problems`` says, per
    location, what was wrong there."""

    status = 500
    failure_class = FailureClass.REPLICA

    def __init__(self, sha256: str, problems: Sequence[tuple[str, str]]) -> None:
        self.sha256 = sha256
        self.problems = tuple(problems)
        where = "; ".join(f"{location}: {problem}" for location, problem in self.problems)
        super().__init__(f"artifact sha256:{sha256} has no good copy ({where})")


class ArtifactNotFound(ArtifactUnavailable):
    """No location has any copy of the digest (an unknown artifact, or one lost everywhere)."""

    status = 404
    failure_class = FailureClass.CLIENT

    def __init__(self, sha256: str, locations: Sequence[str]) -> None:
        super().__init__(sha256, [(location, "missing") for location in locations])
        self.message = f"artifact sha256:{sha256} is in none of {', '.join(locations)}"
        self.args = (self.message,)


class ArtifactWriteError(FailsoftError):
    """A put left fewer good copies than required; ``problems`` says why, per location."""

    status = 500

    def __init__(self, sha256: str, problems: Sequence[tuple[str, str]], needed: int) -> None:
        self.sha256 = sha256
        self.problems = tuple(problems)
        where = "; ".join(f"{location}: {problem}" for location, problem in self.problems)
        copies = "any location" if needed == 1 else f"{needed} locations"
        super().__init__(f"could not store artifact sha256:{sha256} in {copies} ({where})")


# -- results ------------------------------------------------------------------------


@dataclass(slots=True)
class ArtifactCounters:
    """Running totals since start, for metrics (``as_dict``)."""

    copies_missing: int = 0
    copies_corrupt: int = 0
    copies_unreadable: int = 0
    repaired: int = 0
    write_failed: int = 0
    unrecoverable: int = 0
    removed: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PutResult:
    sha256: str
    size: int
    written: tuple[str, ...]  # locations that got a new copy
    present: tuple[str, ...]  # locations that already held a good copy
    failed: tuple[tuple[str, str], ...]  # (location, why) that hold no good copy now

    @property
    def copies(self) -> int:
        return len(self.written) + len(self.present)


@dataclass(frozen=True, slots=True)
class CopyFinding:
    """One bad copy found by ``verify``, and what became of it."""

    sha256: str
    location: str
    problem: CopyProblem
    detail: str
    repaired: bool = False
    repair_error: str | None = None


@dataclass(slots=True)
class VerifyReport:
    locations: tuple[str, ...]
    artifacts: int = 0
    copies_checked: int = 0
    good: int = 0
    missing: int = 0
    corrupt: int = 0
    unreadable: int = 0
    repaired: int = 0
    repair_failed: int = 0
    unrecoverable: list[str] = field(default_factory=list)  # digests with no good copy left
    findings: list[CopyFinding] = field(default_factory=list)
    strays: list[tuple[str, str]] = field(default_factory=list)  # (location, path): not a copy
    unlisted: list[tuple[str, str]] = field(default_factory=list)  # (location, why) not listed

    @property
    def ok(self) -> bool:
        """Every copy of every artifact is good now (after repairs)."""
        return (
            not self.unrecoverable
            and not self.unlisted
            and all(finding.repaired for finding in self.findings)
        )

    def summary(self) -> str:
        return (
            f"{self.artifacts} artifacts, {self.copies_checked} copies checked in "
            f"{len(self.locations)} locations: {self.good} good, {self.missing} missing, "
            f"{self.corrupt} corrupt, {self.unreadable} unreadable; {self.repaired} repaired, "
            f"{self.repair_failed} repairs failed, {len(self.unrecoverable)} unrecoverable"
        )


@dataclass(frozen=True, slots=True)
class Removal:
    sha256: str  # the digest, or "" for a temporary left by a crashed write
    location: str
    path: str
    size: int


@dataclass(slots=True)
class GcReport:
    dry_run: bool
    removed: list[Removal] = field(default_factory=list)  # with dry_run: would be removed
    kept: int = 0  # copies kept because they are in keep
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (location, path, why)

    @property
    def bytes_freed(self) -> int:
        """Bytes removed (with dry_run: that would be)."""
        return sum(removal.size for removal in self.removed)

    @property
    def digests_removed(self) -> set[str]:
        return {removal.sha256 for removal in self.removed if removal.sha256}


# -- the registry -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Bad:
    location: Location
    problem: CopyProblem
    detail: str

    @property
    def text(self) -> str:
        return self.problem if self.problem == "missing" else f"{self.problem} ({self.detail})"


class ArtifactLocations:
    """Artifacts by sha256, a copy in each location; reads fail over and repair.

    ``locations``: local directory paths or fsspec URLs (``file:///…``,
    ``memory://…``, ``s3://…``), read in this order. ``min_copies``: how many
    good copies a put must leave, else it fails (1: any location).
    """

    def __init__(
        self,
        locations: Sequence[str | os.PathLike[str] | Location],
        *,
        emit: Callable[[Event], None] | None = None,
        min_copies: int = 1,
    ) -> None:
        built = tuple(
            location if isinstance(location, Location) else Location(location)
            for location in locations
        )
        if not built:
            raise ValueError("artifact locations: give at least one location")
        seen: dict[tuple[str, str], str] = {}
        for location in built:
            scheme = "" if location.local else location.url.partition("://")[0]
            key = (scheme, location.root)
            if key in seen:
                raise ValueError(
                    f"artifact locations: {location.url!r} is the same place as {seen[key]!r}"
                )
            seen[key] = location.url
        if not 1 <= min_copies <= len(built):
            raise ValueError(
                f"artifact locations: min_copies must be between 1 and {len(built)} "
                f"(the number of locations), got {min_copies}"
            )
        self.locations = built
        self.min_copies = min_copies
        self.counters = ArtifactCounters()
        self._emit: Callable[[Event], None] = emit or _ignore
        self._lock = threading.Lock()

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(location.url for location in self.locations)

    # -- put ----------------------------------------------------------------------

    def put(self, source: Source) -> PutResult:
        """Store ``source`` (bytes, or a file's path) in every location; see the module doc."""
        chunks, digest, size = _open_source(source)
        written: list[str] = []
        present: list[str] = []
        failed: list[tuple[str, str]] = []
        for location in self.locations:
            bad = self._check(location, digest)
            if bad is None:
                present.append(location.url)
                continue
            if bad.problem != "missing":  # a missing copy is what a new artifact looks like
                self._report(digest, bad)
            problem = self._write(digest, location, chunks(), source="put", was=bad)
            if problem is None:
                written.append(location.url)
            else:
                failed.append((location.url, problem))
        result = PutResult(digest, size, tuple(written), tuple(present), tuple(failed))
        if result.copies < self.min_copies:
            raise ArtifactWriteError(digest, failed, self.min_copies)
        return result

    # -- reads --------------------------------------------------------------------

    def get(self, digest: str) -> bytes:
        """The artifact's bytes, from the first location whose copy is good."""
        check_sha256(digest)
        bad: list[_Bad] = []
        for location in self.locations:
            try:
                with location.open(digest) as stream:
                    data: bytes = stream.read()
            except Exception as error:
                bad.append(_from_error(location, error))
                continue
            actual = hashlib.sha256(data).hexdigest()
            if actual == digest:
                break
            bad.append(_Bad(location, "corrupt", _corrupt_detail(actual, len(data))))
        else:
            raise self._no_good_copy(digest, bad)
        self._repair(digest, bad, lambda: iter((data,)), source=location.url)
        return data

    def fetch(self, digest: str, dest: str | os.PathLike[str]) -> Path:
        """Write the artifact to ``dest`` (streamed: never whole in memory) and return
        its path. ``dest`` appears only once its bytes hash to the digest: they are
        written to a temporary name beside it and renamed. Errors writing ``dest``
        itself are raised as they are; they say nothing about the locations."""
        check_sha256(digest)
        target = Path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        bad: list[_Bad] = []
        for location in self.locations:
            temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
            try:
                outcome = _copy_verified(location, digest, temporary)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
            if isinstance(outcome, _Bad):
                temporary.unlink(missing_ok=True)
                bad.append(outcome)
                continue
            os.replace(temporary, target)
            self._repair(digest, bad, lambda: _file_chunks(target), source=location.url)
            return target
        raise self._no_good_copy(digest, bad)

    # -- verify -------------------------------------------------------------------

    def verify(self, expected: Iterable[str] = (), *, repair: bool = True) -> VerifyReport:
        """Check every copy of every artifact in every location and repair the bad ones
        from a good one (``repair=False``: only report). ``expected``: digests the
        caller knows should exist (the store's artifact rows), so that an artifact
        missing from every location is reported as unrecoverable, not overlooked."""
        report = VerifyReport(self.urls)
        digests = {check_sha256(digest) for digest in expected}
        for location in self.locations:
            try:
                copies, strays = location.listing()
            except Exception as error:
                report.unlisted.append((location.url, _describe(error)))
                continue
            digests.update(copy.sha256 for copy in copies)
            report.strays.extend((location.url, path) for path in strays)
        for digest in sorted(digests):
            self._verify_one(digest, report, repair)
        return report

    def _verify_one(self, digest: str, report: VerifyReport, repair: bool) -> None:
        report.artifacts += 1
        good: list[Location] = []
        bad: list[_Bad] = []
        for location in self.locations:
            report.copies_checked += 1
            found = self._check(location, digest)
            if found is None:
                good.append(location)
            else:
                bad.append(found)
        report.good += len(good)
        for found in bad:
            setattr(report, found.problem, getattr(report, found.problem) + 1)
        if not bad:
            return
        if not good:
            report.unrecoverable.append(digest)
            report.findings.extend(
                CopyFinding(digest, found.location.url, found.problem, found.detail)
                for found in bad
            )
            self._lost(digest, bad)
            return
        for found in bad:
            self._report(digest, found)
            if not repair:
                report.findings.append(
                    CopyFinding(digest, found.location.url, found.problem, found.detail)
                )
                continue
            error = self._write_from(digest, found, good)
            report.findings.append(
                CopyFinding(
                    digest,
                    found.location.url,
                    found.problem,
                    found.detail,
                    repaired=error is None,
                    repair_error=error,
                )
            )
            if error is None:
                report.repaired += 1
            else:
                report.repair_failed += 1

    def _write_from(self, digest: str, bad: _Bad, good: list[Location]) -> str | None:
        """Repair ``bad`` from the first good copy that still reads well; None on success."""
        problem: str | None = "no good copy"
        for source in good:
            problem = self._write(
                digest, bad.location, source.chunks(digest), source=source.url, was=bad
            )
            if problem is None:
                return None
        return problem

    # -- gc -----------------------------------------------------------------------

    def gc(
        self,
        keep: Iterable[str],
        *,
        dry_run: bool = False,
        temporaries_older_than_s: float = 3600.0,
    ) -> GcReport:
        """Remove, from every location, each artifact whose digest is not in ``keep``
        (the caller passes every sha256 any stored revision references, and any it
        is about to reference), and temporaries of writes that crashed more than
        ``temporaries_older_than_s`` ago. ``dry_run``: remove nothing, report what
        would go. A ``keep`` entry that is not a digest stops gc before it removes
        anything: a mistyped keep set must not empty the registry."""
        kept = set()
        for digest in keep:
            try:
                kept.add(check_sha256(digest))
            except ValueError as error:
                raise ValueError(f"gc: nothing removed: keep holds {error}") from None
        report = GcReport(dry_run)
        now = time.time()
        for location in self.locations:
            try:
                copies, _ = location.listing()
                temporaries = location.stale_temporaries(temporaries_older_than_s, now)
            except Exception as error:
                report.failed.append((location.url, "", f"listing failed: {_describe(error)}"))
                continue
            for copy in copies:
                if copy.sha256 in kept:
                    report.kept += 1
                    continue
                removal = Removal(copy.sha256, location.url, location.path(copy.sha256), copy.size)
                if self._remove(location, removal, report):
                    self._count("removed")
                    self._emit(ArtifactRemoved(copy.sha256, location.url, copy.size))
            for path, size in temporaries:
                self._remove(location, Removal("", location.url, path, size), report)
        return report

    def _remove(self, location: Location, removal: Removal, report: GcReport) -> bool:
        if report.dry_run:
            report.removed.append(removal)
            return False
        try:
            location.remove_path(removal.path)
        except FileNotFoundError:
            return False  # gone already: someone else's gc
        except Exception as error:
            report.failed.append((location.url, removal.path, _describe(error)))
            return False
        report.removed.append(removal)
        return True

    # -- shared steps -------------------------------------------------------------

    def _check(self, location: Location, digest: str) -> _Bad | None:
        """None when the location's copy hashes to the digest, else what is wrong."""
        try:
            actual, size = location.measure(digest)
        except Exception as error:
            return _from_error(location, error)
        if actual != digest:
            return _Bad(location, "corrupt", _corrupt_detail(actual, size))
        return None

    def _write(
        self,
        digest: str,
        location: Location,
        chunks: Iterable[bytes],
        *,
        source: str,
        was: _Bad,
    ) -> str | None:
        """Write one copy; None on success, else why it failed (reported)."""
        try:
            location.write(digest, chunks)
        except Exception as error:
            detail = str(error) if isinstance(error, DigestMismatch) else _describe(error)
            self._count("write_failed")
            self._emit(ArtifactWriteFailed(digest, location.url, detail))
            return f"write failed: {detail}"
        if was.problem != "missing" or source != "put":
            self._count("repaired")
            self._emit(ArtifactRepaired(digest, location.url, source))
        return None

    def _repair(
        self,
        digest: str,
        bad: list[_Bad],
        chunks: Callable[[], Iterable[bytes]],
        *,
        source: str,
    ) -> None:
        """Report the copies a read skipped and rewrite them from the good bytes."""
        for found in bad:
            self._report(digest, found)
            self._write(digest, found.location, chunks(), source=source, was=found)

    def _report(self, digest: str, bad: _Bad) -> None:
        self._count(f"copies_{bad.problem}")
        self._emit(ArtifactCopyBad(digest, bad.location.url, bad.problem, bad.detail))

    def _no_good_copy(self, digest: str, bad: list[_Bad]) -> ArtifactUnavailable:
        if all(found.problem == "missing" for found in bad):
            return ArtifactNotFound(digest, self.urls)
        for found in bad:
            self._report(digest, found)
        self._lost(digest, bad)
        return ArtifactUnavailable(digest, [(found.location.url, found.text) for found in bad])

    def _lost(self, digest: str, bad: list[_Bad]) -> None:
        self._count("unrecoverable")
        problems = tuple((found.location.url, found.text) for found in bad)
        self._emit(ArtifactUnrecoverable(digest, problems))

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.counters, name, getattr(self.counters, name) + 1)


# -- helpers ------------------------------------------------------------------------


def _ignore(event: Event) -> None:
    pass


def _open_source(source: Source) -> tuple[Callable[[], Iterator[bytes]], str, int]:
    """A way to read the source again (once per location), its sha256 and its size."""
    if isinstance(source, bytes):
        data = source
        return (lambda: iter((data,))), hashlib.sha256(data).hexdigest(), len(data)
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"put takes bytes or a file's path, got {type(source).__name__}")
    path = Path(source)
    hasher = hashlib.sha256()
    size = 0
    for chunk in _file_chunks(path):
        hasher.update(chunk)
        size += len(chunk)
    return (lambda: _file_chunks(path)), hasher.hexdigest(), size


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            yield chunk


def _copy_verified(location: Location, digest: str, temporary: Path) -> _Bad | None:
    """Stream the location's copy into ``temporary``, hashing it. A failure reading
    the location is returned as its problem; a failure writing ``temporary`` raises."""
    hasher = hashlib.sha256()
    size = 0
    with open(temporary, "xb") as out:
        chunks = location.chunks(digest)
        while True:
            try:
                chunk = next(chunks, None)
            except Exception as error:
                return _from_error(location, error)
            if chunk is None:
                break
            out.write(chunk)
            hasher.update(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    actual = hasher.hexdigest()
    return None if actual == digest else _Bad(location, "corrupt", _corrupt_detail(actual, size))


def _from_error(location: Location, error: Exception) -> _Bad:
    if isinstance(error, FileNotFoundError):
        return _Bad(location, "missing", "no copy")
    return _Bad(location, "unreadable", _describe(error))


def _corrupt_detail(actual: str, size: int) -> str:
    return f"its {size} bytes hash to {actual[:16]}…"


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
