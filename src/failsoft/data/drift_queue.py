"""Answers waiting for drift's sketches: one model version's tensors, joined as they come.

The request path hands over an answer's inputs and outputs, and the rows of
each tensor a profile reads are appended at once to one growing buffer for
that tensor (through the buffer protocol, a copy of a few dozen bytes for a
row of iris). The request's own arrays are then freed with the request.

Why: the queue used to hold every answer's dictionaries and arrays until the
next batch, half a second of traffic. The batch then concatenated thousands
of one-row arrays, each checked and converted again, and freed them all at
once, long after they had left the caches. py-spy, sampling the gateway under
load, put the two at ~2.5 us an answer on the event loop: more than half of
what drift cost there.

An answer whose tensor differs in dtype or trailing shape from the first one
in the batch is not mixed in (a contract may leave a dimension free): that
tensor is left out of the batch and the answer counted as unlike. Tensors of
Python objects (strings) cannot be joined by their bytes: those are kept and
concatenated at the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["JoinedTensor", "PendingAnswers"]

Tensors = Mapping[str, np.ndarray]


class JoinedTensor:
    """One tensor's rows from many answers, in the order they came."""

    __slots__ = ("_data", "_parts", "dtype", "extend", "trailing")

    def __init__(self, first: np.ndarray) -> None:
        self.dtype = first.dtype
        self.trailing: tuple[int, ...] = first.shape[1:]
        self._data = bytearray()
        self._parts: list[np.ndarray] | None = [] if first.dtype.hasobject else None
        # An array's bytes when it is one C-contiguous block (else TypeError or
        # BufferError: see ``_join``); arrays of objects are kept as they are.
        self.extend: Callable[[Any], None] = (
            self._data.extend if self._parts is None else self._parts.append
        )

    def array(self) -> np.ndarray:
        if self._parts is not None:
            return np.concatenate([part.reshape(-1, *self.trailing) for part in self._parts])
        return np.frombuffer(self._data, self.dtype).reshape(-1, *self.trailing)


class PendingAnswers:
    """One model version's answers since the last batch: the tensors its profile reads."""

    __slots__ = ("_input_names", "_inputs", "_output_names", "_outputs", "answers", "unlike")

    def __init__(self, input_names: Iterable[str], output_names: Iterable[str]) -> None:
        self._input_names = tuple(dict.fromkeys(input_names))
        self._output_names = tuple(dict.fromkeys(output_names))
        self._inputs: dict[str, JoinedTensor] = {}
        self._outputs: dict[str, JoinedTensor] = {}
        self.answers = 0
        self.unlike = 0  # of them, with a tensor left out for being unlike the batch's first

    def fresh(self) -> PendingAnswers:
        """An empty one for the same tensors."""
        return PendingAnswers(self._input_names, self._output_names)

    def add(self, inputs: Tensors, outputs: Tensors | None) -> None:
        """Join an answer's tensors; outputs None (a degraded answer) joins its inputs only."""
        whole = _join(self._inputs, inputs, self._input_names)
        if outputs is not None and self._output_names:
            whole = _join(self._outputs, outputs, self._output_names) and whole
        self.answers += 1
        if not whole:
            self.unlike += 1

    def tensors(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The joined inputs and outputs, one array per tensor, rows first."""
        return (
            {name: tensor.array() for name, tensor in self._inputs.items()},
            {name: tensor.array() for name, tensor in self._outputs.items()},
        )


def _join(joined: dict[str, JoinedTensor], tensors: Tensors, names: tuple[str, ...]) -> bool:
    """Append each tensor named; False when one was left out for being unlike the first.
    A tensor the answer lacks is skipped, as its columns are by the sketches. (On the
    request path, so written out rather than in calls per tensor.)"""
    whole = True
    for name in names:
        array = tensors.get(name)
        if array is None:
            continue
        tensor = joined.get(name)
        if tensor is None:
            tensor = joined[name] = JoinedTensor(array)
        elif array.shape[1:] != tensor.trailing or (
            array.dtype is not tensor.dtype and array.dtype != tensor.dtype
        ):
            whole = False
            continue
        try:
            tensor.extend(array)
        except (BufferError, TypeError):  # not one contiguous block
            tensor.extend(array.tobytes())
    return whole
