"""What the process backend hands its workers (the processes themselves: tests/integration)."""

from __future__ import annotations

import orjson

from failsoft.backends.process import worker_spec
from failsoft.config import Config, ModelConfig, ProcessBackend, ServerConfig

MODEL = ModelConfig.model_validate(
    {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
        "versions": {
            "v1": {
                "backend": "process",
                "worker": {"backend": "python", "function": "tests.backends.test_process:echo"},
            }
        },
    }
)
BACKEND = MODEL.versions["v1"]


def spec_for(server: ServerConfig | None) -> dict[str, object]:
    assert isinstance(BACKEND, ProcessBackend)
    spec: dict[str, object] = orjson.loads(worker_spec("m", "v1", MODEL, BACKEND, server))
    return spec


def test_a_worker_takes_the_gateways_limits_with_room_for_re_encoding() -> None:
    gateway = ServerConfig(
        max_body_bytes=16 << 20,
        max_connections=100,
        log_level="warning",
        admin_token="secret-admin-token-0123",
        require_keys=True,
    )
    spec = spec_for(gateway)
    assert spec["server"] == {
        "max_body_bytes": 32 << 20,
        "max_connections": 100,
        "log_level": "warning",
    }
    worker = Config.model_validate(
        {"server": spec["server"], "models": {"m": spec["config"]}}
    ).server
    assert worker.admin_token is None  # the gateway's secrets stay with the gateway
    assert not worker.require_keys  # keys and quotas were checked by the gateway


def test_the_worker_body_limit_stays_within_its_bound() -> None:
    spec = spec_for(ServerConfig(max_body_bytes=1 << 30))
    assert isinstance(spec["server"], dict)
    assert spec["server"]["max_body_bytes"] == 1 << 30
    assert spec_for(None)["server"] == spec_for(ServerConfig())["server"]


def test_a_worker_leaves_the_feature_constraints_to_the_gateway() -> None:
    data = MODEL.model_dump(mode="json", exclude_unset=True)
    data["inputs"][0].update(columns=["a", "b"], features={"b": {"max": 1}})
    data["input_policy"] = "degrade"
    data["fallback"] = [{"static": {"y": [0, 0]}}]
    model = ModelConfig.model_validate(data)
    backend = model.versions["v1"]
    assert isinstance(backend, ProcessBackend)
    spec = orjson.loads(worker_spec("m", "v1", model, backend, None))
    worker = Config.model_validate({"models": {"m": spec["config"]}}).models["m"]
    assert worker.input_policy == "reject"  # degrade without the gateway's fallback is invalid
    assert worker.inputs[0].features is None
    assert worker.inputs[0].columns is None
