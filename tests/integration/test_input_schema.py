"""Input schema evolution on a real `failsoft serve`: `failsoft apply` and the admin API refuse
an incompatible change to a serving version's inputs, say why, and change nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from click.testing import CliRunner, Result

from failsoft.cli import main
from failsoft.drills.server import ServerProcess
from tests.integration.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.integration

ROW = [6.7, 3.0, 5.2, 2.3]


def iris(demo_dir: Path, petal_width_max: float, compatibility: str = "backward") -> str:
    return f"""
models:
  iris:
    inputs:
      - name: features
        datatype: FP32
        shape: [-1, 4]
        columns: [sepal_length, sepal_width, petal_length, petal_width]
        features:
          sepal_length: {{min: 4.0, max: 8.0}}
          petal_width: {{min: 0.0, max: {petal_width_max}}}
    outputs:
      - {{name: label, datatype: INT64, shape: [-1]}}
      - {{name: probabilities, datatype: FP32, shape: [-1, 3]}}
    versions:
      v1: {{backend: onnx, path: {demo_dir}/iris-v1.onnx}}
    input_policy: reject
    compatibility: {compatibility}
"""


def cli(server: ServerProcess, *args: str) -> Result:
    result = CliRunner().invoke(
        main, [*args, "--url", server.url], env={"FAILSOFT_ADMIN_TOKEN": ADMIN_TOKEN}
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in result.output
    return result


def history(server: ServerProcess) -> list[tuple[int, str]]:
    result = cli(server, "config", "history", "--json")
    assert result.exit_code == 0, result.output
    return [(r["revision"], r["status"]) for r in orjson.loads(result.stdout)["revisions"]]


def infer(server: ServerProcess, row: list[float]) -> httpx.Response:
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": row}]}
    return httpx.post(f"{server.url}/v2/models/iris/infer", json=body, timeout=10)


def test_apply_refuses_an_incompatible_input_change_and_changes_nothing(
    start_server: Callable[[str], ServerProcess], demo_dir: Path, tmp_path: Path
) -> None:
    server = start_server(iris(demo_dir, 2.6))
    assert infer(server, ROW).status_code == 200
    assert history(server) == [(1, "applied")]

    tightened = tmp_path / "tightened.yaml"
    tightened.write_text(iris(demo_dir, 2.0))
    for args in (("--dry-run",), ("--yes",)):
        refused = cli(server, "apply", str(tightened), *args)
        assert refused.exit_code == 1, refused.output
        assert refused.stderr.startswith(
            "failsoft: refused: incompatible change to the inputs of a serving version "
            "(compatibility iris: backward): models.iris.versions.v1.inputs.features"
            ".features.petal_width.max: max 2.6 -> 2 (breaks backward)"
        ), refused.stderr
    assert history(server) == [(1, "applied")]  # nothing stored, nothing applied
    assert infer(server, ROW).status_code == 200  # 2.3 is still within the serving max

    # The admin API says the same, with a 409.
    proposed = yaml.safe_load(tightened.read_text())
    answer = httpx.post(
        f"{server.url}/admin/config",
        json={"config": proposed},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30,
    )
    assert answer.status_code == 409
    assert "petal_width.max: max 2.6 -> 2 (breaks backward)" in answer.json()["error"]
    assert history(server) == [(1, "applied")]

    # Loosening is backward compatible: applied, and served at once.
    loosened = tmp_path / "loosened.yaml"
    loosened.write_text(iris(demo_dir, 3.0))
    applied = cli(server, "apply", str(loosened), "--yes")
    assert applied.exit_code == 0, applied.output
    assert history(server) == [(2, "applied"), (1, "superseded")]
    assert infer(server, [6.7, 3.0, 5.2, 2.9]).status_code == 200
    too_wide = infer(server, [6.7, 3.0, 5.2, 3.5])
    assert too_wide.status_code == 422
    assert too_wide.json()["violations"][0]["column"] == "petal_width"

    # A rollback is never refused for it: going back to what served is the way out.
    rolled = cli(server, "config", "rollback", "--yes")
    assert rolled.exit_code == 0, rolled.output
    assert history(server)[0] == (3, "applied")
    assert infer(server, [6.7, 3.0, 5.2, 2.9]).status_code == 422  # max 2.6 again

    # Under `none`, set in a revision of its own, the tightening goes through.
    relaxed = tmp_path / "relaxed.yaml"
    relaxed.write_text(iris(demo_dir, 3.0, "none"))
    assert cli(server, "apply", str(relaxed), "--yes").exit_code == 0
    now_tight = tmp_path / "now-tight.yaml"
    now_tight.write_text(iris(demo_dir, 2.0, "none"))
    assert cli(server, "apply", str(now_tight), "--yes").exit_code == 0
    assert infer(server, ROW).status_code == 422
    assert history(server)[0] == (5, "applied")


def test_worker_processes_serve_under_degrade_and_never_see_a_violator(
    start_server: Callable[[str], ServerProcess], tmp_path: Path
) -> None:
    server = start_server(
        """
models:
  m:
    inputs:
      - name: x
        datatype: FP32
        shape: [-1, 3]
        columns: [a, b, c]
        features: {b: {min: -10, max: 10}}
      - {name: k, datatype: INT64, shape: [-1, 2]}
    outputs:
      - {name: label, datatype: INT64, shape: [-1]}
    versions:
      v1:
        backend: process
        replicas: 2
        worker: {backend: python, function: "tests.integration._models:first_label"}
    health_check: {enabled: false}
    input_policy: degrade
    fallback: [{static: {label: 7}}]
"""
    )

    def send(b: float) -> httpx.Response:
        body = {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, b, 3]},
                {"name": "k", "datatype": "INT64", "shape": [1, 2], "data": [4, 5]},
            ]
        }
        return httpx.post(f"{server.url}/v2/models/m/infer", json=body, timeout=10)

    good = send(2)
    assert good.status_code == 200
    assert good.headers["failsoft-served-by"] in ("m/v1/w0", "m/v1/w1")
    assert good.json()["outputs"][0]["data"] == [1]

    def attempts() -> float:
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        lines = [
            line for line in metrics.splitlines() if line.startswith("failsoft_attempts_total")
        ]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    before = attempts()  # the good request's (a hedge or retry may have joined it)
    assert before >= 1
    bad = send(50)
    assert bad.status_code == 200
    assert bad.headers["failsoft-degraded"] == "true"
    assert bad.headers["failsoft-served-by"] == "m/v1/fallback:static"
    assert "column 'b': value 50 is above max 10" in bad.headers["failsoft-data-warning"]
    assert bad.json()["outputs"][0]["data"] == [7]
    assert attempts() == before  # no worker saw the violator
