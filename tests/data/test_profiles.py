"""Reference profiles: built from CSV, Parquet and .npy with a real model, read back, checked."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from failsoft.backends import _local_loader
from failsoft.config import ModelConfig, ProcessBackend, load_config
from failsoft.data.profiles import (
    Profile,
    ProfileError,
    build_profile,
    check_fits,
    columns_for,
    read_data,
)
from failsoft.data.sketches import CategoricalSketch, NumericSketch
from failsoft.demo import CONFIG_NAME, _load
from failsoft.protocol.spec import TensorSpec

NAMES = ["sepal length", "sepal width", "petal length", "petal width"]


def iris(demo_dir: Path) -> ModelConfig:
    return load_config(demo_dir / CONFIG_NAME).models["iris"]


def iris_predict(demo_dir: Path):  # type: ignore[no-untyped-def]
    model = iris(demo_dir)
    backend = model.versions["v1"]
    assert isinstance(backend, ProcessBackend)
    return _local_loader(backend.worker, model)()  # type: ignore[arg-type]


def write_csv(
    path: Path, rows: np.ndarray, header: list[str], extra: list[str] | None = None
) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header + (["species"] if extra else []))
        for index, row in enumerate(rows):
            writer.writerow([*row.tolist(), *([extra[index]] if extra else [])])


def test_a_profile_from_csv_has_every_column_its_labels_and_the_model_outputs(
    demo_dir: Path, tmp_path: Path
) -> None:
    features, target = _load("iris")
    path = tmp_path / "iris.csv"
    write_csv(path, features, NAMES, [str(t) for t in target])
    model = iris(demo_dir)
    tensors, labels = read_data(path, model.inputs, drop=["species"])
    assert tensors["features"].dtype == np.float32
    np.testing.assert_allclose(tensors["features"], features, rtol=1e-6)
    assert labels["features[2]"] == "petal length"
    profile = build_profile(
        "iris", "v1", model.inputs, model.outputs, tensors, iris_predict(demo_dir), labels=labels
    )
    assert [c.name for c in profile.inputs] == [f"features[{i}]" for i in range(4)]
    assert [c.name for c in profile.outputs] == [
        "label",
        "probabilities[0]",
        "probabilities[1]",
        "probabilities[2]",
    ]
    petal = profile.inputs[2].sketch
    assert isinstance(petal, NumericSketch)
    assert petal.count == 150
    assert petal.min == pytest.approx(1.0)
    assert petal.max == pytest.approx(6.9)
    label = profile.outputs[0].sketch
    assert isinstance(label, CategoricalSketch)
    assert sum(label.counts().values()) == 150
    assert set(label.counts()) == {"0", "1", "2"}
    # The bytes round-trip, sketches and all.
    again = Profile.from_bytes(profile.to_bytes())
    assert again.sha256 == profile.sha256
    assert again.inputs[2].display == "features[2] (petal length)"
    assert again.summary()["inputs"][2]["p50"] == pytest.approx(4.35, abs=0.06)


def test_parquet_and_npy_give_the_same_inputs(demo_dir: Path, tmp_path: Path) -> None:
    features, _ = _load("iris")
    model = iris(demo_dir)
    table = pa.table({f"features[{i}]": features[:, i] for i in range(4)})
    pq.write_table(table, tmp_path / "iris.parquet")
    np.save(tmp_path / "iris.npy", features)
    from_parquet, _ = read_data(tmp_path / "iris.parquet", model.inputs)
    from_npy, _ = read_data(tmp_path / "iris.npy", model.inputs)
    np.testing.assert_array_equal(from_parquet["features"], from_npy["features"])


def test_nan_cells_count_as_nulls(demo_dir: Path, tmp_path: Path) -> None:
    features, _ = _load("iris")
    features = features.copy()
    features[:15, 1] = np.nan
    np.save(tmp_path / "holes.npy", features)
    model = iris(demo_dir)
    tensors, _ = read_data(tmp_path / "holes.npy", model.inputs)
    profile = build_profile(
        "iris",
        "v1",
        model.inputs,
        model.outputs,
        tensors,
        lambda t: {
            "label": t["features"][:, 0].astype(np.int64),
            "probabilities": np.zeros((len(t["features"]), 3), np.float32),
        },
    )
    assert profile.inputs[1].null_rate == pytest.approx(0.1)
    assert profile.inputs[0].null_rate == 0


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.csv", "a,b,c,d\n1,2,x,4\n", "value 'x' in data row 1 is not FP32"),
        ("short.csv", "a,b\n1,2\n", "features needs 4 columns (the file has 2: a, b"),
        ("data.txt", "1,2,3,4\n", "give a .csv, .parquet or .npy file"),
        ("broken.parquet", "not parquet at all", "not a readable PARQUET file"),
        ("broken.npy", "not an array", "not a readable .npy file"),
    ],
)
def test_data_files_that_do_not_fit_are_refused_with_the_reason(
    demo_dir: Path, tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ProfileError, match=None) as refused:
        read_data(path, iris(demo_dir).inputs)
    assert message in str(refused.value)
    assert str(path) in str(refused.value)


def test_a_npy_of_the_wrong_width_is_refused(demo_dir: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "three.npy", np.zeros((5, 3), dtype=np.float32))
    with pytest.raises(ProfileError, match=r"shape \[5, 3\] does not fit input 'features'"):
        read_data(tmp_path / "three.npy", iris(demo_dir).inputs)


def test_a_profile_of_another_model_or_missing_features_does_not_fit(demo_dir: Path) -> None:
    profile = Profile.load(demo_dir / "iris-v1.profile.json")
    model = iris(demo_dir)
    check_fits(profile, "iris", model.inputs, "here")
    with pytest.raises(ProfileError, match="the profile is of model 'iris', not 'breast-cancer'"):
        check_fits(profile, "breast-cancer", model.inputs, "here")
    wider = [TensorSpec(name="features", datatype="FP32", shape=[-1, 6])]
    with pytest.raises(
        ProfileError, match=r"lacks the input feature\(s\) features\[4\], features\[5\]"
    ):
        check_fits(profile, "iris", wider, "here")
    renamed = [TensorSpec(name="x", datatype="FP32", shape=[-1, 4])]
    with pytest.raises(ProfileError, match=r"lacks the input feature\(s\) x\[0\]"):
        check_fits(profile, "iris", renamed, "here")


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"{not json", "not JSON"),
        (b'{"format": "other"}', "no format: failsoft-profile"),
        (b'{"format": "failsoft-profile", "format_version": 99}', "format version 99"),
        (b'{"format": "failsoft-profile", "format_version": 1}', "missing key"),
    ],
)
def test_a_file_that_is_not_a_profile_is_refused(blob: bytes, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        Profile.from_bytes(blob, "p.json")


def test_the_demo_profiles_are_the_same_bytes_on_every_build(
    demo_dir: Path, tmp_path: Path
) -> None:
    from failsoft.data.demo_profiles import ensure_demo_profiles

    first = (demo_dir / "iris-v2.profile.json").read_bytes()
    for name in ("iris-v1.onnx", "iris-v2.onnx", "breast-cancer-v1.onnx"):
        (tmp_path / name).write_bytes((demo_dir / name).read_bytes())
    (tmp_path / CONFIG_NAME).write_text((demo_dir / CONFIG_NAME).read_text())
    ensure_demo_profiles(tmp_path, tmp_path / CONFIG_NAME, _load, lambda message: None)
    assert (tmp_path / "iris-v2.profile.json").read_bytes() == first
    cancer = Profile.load(tmp_path / "breast-cancer-v1.profile.json")
    assert cancer.rows == 569
    assert len(cancer.inputs) == 30


def test_columns_of_a_tensor_without_fixed_columns_are_refused() -> None:
    with pytest.raises(ProfileError, match=r"shape \[-1, -1\]"):
        columns_for([TensorSpec(name="x", datatype="FP32", shape=[-1, -1])])
    assert [c.name for c in columns_for([TensorSpec(name="y", datatype="INT64", shape=[-1])])] == [
        "y"
    ]
