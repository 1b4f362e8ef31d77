"""Decoding request bodies without stalling the event loop.

Turning a few megabytes of JSON into numpy arrays takes orjson and numpy
hundreds of milliseconds, and both hold the GIL throughout: on the event loop,
or on a thread, every other request would wait that long. So a body whose JSON
part is over ``inline_max_bytes`` is decoded in a helper process; the arrays
come back through a pipe (a copy of the raw data, milliseconds). Small bodies,
and binary tensor data behind a small JSON header, are decoded inline, which
is cheaper than any hand-off.

The helper is started on the first large body. At most ``max_pending`` large
bodies are decoded or waiting at a time; beyond that a request is shed (503),
so a client sending large bodies cannot queue unbounded work.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from failsoft.errors import Overloaded
from failsoft.protocol import v1, v2
from failsoft.protocol.spec import TensorSpec
from failsoft.protocol.types import InferRequest

log = logging.getLogger("failsoft.server")

INLINE_MAX_BYTES = 256 * 1024
MAX_PENDING = 4


def decode(
    body: bytes, header_length: int | None, v1_inputs: list[TensorSpec] | None
) -> InferRequest:
    """A V2 request, or a V1 one when ``v1_inputs`` (the model's declared inputs) is given."""
    if v1_inputs is not None:
        return v1.decode_predict_request(body, v1_inputs)
    return v2.decode_infer_request(body, header_length)


class Decoder:
    def __init__(
        self, inline_max_bytes: int = INLINE_MAX_BYTES, max_pending: int = MAX_PENDING
    ) -> None:
        self._inline_max = inline_max_bytes
        self._max_pending = max_pending
        self._pending = 0
        self._pool: ProcessPoolExecutor | None = None

    def inline(self, body: bytes, header_length: int | None) -> bool:
        """Whether a body is small enough to decode on the event loop (the usual case)."""
        return (header_length if header_length is not None else len(body)) <= self._inline_max

    async def decode_elsewhere(
        self, body: bytes, header_length: int | None, v1_inputs: list[TensorSpec] | None
    ) -> InferRequest:
        """Decode a large body in the helper process."""
        if self._pending >= self._max_pending:
            raise Overloaded(
                f"{self._pending} large request bodies are being decoded; send it again later"
            )
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor(), decode, body, header_length, v1_inputs
            )
        except BrokenProcessPool:
            log.error("the decoding process died; starting a new one")
            self._pool = None
            raise Overloaded("the request decoder restarted; send it again") from None
        finally:
            self._pending -= 1

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: a fork of a process running an event loop and threads is unsafe.
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
