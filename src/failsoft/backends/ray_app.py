"""A Ray Serve application serving one failsoft model version over V2: what ``backend: ray`` calls.

Deploy a local version (onnx, sklearn, python) of a failsoft configuration,
one application per replica that failsoft should see:

    serve run failsoft.backends.ray_app:app config=failsoft.yaml model=iris version=v2

(``name``/``route_prefix`` go in a Serve config file, or use ``application``
from Python with ``serve.run(..., name=..., route_prefix=...)``.) The model
is loaded by failsoft's own loaders, so an sklearn pickle must be pinned by
sha256 here too. Requests are V2 under the route prefix:
``POST <prefix>/v2/models/<model>[/versions/<version>]/infer`` and
``GET .../ready``. Errors are V2 error objects (``{"error": ...}``), which
tells the gateway that the model, not Ray, failed (backends/ray_serve.py).
"""

from __future__ import annotations

from typing import Any

import orjson
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import Response

from failsoft.backends import _local_loader
from failsoft.config import (
    ModelConfig,
    OnnxBackend,
    ProcessBackend,
    PythonBackend,
    SklearnBackend,
    load_config,
)
from failsoft.errors import FailsoftError
from failsoft.protocol.types import InferResponse, Tensors
from failsoft.protocol.v2 import decode_infer_request, encode_infer_response

HEADER_LENGTH = "inference-header-content-length"


class V2Model:
    """One Serve replica: the version's model, loaded once, answering V2 calls."""

    def __init__(self, model: str, version: str, config: dict[str, Any]) -> None:
        model_config = ModelConfig.model_validate(config)
        local = model_config.versions[version]
        if isinstance(local, ProcessBackend):
            local = local.worker
        if not isinstance(local, OnnxBackend | SklearnBackend | PythonBackend):
            raise ValueError(f"{model}/{version} is not a local model ({local.backend})")
        self._predict = _local_loader(local, model_config)()
        self._model, self._version = model, version
        base = f"/v2/models/{model}"
        self._paths = (base, f"{base}/versions/{version}")

    def infer(self, inputs: Tensors) -> Tensors:
        """The deployment-handle path (``via: handle``): tensors in, tensors out."""
        return self._predict(inputs)

    def ready(self) -> bool:
        return True

    def _route(self, path: str, suffix: str) -> bool:
        return any(path.endswith(prefix + suffix) for prefix in self._paths)

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.rstrip("/")
        if request.method == "GET" and self._route(path, "/ready"):
            return Response(b'{"ready":true}', media_type="application/json")
        if request.method != "POST" or not self._route(path, "/infer"):
            return _error(404, f"no route {request.method} {path}")
        length = request.headers.get(HEADER_LENGTH)
        try:
            decoded = decode_infer_request(await request.body(), int(length) if length else None)
        except (FailsoftError, ValueError) as error:  # the request's fault
            return _error(400, getattr(error, "message", str(error)))
        try:  # inline: one call of a quick model costs less than a hop to a thread
            outputs = self._predict(decoded.inputs)
            answer = InferResponse(self._model, self._version, outputs, id=decoded.id)
            body, header_length = encode_infer_response(answer, decoded)
        except Exception as error:  # the model failed: its error, not Ray's
            return _error(500, f"the model failed: {type(error).__name__}: {error}"[:300])
        headers = {HEADER_LENGTH: str(header_length)} if header_length is not None else None
        return Response(body, media_type="application/json", headers=headers)


Deployment = serve.deployment(V2Model)


def _error(status: int, message: str) -> Response:
    return Response(orjson.dumps({"error": message}), status, media_type="application/json")


def application(
    model: str,
    version: str,
    model_config: ModelConfig,
    num_cpus: float = 1.0,
    max_ongoing_requests: int = 32,
) -> Application:
    """The Serve application for ``model``/``version`` of a failsoft model configuration.

    ``max_ongoing_requests`` (Serve's default is 5) is how many calls the proxy
    hands the replica at once; more wait in the proxy's queue, which costs
    more than the replica taking them, for a model as quick as iris.
    """
    spec = model_config.model_dump(mode="json", include={"inputs", "outputs"})
    spec["versions"] = {version: model_config.versions[version].model_dump(mode="json")}
    deployment = Deployment.options(
        ray_actor_options={"num_cpus": num_cpus}, max_ongoing_requests=max_ongoing_requests
    )
    return deployment.bind(model, version, spec)


def app(args: dict[str, str]) -> Application:
    """Builder for ``serve run``: ``config=`` (failsoft YAML), ``model=``, ``version=``."""
    config = load_config(args["config"])
    model = config.models[args["model"]]
    version = args.get("version") or model.default or next(iter(model.versions))
    return application(args["model"], version, model, float(args.get("num_cpus", 1.0)))
