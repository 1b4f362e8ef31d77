"""`failsoft profile build|show` and `failsoft drift status` without a gateway where they can."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
from click.testing import CliRunner, Result

from failsoft.cli import main
from failsoft.demo import CONFIG_NAME, _load


def run(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in result.output
    return result


def test_build_then_show_a_profile_from_a_parquet_file(demo_dir: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    features, target = _load("iris")
    table = {name: features[:, i] for i, name in enumerate(["sl", "sw", "pl", "pw"])}
    pq.write_table(pa.table({**table, "species": target}), tmp_path / "iris.parquet")
    out = tmp_path / "iris.profile.json"
    built = run(
        "profile",
        "build",
        "iris",
        str(tmp_path / "iris.parquet"),
        "--config",
        str(demo_dir / CONFIG_NAME),
        "--version",
        "v2",
        "--drop",
        "species",
        "--out",
        str(out),
    )
    assert built.exit_code == 0, built.output
    assert f"profile of iris/v2: 150 rows, 4 input and 4 output columns -> {out}" in built.output
    shown = run("profile", "show", str(out))
    assert shown.exit_code == 0
    assert "model iris version v2, 150 rows from iris.parquet" in shown.output
    line = next(row for row in shown.output.splitlines() if "features[2] (pl)" in row)
    assert "min 1  p1 1.1  p50 4.4  p99 6.7  max 6.9" in line
    data = orjson.loads(run("profile", "show", str(out), "--json").output)
    assert [column["label"] for column in data["inputs"]] == ["sl", "sw", "pl", "pw"]
    assert data["outputs"][0]["name"] == "label"


def test_profile_errors_are_one_line_with_exit_2(demo_dir: Path, tmp_path: Path) -> None:
    config = str(demo_dir / CONFIG_NAME)
    np.save(tmp_path / "narrow.npy", np.zeros((3, 2), dtype=np.float32))
    cases = [
        (
            ["iris", str(tmp_path / "narrow.npy"), "--config", config],
            "does not fit input 'features'",
        ),
        (["nosuch", str(tmp_path / "narrow.npy"), "--config", config], "no model 'nosuch'"),
        (
            ["iris", str(tmp_path / "narrow.npy"), "--config", config, "--version", "v7"],
            "has no version 'v7'",
        ),
        (["iris", str(tmp_path / "missing.csv"), "--config", config], "no such file"),
    ]
    for args, message in cases:
        result = run("profile", "build", *args, "--out", str(tmp_path / "p.json"))
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    (tmp_path / "junk.json").write_text("[]")
    shown = run("profile", "show", str(tmp_path / "junk.json"))
    assert shown.exit_code == 2
    assert "not a failsoft profile" in shown.output


def test_help_has_examples() -> None:
    for command in (["profile", "build"], ["profile", "show"], ["drift", "status"]):
        result = run(*command, "--help")
        assert result.exit_code == 0
        assert "Example:" in result.output


def test_drift_status_says_when_the_gateway_is_down() -> None:
    result = run("drift", "status", "iris", "--url", "http://127.0.0.1:9")
    assert result.exit_code == 1
    assert "cannot reach the gateway at http://127.0.0.1:9" in result.output


def test_check_config_refuses_a_profile_of_another_model(demo_dir: Path) -> None:
    text = (demo_dir / CONFIG_NAME).read_text()
    wrong = demo_dir / "check-wrong-profile.yaml"  # beside the model files
    wrong.write_text(text.replace("breast-cancer-v1.profile.json", "iris-v1.profile.json"))
    refused = run("check-config", str(wrong))
    assert refused.exit_code == 2
    assert "the profile is of model 'iris', not 'breast-cancer'" in refused.output
    gone = demo_dir / "check-missing-profile.yaml"
    gone.write_text(text.replace("breast-cancer-v1.profile.json", "nowhere.profile.json"))
    warned = run("check-config", str(gone))
    assert warned.exit_code == 0
    assert "warning: models.breast-cancer.drift (v1): profile not found" in warned.output
    assert run("check-config", str(gone), "--strict").exit_code == 2
    assert run("check-config", str(demo_dir / CONFIG_NAME)).output.strip() == "ok"
