"""The target a drill starts: its own tenants are added with fresh keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from failsoft.config import load_config
from failsoft.control.tenants import key_digest, new_key
from failsoft.drills.experiment import Experiment
from failsoft.drills.runner import _tenant_keys
from failsoft.drills.target import TargetError, TenantEntry, _with_tenants

CONFIG = """\
models:
  m:
    inputs: [{name: x, datatype: FP32, shape: [-1, 2]}]
    outputs: [{name: y, datatype: INT64, shape: [-1]}]
    versions:
      v1: {backend: onnx, path: models/m.onnx}
tenants:
  existing: {key_sha256: "%s"}
""" % ("a" * 64)


def test_the_drill_adds_its_tenants_to_a_copy_with_absolute_paths(tmp_path: Path) -> None:
    config = tmp_path / "failsoft.yaml"
    config.write_text(CONFIG)
    key = new_key()
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    copy = _with_tenants(config, {"ops": TenantEntry(key, "critical")}, scratch)

    loaded = load_config(copy)
    assert loaded.tenants["ops"].key_sha256 == key_digest(key)
    assert loaded.tenants["ops"].priority == "critical"
    assert "existing" in loaded.tenants
    assert loaded.models["m"].versions["v1"].path == tmp_path / "models" / "m.onnx"  # type: ignore[union-attr]
    assert config.read_text() == CONFIG  # the original is untouched


def test_a_tenant_the_configuration_already_has_needs_its_key(tmp_path: Path) -> None:
    config = tmp_path / "failsoft.yaml"
    config.write_text(CONFIG)
    with pytest.raises(TargetError, match="already has tenant 'existing'; give its key"):
        _with_tenants(config, {"existing": TenantEntry(new_key(), "default")}, tmp_path)


ROW = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}


def experiment(tenants: dict[str, object]) -> Experiment:
    return Experiment.model_validate(
        {
            "name": "t",
            "load": {
                "model": "m",
                "rate": 1,
                "duration_s": 1,
                "requests": [
                    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
                ],
                "tenants": tenants,
            },
        }
    )


def test_against_a_running_target_a_tenant_needs_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TargetError, match=r"load\.tenants\.ops: give key_env"):
        _tenant_keys(experiment({"ops": {"priority": "critical"}}))
    monkeypatch.setenv("OPS_KEY", "fsk_ops")
    assert _tenant_keys(experiment({"ops": {"key_env": "OPS_KEY"}})) == {"ops": "fsk_ops"}
