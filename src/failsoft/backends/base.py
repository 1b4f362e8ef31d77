"""The backend interface: one replica of one model version."""

from __future__ import annotations

from typing import Protocol

from failsoft.call import Call
from failsoft.protocol.types import InferRequest, Tensors


class Replica(Protocol):
    """A single copy of a model that can answer inference requests.

    ``infer`` returns the model's output tensors or raises a
    ``failsoft.errors.FailsoftError`` whose class says whose fault it was.
    ``available`` is False while the replica cannot take work (a worker
    restarting); routing skips it.
    """

    name: str

    @property
    def available(self) -> bool: ...

    async def start(self) -> None: ...

    async def infer(self, request: InferRequest, call: Call) -> Tensors: ...

    async def health(self) -> bool: ...

    async def close(self) -> None: ...
