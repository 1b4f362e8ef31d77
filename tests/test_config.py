from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from failsoft.cli import main
from failsoft.config import (
    ConfigError,
    HttpBackend,
    OnnxBackend,
    ProcessBackend,
    ServerConfig,
    load_config,
    parse_config,
)

EXAMPLE = """\
server: {host: 127.0.0.1, port: 8000}
models:
  iris:
    inputs:  [{name: features, datatype: FP32, shape: [-1, 4]}]
    outputs: [{name: label, datatype: INT64, shape: [-1]}]
    versions:
      v1: {backend: onnx, path: models/iris-v1.onnx, replicas: 2}
      v2: {backend: http, urls: [http://127.0.0.1:9601, http://127.0.0.1:9602]}
    default_version: v1
"""

MODEL = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}],
}


def problems_of(data: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value.problems


def with_versions(versions: dict[str, object], **extra: object) -> dict[str, object]:
    return {"models": {"m": {**MODEL, "versions": versions, **extra}}}


def test_issue_example_loads_and_resolves_paths_against_the_file(tmp_path: Path) -> None:
    path = tmp_path / "failsoft.yaml"
    path.write_text(EXAMPLE)
    config = load_config(path)
    iris = config.models["iris"]
    v1 = iris.versions["v1"]
    assert isinstance(v1, OnnxBackend)
    assert v1.path == tmp_path / "models" / "iris-v1.onnx"
    assert v1.replicas == 2
    v2 = iris.versions["v2"]
    assert isinstance(v2, HttpBackend)
    assert v2.urls == ["http://127.0.0.1:9601", "http://127.0.0.1:9602"]
    assert iris.default == "v1"
    assert config.server.max_body_bytes == 8 * 1024 * 1024


def test_unknown_keys_are_rejected_with_their_path() -> None:
    problems = problems_of(
        {
            "server": {"prot": 1},
            **with_versions({"v1": {"backend": "onnx", "path": "a", "paht": 1}}),
        }
    )
    assert "server.prot: unknown key" in problems
    assert "models.m.versions.v1.paht: unknown key" in problems


def test_wrong_values_name_the_path_and_what_was_expected() -> None:
    problems = problems_of(
        {
            "server": {"port": 70000},
            "models": {
                "m": {
                    "inputs": [{"name": "x", "datatype": "FP33", "shape": [-1, 4]}],
                    "outputs": MODEL["outputs"],
                    "versions": {"v1": {"backend": "onnx", "path": "a", "replicas": 0}},
                }
            },
        }
    )
    joined = "\n".join(problems)
    assert "server.port: Input should be less than or equal to 65535 (got 70000)" in problems
    assert "models.m.inputs[0].datatype:" in joined
    assert "'FP33'" in joined
    assert "models.m.versions.v1.replicas: Input should be greater than or equal to 1" in joined


def test_server_transport_limits_have_defaults_and_bounds() -> None:
    server = ServerConfig()
    assert (server.header_timeout_s, server.keep_alive_s, server.max_header_bytes) == (
        10.0,
        5.0,
        65536,
    )
    problems = problems_of(
        {
            "server": {"header_timeout_s": 0, "keep_alive_s": -1, "max_header_bytes": 100},
            **with_versions({"v1": {"backend": "onnx", "path": "a"}}),
        }
    )
    joined = "\n".join(problems)
    assert "server.header_timeout_s: Input should be greater than 0" in joined
    assert "server.keep_alive_s: Input should be greater than 0" in joined
    assert "server.max_header_bytes: Input should be greater than or equal to 1024" in joined


def test_a_short_admin_token_is_refused_without_echoing_it() -> None:
    (problem,) = problems_of(
        {
            "server": {"admin_token": "fifteen-chars!!"},
            **with_versions({"v1": {"backend": "onnx", "path": "a"}}),
        }
    )
    assert problem.startswith("server: admin_token must be at least 16 characters")
    assert "fifteen" not in problem
    assert ServerConfig(admin_token="sixteen-chars!!!").resolved_admin_token() == "sixteen-chars!!!"


def test_a_short_admin_token_in_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAILSOFT_ADMIN_TOKEN", "tiny-secret")
    with pytest.raises(ConfigError) as caught:
        ServerConfig().resolved_admin_token()
    assert str(caught.value).startswith("FAILSOFT_ADMIN_TOKEN: must be at least 16 characters")
    assert "tiny-secret" not in str(caught.value)
    # A configured token wins over the variable, which is then never used.
    assert ServerConfig(admin_token="x" * 16).resolved_admin_token() == "x" * 16
    monkeypatch.setenv("FAILSOFT_ADMIN_TOKEN", "y" * 16)
    assert ServerConfig().resolved_admin_token() == "y" * 16
    monkeypatch.delenv("FAILSOFT_ADMIN_TOKEN")
    assert ServerConfig().resolved_admin_token() is None


def test_unknown_backend_lists_the_choices() -> None:
    problems = problems_of(with_versions({"v1": {"backend": "tensorflow"}}))
    assert problems == [
        "models.m.versions.v1: backend must be one of onnx, sklearn, python, http, process, ray"
    ]


def test_missing_backend_key() -> None:
    (problem,) = problems_of(with_versions({"v1": {"path": "a.onnx"}}))
    assert problem.startswith("models.m.versions.v1: missing key 'backend'")


def test_sklearn_refused_without_a_sha256_pin() -> None:
    (problem,) = problems_of(with_versions({"v1": {"backend": "sklearn", "path": "m.joblib"}}))
    assert problem.startswith("models.m.versions.v1: sha256 is required")
    assert "pickle" in problem


def test_sklearn_accepted_with_a_pin() -> None:
    config = parse_config(
        with_versions({"v1": {"backend": "sklearn", "path": "m.joblib", "sha256": "ab" * 32}})
    )
    assert config.models["m"].versions["v1"].backend == "sklearn"


def test_default_version_must_exist_and_is_required_with_several_versions() -> None:
    one = {"backend": "onnx", "path": "a"}
    (problem,) = problems_of(with_versions({"v1": one, "v2": one}))
    assert "default_version is required" in problem
    (problem,) = problems_of(with_versions({"v1": one}, default_version="v9"))
    assert "default_version 'v9' is not one of the versions ['v1']" in problem


def test_process_backend_nests_a_local_worker() -> None:
    config = parse_config(
        with_versions(
            {
                "v1": {
                    "backend": "process",
                    "replicas": 3,
                    "worker": {"backend": "onnx", "path": "a"},
                }
            }
        )
    )
    version = config.models["m"].versions["v1"]
    assert isinstance(version, ProcessBackend)
    assert version.replicas == 3
    assert isinstance(version.worker, OnnxBackend)
    (problem,) = problems_of(
        with_versions(
            {"v1": {"backend": "process", "worker": {"backend": "http", "urls": ["http://a"]}}}
        )
    )
    assert problem.startswith("models.m.versions.v1.worker:")


def test_http_urls_are_checked() -> None:
    problems = problems_of(with_versions({"v1": {"backend": "http", "urls": ["ftp://x"]}}))
    assert problems[0].startswith("models.m.versions.v1.urls[0]:")
    (problem,) = problems_of(
        with_versions({"v1": {"backend": "http", "urls": ["http://a:1", "http://a:1/"]}})
    )
    assert "urls must be distinct" in problem


def test_duplicate_tensor_names_rejected() -> None:
    data = with_versions({"v1": {"backend": "onnx", "path": "a"}})
    data["models"]["m"]["inputs"] = MODEL["inputs"] * 2  # type: ignore[index]
    (problem,) = problems_of(data)
    assert "inputs names must be distinct" in problem


def test_top_level_must_be_a_mapping() -> None:
    assert problems_of([1, 2]) == ["(top level): expected a mapping with a 'models' key"]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("models:\n  m: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "invalid YAML" in caught.value.problems[0]
    assert caught.value.problems[0].startswith("line ")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.yaml")
    assert "cannot read" in caught.value.problems[0]


def test_check_config_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(EXAMPLE)
    runner = CliRunner()
    result = runner.invoke(main, ["check-config", str(good)])
    assert result.exit_code == 0
    assert result.stdout.strip() == "ok"
    assert "file not found" in result.stderr  # a warning, not an error
    strict = runner.invoke(main, ["check-config", "--strict", str(good)])
    assert strict.exit_code == 2

    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.replace("replicas: 2", "replicas: two"))
    result = runner.invoke(main, ["check-config", str(bad)])
    assert result.exit_code == 2
    assert "models.iris.versions.v1.replicas" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("expect", "problem"),
    [
        ({"nope": [1]}, "health_check.expect names 'nope', not one of the outputs"),
        ({"label": ["high"]}, "health_check.expect.label is not INT64 data like the output"),
    ],
)
def test_a_golden_answer_must_name_outputs_and_fit_their_datatype(
    expect: dict[str, list[object]], problem: str
) -> None:
    data = {
        "models": {
            "m": {
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
                "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
                "versions": {"v1": {"backend": "python", "function": "mod:fn"}},
                "health_check": {"inputs": {"x": [[1, 2]]}, "expect": expect},
            }
        }
    }
    with pytest.raises(ConfigError) as raised:
        parse_config(data)
    assert any(problem in line for line in raised.value.problems), raised.value.problems
