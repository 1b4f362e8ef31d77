"""The prediction log's hooks and routes in the app, in-process (no model needs to run)."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest

from failsoft.config import parse_config
from failsoft.data.prediction_log import segment_files
from failsoft.server.serve import build_app

TOKEN = "predictions-routes-admin-token"


def config(directory: Path, enabled: bool = True) -> dict[str, object]:
    return {
        "server": {"admin_token": TOKEN},
        "predictions": {"enabled": enabled, "directory": str(directory)},
        "models": {
            "m": {
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
                "versions": {
                    "v1": {"backend": "python", "function": "tests.integration._models:heuristic"}
                },
            }
        },
    }


ROW = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


async def test_a_refused_request_is_logged_with_its_status_and_failure_class(
    tmp_path: Path,
) -> None:
    app = build_app(parse_config(config(tmp_path)))
    app.draining = True  # every inference is refused: 503, overload
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        refused = await http.post(
            "/v2/models/m/infer", json=ROW, headers={"x-request-id": "refused-1"}
        )
        assert refused.status_code == 503
        assert app.predictions is not None
        app.predictions.close()
        [path] = segment_files(tmp_path)
        [record] = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        assert record["request_id"] == "refused-1"
        assert record["status"] == 503
        assert record["failure_class"] == "overload"
        assert record["checks"] == {"input_contract": "not reached"}
        admin = {"Authorization": f"Bearer {TOKEN}"}
        traced = await http.get("/admin/predictions/refused-1", headers=admin)
        assert traced.status_code == 200
        assert traced.json()["prediction"]["error"].startswith("shutting down")
        assert traced.json()["audit_note"] == "no control store: no audit log"
        assert (await http.get("/admin/accuracy", headers=admin)).json()["models"] == {}
        assert (await http.get("/admin/accuracy")).status_code == 401
        assert (await http.post("/admin/accuracy", headers=admin)).status_code == 405


async def test_with_the_log_off_its_routes_say_so(tmp_path: Path) -> None:
    app = build_app(parse_config(config(tmp_path, enabled=False)))
    assert app.predictions is None
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        admin = {"Authorization": f"Bearer {TOKEN}"}
        off = await http.get("/admin/accuracy", headers=admin)
        assert off.status_code == 404
        assert "predictions.enabled" in off.json()["error"]
        feedback = await http.post("/v2/models/m/feedback", json={"request_id": "a", "label": 1})
        assert feedback.status_code == 404


@pytest.mark.parametrize("policy", ["flag", "degrade"])
async def test_a_served_answer_records_the_input_constraints_verdict(
    tmp_path: Path, policy: str
) -> None:
    from tests.server.test_data_policy import config as policy_config
    from tests.server.test_data_policy import rows

    data = policy_config(policy)
    data["predictions"] = {"enabled": True, "directory": str(tmp_path)}
    app = build_app(parse_config(data))
    await app.runtime.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            bad = await http.post(
                "/v2/models/m/infer", json=rows((1, 99)), headers={"x-request-id": "bad-1"}
            )
            good = await http.post(
                "/v2/models/m/infer", json=rows((1, 2)), headers={"x-request-id": "good-1"}
            )
        assert (bad.status_code, good.status_code) == (200, 200)
    finally:
        await app.runtime.close()
    assert app.predictions is not None
    app.predictions.close()
    [path] = segment_files(tmp_path)
    found = {r["request_id"]: r for r in map(orjson.loads, path.read_bytes().splitlines())}
    flagged = found["bad-1"]["checks"]["input_constraints"]
    assert flagged.startswith(f"{policy}: 1 row(s) break the input constraints")
    assert "input_constraints" not in found["good-1"]["checks"]
    assert found["bad-1"]["degraded"] is (policy == "degrade")
