"""Whose fault is a model error: the replica's, or the input's?

A replica that raises, or answers outside the output contract, may be broken
(a lying replica, a bad deploy) or may have met an input that breaks any copy
of the model (a *poison request*: features that drive it to NaN, say). Only
the first may move breakers, ejection and readiness; otherwise 30 requests
from one client could take a healthy fleet out of service.

The verdict, per request:

- Every replica keeps its last ``WINDOW`` raw outcomes (every call, whatever
  the verdict, except a second replica's failure that confirms a suspect, and
  the failure of an input that another request in flight already has as a
  suspect: a poison input counts once, however many copies of it a stalled
  gateway takes from its queue at once). It is *healthy* when it has at least
  ``min_calls`` of them and at least ``healthy_success_rate`` succeeded: it
  answers other inputs well. A replica with fewer calls of its own (one the
  balancer seldom picks) is judged by its version's outcomes, all replicas
  together: judged unhealthy for want of calls, a poison input's first failure
  on it was charged at once (on a starved machine the balancer sent one of two
  workers nothing for seconds, and a hostile client's poison had it ejected).
  A fresh version, with too few calls altogether, is not healthy: its first
  model errors are charged.
- A model error on a healthy replica is a *suspect*: nobody is charged yet,
  and the request is tried on another replica, the confirmation.
- If any attempt of the request then succeeds, the input was fine: every
  suspect is charged to its replica (it lied). If none succeeds, the request
  is poison: nobody is charged, the client gets the fallback chain or a 422,
  and its input digest is remembered (``PoisonMemory``).
- A remembered input is answered without calling a replica once the version
  has answered ``min_calls`` other requests well since the verdict: proof
  that the replicas still work and only this input breaks them. Until then a
  repeat is tried again. At the start of an outage the first failures look
  exactly like poison; without this rule a client sending one input over and
  over would be refused from memory long after the replicas healed.
- An input in memory that is answered well is forgotten at once.
- A model error on a replica that is not healthy is charged at once: a model
  that fails for most inputs is a bad deploy, not a bad client. When that
  happens the memory is cleared, since the verdicts that filled it may have
  been the first failures of that deploy.

What this costs an attacker: inputs it repeats are answered from memory, and
to make the gateway blame the replicas it must send a share of distinct
poison inputs large enough to push the replicas under the healthy rate (20%
of their calls by default), which is also how a bad deploy looks. Tenant
quotas bound that share for keyed clients.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Annotated

from pydantic import Field

from failsoft._options import StrictModel
from failsoft.clock import Clock

WINDOW = 32  # raw outcomes kept per replica


class AttributionOptions(StrictModel):
    enabled: bool = Field(
        default=True,
        description="tell poison requests from broken replicas; off charges every model "
        "error to the replica that raised it",
    )
    healthy_success_rate: Annotated[float, Field(gt=0, le=1)] = 0.8
    min_calls: Annotated[int, Field(ge=1, le=WINDOW)] = 10
    poison_ttl_s: Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)] = 300.0
    poison_max_entries: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000


class RecentOutcomes:
    """The last ``WINDOW`` outcomes of one replica, as bits of an int (1 = failed)."""

    __slots__ = ("_bits", "_calls")
    _MASK = (1 << WINDOW) - 1

    def __init__(self) -> None:
        self._bits = 0
        self._calls = 0

    def add(self, ok: bool) -> None:
        self._bits = ((self._bits << 1) | (not ok)) & self._MASK
        if self._calls < WINDOW:
            self._calls += 1

    @property
    def calls(self) -> int:
        return self._calls

    @property
    def failures(self) -> int:
        return self._bits.bit_count()

    @property
    def success_rate(self) -> float:
        if not self._calls:
            return 1.0
        return 1.0 - self._bits.bit_count() / self._calls

    def healthy(self, options: AttributionOptions, version: Sequence[RecentOutcomes] = ()) -> bool:
        """Whether it answers other inputs well: by its own calls, or with fewer than
        ``min_calls`` of them, by its ``version``'s (every replica's, together)."""
        if self._calls >= options.min_calls or not version:
            return _answers_well(self._calls, self.failures, options)
        calls = sum(outcomes.calls for outcomes in version)
        return _answers_well(calls, sum(outcomes.failures for outcomes in version), options)


def _answers_well(calls: int, failures: int, options: AttributionOptions) -> bool:
    return calls >= options.min_calls and 1.0 - failures / calls >= options.healthy_success_rate


class PoisonMemory:
    """Input digests recently judged poison, each kept ``ttl_s``; a bounded LRU.

    Each entry notes the version's count of good answers at its verdict; it is
    *active* (answered from memory) once ``confirm_after`` more have come.
    """

    __slots__ = ("_clock", "_confirm_after", "_max", "_ttl_s", "entries")

    def __init__(self, ttl_s: float, max_entries: int, confirm_after: int, clock: Clock) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._confirm_after = confirm_after
        self._clock = clock
        # Public so the hot path can test it for emptiness without a method call.
        # digest -> (expires, good answers at the verdict, the verdict's message)
        self.entries: OrderedDict[bytes, tuple[float, int, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def refused(self, digest: bytes, answered: int) -> str | None:
        """The verdict to answer this input with, without a call; None to try the replicas."""
        entry = self.entries.get(digest)
        if entry is None:
            return None
        expires, answered_then, verdict = entry
        if self._clock.now() >= expires:
            del self.entries[digest]
            return None
        return verdict if answered - answered_then >= self._confirm_after else None

    def add(self, digest: bytes, answered: int, verdict: str) -> None:
        """Remember a verdict; a repeat keeps the count of the first, or it would never confirm."""
        known = self.entries.get(digest)
        since = answered if known is None else known[1]
        self.entries[digest] = (self._clock.now() + self._ttl_s, since, verdict)
        self.entries.move_to_end(digest)
        while len(self.entries) > self._max:
            self.entries.popitem(last=False)

    def discard(self, digest: bytes) -> None:
        self.entries.pop(digest, None)

    def clear(self) -> None:
        self.entries.clear()
