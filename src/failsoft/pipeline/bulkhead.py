"""The bulkhead: a cap on calls in flight per model version.

A version whose replicas slow down holds its calls longer; without a cap it
would soak up every connection and task the gateway has, and requests for
healthy models would queue behind it. Over the cap a request is shed at once
(503, ``overload``): the adaptive limiter in front is where requests wait.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from failsoft._options import StrictModel


class BulkheadOptions(StrictModel):
    max_in_flight: Annotated[int, Field(ge=1, le=1_000_000)] = 1024
