"""Which version answers a request while a rollout divides a model's traffic.

A rollout sends ``weight`` of 10,000 buckets of the model's default traffic
to the candidate; the rest stays on the stable version. A request's bucket is
a hash of its stickiness key (the ``Failsoft-Key`` header, else its request
id) salted with the rollout's id, so a user who is in stays in as the weight
grows (bucket < weight), and two rollouts do not pick the same users. The
tenant is a targeting attribute, not the key: a rollout limited to some
tenants leaves every other tenant on the stable version.

``mirror`` says whether a request the stable version answers is also sent to
the candidate as a shadow (a share of the same buckets, salted differently).

Everything here is pure and costs a hash per request, only for models that
have a rollout.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

BUCKETS = 10_000


def bucket(key: str, salt: str) -> int:
    """The key's bucket in [0, 10,000), stable for this salt."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, key=salt.encode()[:64]).digest()
    return int.from_bytes(digest, "little") % BUCKETS


@dataclass(frozen=True, slots=True)
class Split:
    rollout: str  # the rollout's id: the salt of every bucket
    stable: str
    candidate: str
    weight: int = 0  # buckets of 10,000 that go to the candidate
    shadow: float = 0.0  # share of the stable's requests also mirrored to the candidate
    tenants: frozenset[str] | None = None  # only these tenants take part (None: every one)

    def __post_init__(self) -> None:
        if not 0 <= self.weight <= BUCKETS:
            raise ValueError(f"weight must be within 0..{BUCKETS}, got {self.weight}")
        if not 0.0 <= self.shadow <= 1.0:
            raise ValueError(f"shadow must be a share within 0..1, got {self.shadow}")

    def takes_part(self, tenant: str | None) -> bool:
        return self.tenants is None or (tenant is not None and tenant in self.tenants)

    def choose(self, key: str, tenant: str | None) -> str:
        """The version that answers this request."""
        inside = self.weight and self.takes_part(tenant)
        if inside and (self.weight >= BUCKETS or bucket(key, self.rollout) < self.weight):
            return self.candidate
        return self.stable

    def mirror(self, key: str, tenant: str | None) -> bool:
        """Whether the candidate also gets a shadow copy of this (stable-served) request."""
        if not self.shadow or not self.takes_part(tenant):
            return False
        return bucket(key, self.rollout + "/shadow") < self.shadow * BUCKETS
