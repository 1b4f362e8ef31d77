"""The baseline: the least a V2 server for the iris model can do.

A plain ASGI callable (no framework) on uvicorn with uvloop and httptools,
orjson for JSON and one onnxruntime session called inline. It serves only
``POST /v2/models/iris/infer`` with one FP32 input and has none of failsoft's
protections; benchmarks compare failsoft against it.

    python benchmarks/_bare_server.py --model ~/.cache/failsoft/demo/iris-v1.onnx --port 8001
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PATH = "/v2/models/iris/infer"
JSON_HEADERS = [(b"content-type", b"application/json")]
V2_DATATYPES = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}


def make_app(model_path: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]

    async def reply(send: Send, status: int, payload: dict[str, Any]) -> None:
        body = orjson.dumps(payload)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != PATH or scope["method"] != "POST":
            await reply(send, 404, {"error": f"only POST {PATH}"})
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            request = orjson.loads(b"".join(chunks))
            (tensor,) = request["inputs"]
            if tensor["datatype"] != "FP32":
                raise ValueError("datatype must be FP32")
            features = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
            results = session.run(None, {tensor["name"]: features})
        except Exception as error:
            await reply(send, 400, {"error": f"{type(error).__name__}: {error}"})
            return
        response: dict[str, Any] = {
            "model_name": "iris",
            "model_version": "1",
            "outputs": [
                {
                    "name": name,
                    "datatype": V2_DATATYPES[value.dtype],
                    "shape": list(value.shape),
                    "data": value.ravel().tolist(),
                }
                for name, value in zip(output_names, results, strict=True)
            ],
        }
        if "id" in request:
            response["id"] = request["id"]
        await reply(send, 200, response)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="path of the iris ONNX model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.model),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
