"""In-process replicas: a synchronous predict function, kept off the event loop when slow.

Each replica owns one thread. A model call that takes milliseconds runs
there, so it never stalls the event loop, and replicas of one version run in
parallel (onnxruntime and numpy release the GIL). But handing a call to a
thread costs more than a fast model does: for the iris ONNX model (tens of
microseconds) the hop and the GIL hand-offs it causes cut throughput by more
than half (benchmarks/serve.py). So in ``auto`` mode a replica whose recent
calls were all fast runs them inline on the loop. It goes back to its thread
after ``SLOW_STREAK`` slow calls in a row, or at once after one call so slow
that it stalled the loop for real (``LEAVE_AT_ONCE_S``). One call merely over
the line is not enough: on a busy machine the OS preempts the gateway now and
then mid-call, and a replica that left the loop for 200 calls each time spent
an eighth of its calls on the thread (96 moves in 24 s of benchmarks/serve.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from failsoft.call import Call
from failsoft.errors import DeadlineExceeded, FailsoftError, ModelError
from failsoft.protocol.types import InferRequest, Tensors
from failsoft.waiting import wait_at_most

log = logging.getLogger("failsoft.backends")

Predict = Callable[[Tensors], Tensors]
Execution = Literal["auto", "thread", "inline"]

INLINE_BELOW_S = 0.0005  # a call this short stalls the loop less than decoding a big request
FAST_STREAK = 200  # consecutive fast threaded calls before auto mode goes inline
SLOW_STREAK = 3  # consecutive slow inline calls before auto mode leaves the loop
LEAVE_AT_ONCE_S = 10 * INLINE_BELOW_S  # an inline call this slow leaves the loop by itself


class InProcessReplica:
    # A hedge would run on this process's CPU too: it cannot beat a slow call.
    hedgeable = False

    def __init__(
        self,
        name: str,
        load: Callable[[], Predict],
        execution: Execution = "auto",
        clock: Callable[[], float] = time.perf_counter,
        thread_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self.name = name
        self._load = load
        self._execution = execution
        self._clock = clock
        # On the replica's thread, wall time would include waiting for the GIL
        # while the event loop runs, which says nothing about how long the call
        # would hold the loop; the thread's own CPU time does.
        self._thread_clock = thread_clock
        self._predict: Predict | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._inline = execution == "inline"
        self._fast_streak = 0
        self._slow_streak = 0

    @property
    def available(self) -> bool:
        return self._predict is not None

    @property
    def inline(self) -> bool:
        """True while calls run on the event loop rather than the replica's thread."""
        return self._inline

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"replica-{self.name}"
        )
        loop = asyncio.get_running_loop()
        self._predict = await loop.run_in_executor(self._executor, self._load)

    async def infer(self, request: InferRequest, call: Call) -> Tensors:
        predict = self._predict
        if predict is None or self._executor is None:
            raise ModelError(f"replica {self.name} is not loaded")
        remaining = call.remaining()
        if remaining <= 0:
            raise DeadlineExceeded("the deadline passed before the model was called")
        try:
            if self._inline:
                outputs, seconds = self._timed(predict, request.inputs, self._clock)
            else:
                loop = asyncio.get_running_loop()
                future = loop.run_in_executor(
                    self._executor, self._timed, predict, request.inputs, self._thread_clock
                )
                outputs, seconds = await wait_at_most(future, remaining)
        except TimeoutError:
            raise DeadlineExceeded(
                f"replica {self.name}: the model did not answer within the deadline"
            ) from None
        except FailsoftError:
            raise
        except Exception as error:
            log.warning("model raised", extra={"replica": self.name, "error": repr(error)})
            raise ModelError(f"model raised {type(error).__name__}: {error}") from error
        if self._execution == "auto":
            self._adapt(seconds)
        return outputs

    def _adapt(self, seconds: float) -> None:
        if seconds <= INLINE_BELOW_S:
            self._slow_streak = 0
            if not self._inline:
                self._fast_streak += 1
                self._inline = self._fast_streak >= FAST_STREAK
            return
        self._fast_streak = 0
        if not self._inline:
            return
        self._slow_streak += 1
        if self._slow_streak >= SLOW_STREAK or seconds >= LEAVE_AT_ONCE_S:
            self._inline = False
            self._slow_streak = 0
            log.info(
                "slow model calls: moving calls to the replica thread",
                extra={"replica": self.name, "ms": round(seconds * 1000, 3)},
            )

    @staticmethod
    def _timed(
        predict: Predict, inputs: Tensors, clock: Callable[[], float]
    ) -> tuple[Tensors, float]:
        started = clock()
        outputs = predict(inputs)
        return outputs, clock() - started

    async def health(self) -> bool:
        return self.available

    async def close(self) -> None:
        self._predict = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
