"""Artifact references in a configuration: ``artifact: NAME@VERSION`` or a sha256."""

from __future__ import annotations

import pytest

from failsoft.store import ArtifactRef, artifact_references, parse_artifact_ref

SHA = "ab" * 32


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("iris@v3", ArtifactRef(name="iris", version="v3")),
        ("my-model.x@2024-01_b", ArtifactRef(name="my-model.x", version="2024-01_b")),
        (f"sha256:{SHA}", ArtifactRef(sha256=SHA)),
        (SHA.upper(), ArtifactRef(sha256=SHA)),
    ],
)
def test_references_parse(text: str, ref: ArtifactRef) -> None:
    assert parse_artifact_ref(text) == ref
    assert parse_artifact_ref(str(ref)) == ref


@pytest.mark.parametrize("text", ["iris", "@v1", "iris@", "../x@v1", "a@b@c", "sha256:abc", ""])
def test_malformed_references_say_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match=r"NAME@VERSION or sha256:HEX"):
        parse_artifact_ref(text)


def test_every_artifact_key_at_any_depth_is_found() -> None:
    config = {
        "artifact": "top@v1",
        "models": {
            "iris": {
                "versions": {
                    "v1": {"artifact": "iris@v1", "path": "ignored.onnx"},
                    "v2": {"artifact": f"sha256:{SHA}"},
                },
                "fallback": [{"model": "wine"}, {"heuristic": {"artifact": "rules@v9"}}],
            }
        },
        "notes": ["artifact", {"name": "artifact"}],
    }
    assert artifact_references(config) == {
        ArtifactRef(name="top", version="v1"),
        ArtifactRef(name="iris", version="v1"),
        ArtifactRef(sha256=SHA),
        ArtifactRef(name="rules", version="v9"),
    }


def test_a_malformed_reference_names_its_path_or_is_skipped() -> None:
    config = {"models": {"iris": {"versions": [{"artifact": "iris@v1"}, {"artifact": "oops"}]}}}
    with pytest.raises(ValueError, match=r"models\.iris\.versions\[1\]\.artifact: 'oops'"):
        artifact_references(config)
    assert artifact_references(config, strict=False) == {ArtifactRef(name="iris", version="v1")}
