from __future__ import annotations

import hashlib

import pytest

from failsoft.control.artifact_ref import ARTIFACT_KINDS, ArtifactRef, ArtifactRefError

DIGEST = hashlib.sha256(b"iris").hexdigest()


def test_name_at_version() -> None:
    ref = ArtifactRef.parse("iris@v3")

    assert (ref.name, ref.version, ref.sha256) == ("iris", "v3", None)
    assert not ref.pinned
    assert str(ref) == "iris@v3"
    assert ArtifactRef.parse(" breast-cancer@2024.06_1 ").version == "2024.06_1"


@pytest.mark.parametrize("text", [DIGEST, f"sha256:{DIGEST}", DIGEST.upper()])
def test_a_sha256(text: str) -> None:
    ref = ArtifactRef.parse(text)

    assert ref == ArtifactRef(sha256=DIGEST)
    assert ref.pinned
    assert str(ref) == DIGEST


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty artifact reference"),
        ("   ", "empty artifact reference"),
        ("iris", "'iris' has no version; write name@version (iris@v3) or a sha256"),
        ("@v3", "has no name before '@'"),
        ("iris@", "has no version after '@'"),
        ("iris@v3@v4", "more than one '@'"),
        ("iris@v 3", "the version 'v 3' must start with a letter or digit"),
        ("-iris@v3", "the name '-iris' must start with a letter or digit"),
        ("iris/../x@v3", "the name 'iris/../x'"),
        (f"{'a' * 129}@v1", "at most 128 characters"),
        (DIGEST[:-1], "needs exactly 64 hex characters (0-9, a-f), got 63 characters"),
        (DIGEST + "0", "got 65 characters"),
        (f"sha256:{DIGEST[:-1]}g", "got 64 characters with non-hex ones"),
        ("sha256:", "got 0 characters"),
    ],
)
def test_bad_references_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ArtifactRefError) as caught:
        ArtifactRef.parse(text)
    assert problem in str(caught.value)
    assert isinstance(caught.value, ValueError)  # so pydantic reports it at the key's path


def test_a_reference_is_text() -> None:
    with pytest.raises(ArtifactRefError, match="is text, got int"):
        ArtifactRef.parse(3)  # type: ignore[arg-type]


def test_built_directly_it_is_checked_too() -> None:
    with pytest.raises(ArtifactRefError, match="not both"):
        ArtifactRef(name="iris", version="v1", sha256=DIGEST)
    with pytest.raises(ArtifactRefError, match="needs a name and a version"):
        ArtifactRef(name="iris")
    with pytest.raises(ArtifactRefError, match="not a lowercase sha256"):
        ArtifactRef(sha256=DIGEST.upper())


def test_kinds_are_the_backends_that_load_files() -> None:
    assert ARTIFACT_KINDS == ("onnx", "sklearn", "python", "profile")
