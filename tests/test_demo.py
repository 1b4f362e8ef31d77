"""The demo models: real training into a temporary folder (a few seconds)."""

from __future__ import annotations

import json
import shutil
import time
from importlib.resources import files
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from sklearn.datasets import load_breast_cancer, load_iris

from failsoft import demo
from failsoft.config import ProcessBackend, load_config, parse_config
from failsoft.control.runbook_model import load_dir

REPO = Path(__file__).resolve().parents[1]
EXPECTED = {
    "iris-v1.onnx": (load_iris, 4, 3),
    "iris-v2.onnx": (load_iris, 4, 3),
    "breast-cancer-v1.onnx": (load_breast_cancer, 30, 2),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("demo")
    demo.prepare_demo(data_dir, progress=lambda _: None)
    return data_dir


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _snapshot(data_dir: Path) -> dict[str, tuple[int, int, bytes]]:
    return {
        str(p.relative_to(data_dir)): (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes())
        for p in sorted(data_dir.rglob("*"))
        if p.is_file()
    }


def test_config_loads_and_names_the_files(trained: Path) -> None:
    config_path = trained / demo.CONFIG_NAME
    config = load_config(config_path)
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8000
    assert set(config.models) == {"iris", "breast-cancer"}
    iris = config.models["iris"]
    assert iris.default == "v1"
    assert [(s.name, s.datatype, s.shape) for s in iris.inputs] == [("features", "FP32", [-1, 4])]
    assert [(s.name, s.datatype, s.shape) for s in iris.outputs] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP32", [-1, 3]),
    ]
    v1 = iris.versions["v1"]
    assert isinstance(v1, ProcessBackend)
    assert v1.replicas == 2
    assert v1.worker.path == trained / "iris-v1.onnx"  # type: ignore[union-attr]
    assert iris.versions["v2"].path == trained / "iris-v2.onnx"  # type: ignore[union-attr]
    bc = config.models["breast-cancer"].versions["v1"]
    assert bc.path == trained / "breast-cancer-v1.onnx"  # type: ignore[union-attr]
    # Paths in the file are relative, so the folder can be moved.
    text = config_path.read_text()
    assert str(trained) not in text
    assert "#" in text  # commented for people who copy it


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_onnx_outputs_and_accuracy(trained: Path, name: str) -> None:
    loader, n_features, n_classes = EXPECTED[name]
    features, target = loader(return_X_y=True)
    session = _session(trained / name)
    assert [(i.name, i.type) for i in session.get_inputs()] == [("features", "tensor(float)")]
    assert [(o.name, o.type) for o in session.get_outputs()] == [
        ("label", "tensor(int64)"),
        ("probabilities", "tensor(float)"),
    ]
    label, probabilities = session.run(None, {"features": features.astype(np.float32)})
    assert label.dtype == np.int64
    assert label.shape == (len(target),)
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (len(target), n_classes)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert np.array_equal(label, probabilities.argmax(axis=1))
    assert float(np.mean(label == target)) >= 0.9
    assert session.get_inputs()[0].shape[1] == n_features


def test_known_iris_row_is_setosa(trained: Path) -> None:
    row = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    for name in ("iris-v1.onnx", "iris-v2.onnx"):
        label, _ = _session(trained / name).run(None, {"features": row})
        assert label.tolist() == [0]


def test_manifest_records_hashes_and_versions(trained: Path) -> None:
    manifest = json.loads((trained / demo.MANIFEST_NAME).read_text())
    assert set(manifest["files"]) == set(demo.MODEL_FILES)
    assert set(manifest["versions"]) >= {"sklearn", "skl2onnx"}
    assert not [p for p in trained.iterdir() if p.name.endswith(".tmp")]


def test_second_call_is_a_cache_hit(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _snapshot(trained)

    def no_training(*_: object) -> bytes:
        raise AssertionError("retrained although the cache is valid")

    monkeypatch.setattr(demo, "_train_and_export", no_training)
    messages: list[str] = []
    start = time.perf_counter()
    config = demo.prepare_demo(trained, progress=messages.append)
    elapsed = time.perf_counter() - start
    assert config == trained / demo.CONFIG_NAME
    assert elapsed < 1.0
    assert _snapshot(trained) == before
    assert any("cached" in m for m in messages)


def _copy(trained: Path, tmp_path: Path) -> Path:
    target = tmp_path / "demo"
    shutil.copytree(trained, target)
    return target


def test_corrupted_file_is_retrained(trained: Path, tmp_path: Path) -> None:
    data_dir = _copy(trained, tmp_path)
    (data_dir / "iris-v2.onnx").write_bytes(b"not an onnx model")
    messages: list[str] = []
    demo.prepare_demo(data_dir, progress=messages.append)
    assert any("training" in m for m in messages)
    assert demo._cache_is_valid(data_dir)
    label, _ = _session(data_dir / "iris-v2.onnx").run(
        None, {"features": np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)}
    )
    assert label.tolist() == [0]


@pytest.mark.parametrize("damage", ["missing_file", "missing_manifest", "bad_manifest"])
def test_incomplete_cache_is_retrained(trained: Path, tmp_path: Path, damage: str) -> None:
    data_dir = _copy(trained, tmp_path)
    if damage == "missing_file":
        (data_dir / "breast-cancer-v1.onnx").unlink()
    elif damage == "missing_manifest":
        (data_dir / demo.MANIFEST_NAME).unlink()
    else:
        (data_dir / demo.MANIFEST_NAME).write_text("[1, 2")
    assert not demo._cache_is_valid(data_dir)
    demo.prepare_demo(data_dir, progress=lambda _: None)
    assert demo._cache_is_valid(data_dir)


def test_new_library_version_invalidates_the_cache(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = _copy(trained, tmp_path)
    assert demo._cache_is_valid(data_dir)
    real = demo._versions()
    monkeypatch.setattr(demo, "_versions", lambda: {**real, "sklearn": "0.0.0"})
    assert not demo._cache_is_valid(data_dir)


def test_the_demo_configuration_loads_the_bundled_runbook(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # runbooks.dir is beside the configuration, not the cwd
    config = load_config(trained / demo.CONFIG_NAME)
    assert config.runbooks.dir == str(trained / demo.RUNBOOKS_DIR)
    specs = load_dir(config.runbooks.dir)
    assert [spec.name for spec in specs] == ["all-replicas-out"]
    assert specs[0].mode == "act"
    shipped = files("failsoft").joinpath("runbooks", "all-replicas-out.yaml").read_bytes()
    assert (trained / demo.RUNBOOKS_DIR / "all-replicas-out.yaml").read_bytes() == shipped
    assert (REPO / "runbooks" / "all-replicas-out.yaml").read_bytes() == shipped


def test_host_and_port_rewrite_only_the_config(trained: Path, tmp_path: Path) -> None:
    data_dir = _copy(trained, tmp_path)
    models = {n: (data_dir / n).read_bytes() for n in demo.MODEL_FILES}
    config_path = demo.prepare_demo(data_dir, progress=lambda _: None, host="::1", port=9123)
    config = load_config(config_path)
    assert (config.server.host, config.server.port) == ("::1", 9123)
    assert {n: (data_dir / n).read_bytes() for n in demo.MODEL_FILES} == models


@pytest.mark.parametrize(("host", "port"), [("127.0.0.1", 8000), ("0.0.0.0", 0), ("::1", 65535)])
def test_config_text_validates(host: str, port: int) -> None:
    config = parse_config(yaml.safe_load(demo.demo_config_text(port=port, host=host)))
    assert (config.server.host, config.server.port) == (host, port)


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FAILSOFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo.default_data_dir() == tmp_path / "home" / "demo"
    monkeypatch.delenv("FAILSOFT_HOME")
    assert demo.default_data_dir() == tmp_path / "xdg" / "failsoft" / "demo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert demo.default_data_dir() == tmp_path / "user" / ".cache" / "failsoft" / "demo"


def test_usage_text() -> None:
    text = demo.usage_text("http://127.0.0.1:8123/")
    for path in (
        "/v2/models/iris/infer",
        "/v2/models/breast-cancer/infer",
        "/v1/models/iris:predict",
        "/metrics",
        "/v2/health/ready",
    ):
        assert f"http://127.0.0.1:8123{path}" in text
    curl = next(line for line in text.splitlines() if "curl" in line and "/v2/" in line)
    body = curl.split("-d '", 1)[1].rstrip("'")
    assert json.loads(body)["inputs"][0]["shape"] == [1, 4]
    assert 'InferenceServerClient("127.0.0.1:8123")' in text
    assert "tritonclient.http" in text


def test_iris_rules_heuristic_is_mostly_right() -> None:
    from sklearn.datasets import load_iris

    from failsoft.demo import iris_rules

    iris = load_iris()
    answer = iris_rules({"features": iris.data.astype(np.float32)})
    accuracy = float((answer["label"] == iris.target).mean())
    assert accuracy > 0.9
    np.testing.assert_allclose(answer["probabilities"].sum(axis=1), 1.0, rtol=1e-6)
