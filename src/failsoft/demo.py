"""The demo models: trained on first run from scikit-learn's bundled data sets.

Nothing is downloaded. ``prepare_demo`` trains three small models on the
data sets that ship inside scikit-learn (iris, breast cancer), exports them to
ONNX with skl2onnx, checks that onnxruntime agrees with scikit-learn, and
caches the files with a manifest (sha256 of each file plus the library
versions). A later run whose manifest still matches skips training; a missing
or corrupted file, or a new scikit-learn/skl2onnx, trains again. Every file is
written to a temporary name and renamed, so a crash never leaves a half file
that looks valid: the manifest is written last.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

__all__ = [
    "CONFIG_NAME",
    "MANIFEST_NAME",
    "MODEL_FILES",
    "default_data_dir",
    "demo_config_text",
    "iris_rules",
    "prepare_demo",
    "usage_text",
]

MANIFEST_NAME = "manifest.json"
CONFIG_NAME = "failsoft-demo.yaml"
RUNBOOKS_DIR = "runbooks"  # the bundled runbooks, copied next to the demo configuration
MODEL_FILES = ("iris-v1.onnx", "iris-v2.onnx", "breast-cancer-v1.onnx")
# Bump when the recipe below changes, so old caches are retrained.
_RECIPE = 1
_MIN_AGREEMENT = 0.99
# Pinned opsets: readable by every onnxruntime the project supports (>= 1.17).
_TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


@dataclass(frozen=True, slots=True)
class _Recipe:
    file: str
    dataset: str  # "iris" | "breast_cancer"
    describe: str
    build: Callable[[], Any]


def _recipes() -> list[_Recipe]:
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return [
        _Recipe(
            "iris-v1.onnx",
            "iris",
            "LogisticRegression",
            lambda: LogisticRegression(max_iter=5000, random_state=0),
        ),
        _Recipe(
            "iris-v2.onnx",
            "iris",
            "GradientBoostingClassifier",
            lambda: GradientBoostingClassifier(random_state=0),
        ),
        _Recipe(
            "breast-cancer-v1.onnx",
            "breast_cancer",
            "StandardScaler + LogisticRegression",
            lambda: make_pipeline(
                StandardScaler(), LogisticRegression(max_iter=5000, random_state=0)
            ),
        ),
    ]


def default_data_dir() -> Path:
    """``$FAILSOFT_HOME/demo``, else ``$XDG_CACHE_HOME/failsoft/demo``, else ``~/.cache/…``."""
    home = os.environ.get("FAILSOFT_HOME")
    if home:
        return Path(home).expanduser() / "demo"
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "failsoft" / "demo"


def _versions() -> dict[str, Any]:
    import skl2onnx
    import sklearn

    return {"recipe": _RECIPE, "sklearn": sklearn.__version__, "skl2onnx": skl2onnx.__version__}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _cache_is_valid(data_dir: Path) -> bool:
    try:
        manifest = json.loads((data_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
        if manifest.get("versions") != _versions():
            return False
        files = manifest["files"]
        return set(files) == set(MODEL_FILES) and all(
            _sha256(data_dir / name) == files[name] for name in MODEL_FILES
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _load(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer, load_iris

    loader = load_iris if dataset == "iris" else load_breast_cancer
    features, target = loader(return_X_y=True)
    return np.asarray(features, dtype=np.float32), np.asarray(target, dtype=np.int64)


def _train_and_export(recipe: _Recipe) -> bytes:
    import onnxruntime as ort
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.exceptions import ConvergenceWarning

    features, target = _load(recipe.dataset)
    model = recipe.build()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # a demo model must converge
        model.fit(features, target)
    onx = convert_sklearn(
        model,
        initial_types=[("features", FloatTensorType([None, features.shape[1]]))],
        options={id(model): {"zipmap": False}},
        target_opset=_TARGET_OPSET,
    )
    data: bytes = onx.SerializeToString()

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if names != ["label", "probabilities"]:
        raise RuntimeError(f"{recipe.file}: unexpected ONNX outputs {names}")
    label, probabilities = session.run(None, {"features": features})
    n_classes = len(np.unique(target))
    if (
        label.dtype != np.int64
        or probabilities.dtype != np.float32
        or probabilities.shape != (len(target), n_classes)
    ):
        raise RuntimeError(
            f"{recipe.file}: unexpected output types "
            f"{label.dtype}, {probabilities.dtype}{probabilities.shape}"
        )
    agreement = float(np.mean(label == model.predict(features)))
    if agreement < _MIN_AGREEMENT:
        raise RuntimeError(
            f"{recipe.file}: ONNX agrees with scikit-learn on only "
            f"{agreement:.1%} of rows (need {_MIN_AGREEMENT:.0%})"
        )
    return data


def prepare_demo(
    data_dir: Path,
    progress: Callable[[str], None] = print,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
) -> Path:
    """Train (or reuse) the demo models in ``data_dir``; return the demo config's path.

    The config is rewritten only when its text changes (a new host or port).
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if _cache_is_valid(data_dir):
        progress(f"demo models: using the cached files in {data_dir}")
    else:
        progress(f"demo models: training into {data_dir} (first run, a few seconds)")
        files: dict[str, str] = {}
        for recipe in _recipes():
            progress(f"  {recipe.file}: {recipe.describe} on {recipe.dataset.replace('_', ' ')}")
            data = _train_and_export(recipe)
            _write_atomic(data_dir / recipe.file, data)
            files[recipe.file] = hashlib.sha256(data).hexdigest()
        manifest = {"versions": _versions(), "files": files}
        _write_atomic(data_dir / MANIFEST_NAME, json.dumps(manifest, indent=2).encode() + b"\n")
    config = data_dir / CONFIG_NAME
    text = demo_config_text(port=port, host=host)
    try:
        unchanged = config.read_text(encoding="utf-8") == text
    except OSError:
        unchanged = False
    if not unchanged:
        _write_atomic(config, text.encode("utf-8"))
    from failsoft.data.demo_profiles import ensure_demo_profiles

    ensure_demo_profiles(data_dir, config, _load, progress)
    _copy_runbooks(data_dir / RUNBOOKS_DIR)
    return config


def _copy_runbooks(folder: Path) -> None:
    """The bundled runbooks (package data), into the demo's ``runbooks/`` when changed."""
    from importlib.resources import files

    folder.mkdir(exist_ok=True)
    for bundled in files("failsoft").joinpath("runbooks").iterdir():
        if not bundled.name.endswith(".yaml"):
            continue
        data = bundled.read_bytes()
        target = folder / bundled.name
        try:
            unchanged = target.read_bytes() == data
        except OSError:
            unchanged = False
        if not unchanged:
            _write_atomic(target, data)


def demo_config_text(port: int = 8000, host: str = "127.0.0.1") -> str:
    """The demo configuration (YAML); model paths are relative to its folder."""
    # json.dumps gives a quoted string that is also valid YAML ("::1" included).
    return f"""\
# failsoft demo configuration, written by `failsoft demo`.
# Model file paths are relative to this file's folder.
# Check it with: failsoft check-config {CONFIG_NAME}

# Where the gateway listens.
server:
  host: {json.dumps(host)}
  port: {int(port)}

# Every answer is recorded in predictions/ next to this file (inputs and outputs are
# not): `failsoft trace REQUEST_ID` shows one; true labels sent to
# /v2/models/iris/feedback give `failsoft accuracy iris`.
predictions:
  enabled: true
  sample_rate: 1.0
  directory: predictions

models:
  # Iris flowers: 4 measurements in, a species (0, 1, 2) and its probabilities out.
  iris:
    # Input contract: a batch of rows of 4 float32 values (-1: any batch size).
    inputs:
      - {{name: features, datatype: FP32, shape: [-1, 4]}}
    # Output contract: checked on every answer; a reply that breaks it (a missing
    # output, NaN, a label outside 0-2) is a failure, retried or fallen back.
    outputs:
      - {{name: label, datatype: INT64, shape: [-1], labels: [0, 1, 2]}}
      - {{name: probabilities, datatype: FP32, shape: [-1, 3], range: [0, 1]}}
    versions:
      # v1 runs in 2 supervised worker processes: kill one and traffic moves over.
      v1: {{backend: process, replicas: 2, worker: {{backend: onnx, path: iris-v1.onnx}}}}
      # v2 is a different model (gradient boosting) served in-process.
      v2: {{backend: onnx, path: iris-v2.onnx}}
    # Requests that do not name a version go to v1.
    default_version: v1
    # Each request gets 1 s (a client may ask for less with Failsoft-Timeout-Ms).
    timeout_ms: 1000
    # Every second each replica answers a known flower; a wrong answer counts as down.
    health_check:
      inputs: {{features: [[5.1, 3.5, 1.4, 0.2]]}}
      expect: {{label: [0]}}
    # When v1 cannot answer: v2, then the last good answer for the same input,
    # then petal-size rules. Such answers say Failsoft-Degraded: true.
    fallback:
      - {{version: v2}}
      - {{stale_cache: true}}
      - {{python: "failsoft.demo:iris_rules"}}
    # Drift of the inputs and outputs against each version's reference profile
    # (built from the training data): see `failsoft drift status iris`.
    drift:
      profiles: {{v1: iris-v1.profile.json, v2: iris-v2.profile.json}}

  # Breast cancer diagnosis: 30 features in, benign/malignant and probabilities out.
  breast-cancer:
    inputs:
      - {{name: features, datatype: FP32, shape: [-1, 30]}}
    outputs:
      - {{name: label, datatype: INT64, shape: [-1]}}
      - {{name: probabilities, datatype: FP32, shape: [-1, 2]}}
    versions:
      # A scaler + logistic regression pipeline, in-process.
      v1: {{backend: onnx, path: breast-cancer-v1.onnx}}
    drift: {{profile: breast-cancer-v1.profile.json}}

# Runbooks: what failsoft does by itself when an incident opens (the bundled
# {RUNBOOKS_DIR}/*.yaml next to this file). all-replicas-out notifies the webhook
# oncall (give it a URL here: webhooks: {{oncall: "https://..."}}), then waits for
# `failsoft incident approve N` before switching the failing version off.
runbooks:
  dir: {RUNBOOKS_DIR}
"""


def iris_rules(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The iris heuristic of last resort: the classic petal-size rules.

    Petal length under 2.45 cm is setosa; otherwise petal width under
    1.75 cm is versicolor, else virginica (about 95% right on the dataset).
    """
    features = inputs["features"]
    petal_length, petal_width = features[:, 2], features[:, 3]
    label = np.where(petal_length < 2.45, 0, np.where(petal_width < 1.75, 1, 2)).astype(np.int64)
    probabilities = np.full((len(label), 3), 0.05, dtype=np.float32)
    probabilities[np.arange(len(label)), label] = 0.9
    return {"label": label, "probabilities": probabilities}


def usage_text(base_url: str) -> str:
    """What the demo prints once it serves: URLs, a curl line and a tritonclient snippet."""
    base = base_url.rstrip("/")
    netloc = urlsplit(base).netloc or base
    body = (
        '{"inputs":[{"name":"features","datatype":"FP32","shape":[1,4],"data":[5.1,3.5,1.4,0.2]}]}'
    )
    return f"""\
failsoft demo is serving at {base}

  V2 infer (iris)           POST {base}/v2/models/iris/infer
  V2 infer (iris v2)        POST {base}/v2/models/iris/versions/v2/infer
  V2 infer (breast-cancer)  POST {base}/v2/models/breast-cancer/infer
  V1 predict (iris)         POST {base}/v1/models/iris:predict
  readiness                 GET  {base}/v2/health/ready
  metrics                   GET  {base}/metrics

Try it:

  curl -s -X POST {base}/v2/models/iris/infer -H 'content-type: application/json' -d '{body}'

  curl -s -X POST {base}/v1/models/iris:predict -H 'content-type: application/json' \\
    -d '{{"instances":[[5.1,3.5,1.4,0.2]]}}'

From Python (pip install 'tritonclient[http]'):

  import numpy as np
  import tritonclient.http as httpclient

  client = httpclient.InferenceServerClient("{netloc}")
  x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
  features = httpclient.InferInput("features", list(x.shape), "FP32")
  features.set_data_from_numpy(x)
  result = client.infer("iris", [features])
  print(result.as_numpy("label"), result.as_numpy("probabilities"))
"""
