"""The demo's reference profiles: each demo model run on the data set it was trained on.

Built next to the model files when a profile is missing or was built from
other model bytes. The sketches of the demo's data sets (150 and 569 rows)
are exact at the profile's ``k``, and onnxruntime's answers are the same on
every run, so the files are the same on every machine with the same models.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from failsoft.data.profiles import Profile, ProfileError, build_profile

__all__ = ["PROFILE_FILES", "ensure_demo_profiles"]

# model file -> (configured model, version, data set)
PROFILE_FILES = {
    "iris-v1.onnx": ("iris", "v1", "iris"),
    "iris-v2.onnx": ("iris", "v2", "iris"),
    "breast-cancer-v1.onnx": ("breast-cancer", "v1", "breast_cancer"),
}


def profile_name(model_file: str) -> str:
    return model_file.removesuffix(".onnx") + ".profile.json"


def ensure_demo_profiles(
    data_dir: Path,
    config_path: Path,
    load: Callable[[str], tuple[np.ndarray, np.ndarray]],
    progress: Callable[[str], None],
) -> None:
    """Build whichever demo profile is missing or stale (the config must exist)."""
    from failsoft.backends import _local_loader
    from failsoft.config import ProcessBackend, load_config

    config = load_config(config_path)
    for model_file, (model, version, dataset) in PROFILE_FILES.items():
        target = data_dir / profile_name(model_file)
        digest = hashlib.sha256((data_dir / model_file).read_bytes()).hexdigest()
        try:
            if Profile.load(target).model_sha256 == digest:
                continue
        except ProfileError:
            pass
        progress(f"  {target.name}: reference profile of {model}/{version}")
        model_config = config.models[model]
        backend = model_config.versions[version]
        local = backend.worker if isinstance(backend, ProcessBackend) else backend
        predict = _local_loader(local, model_config)()  # type: ignore[arg-type]
        features, _ = load(dataset)
        profile = build_profile(
            model,
            version,
            model_config.inputs,
            model_config.outputs,
            {model_config.inputs[0].name: features},
            predict,
            model_sha256=digest,
            source=f"scikit-learn's {dataset.replace('_', ' ')} data set",
        )
        profile.created_at = ""  # the same bytes on every run
        profile.save(target)
