"""In-process replicas: a synchronous predict function run off the event loop.

Each replica owns one thread, so a slow model call never stalls the event
loop, and replicas of one version run in parallel (onnxruntime and numpy
release the GIL). One thread per replica also serialises calls into the
replica's model object, which not every library makes thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from failsoft.call import Call
from failsoft.errors import FailsoftError, ModelError
from failsoft.protocol.types import InferRequest, Tensors

log = logging.getLogger("failsoft.backends")

Predict = Callable[[Tensors], Tensors]


class InProcessReplica:
    def __init__(self, name: str, load: Callable[[], Predict]) -> None:
        self.name = name
        self._load = load
        self._predict: Predict | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def available(self) -> bool:
        return self._predict is not None

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"replica-{self.name}")
        loop = asyncio.get_running_loop()
        self._predict = await loop.run_in_executor(self._executor, self._load)

    async def infer(self, request: InferRequest, call: Call) -> Tensors:
        predict = self._predict
        if predict is None or self._executor is None:
            raise ModelError(f"replica {self.name} is not loaded")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, _checked, predict, request.inputs)
        except FailsoftError:
            raise
        except Exception as error:
            log.warning("model raised", extra={"replica": self.name, "error": repr(error)})
            raise ModelError(f"model raised {type(error).__name__}: {error}") from error

    async def health(self) -> bool:
        return self.available

    async def close(self) -> None:
        self._predict = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _checked(predict: Predict, inputs: Tensors) -> Tensors:
    outputs = predict(inputs)
    if not isinstance(outputs, dict) or not all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in outputs.items()
    ):
        raise ModelError("model must return a dict of output name -> numpy array")
    return outputs
