"""The artifact references in a configuration, at any depth (parsing: control/artifact_ref)."""

from __future__ import annotations

import pytest

from failsoft.control.artifact_ref import ArtifactRef, ArtifactRefError
from failsoft.store import artifact_references

SHA = "ab" * 32


def test_every_artifact_key_at_any_depth_is_found() -> None:
    config = {
        "artifact": "top@v1",
        "models": {
            "iris": {
                "versions": {
                    "v1": {"artifact": "iris@v1", "path": "ignored.onnx"},
                    "v2": {"artifact": f"sha256:{SHA}"},
                    "v3": {"artifact": SHA.upper()},
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
    with pytest.raises(ArtifactRefError, match=r"models\.iris\.versions\[1\]\.artifact: 'oops'"):
        artifact_references(config)
    assert artifact_references(config, strict=False) == {ArtifactRef(name="iris", version="v1")}
