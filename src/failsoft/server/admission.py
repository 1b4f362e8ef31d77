"""Admission: who is asking, how urgent it is, and whether there is room.

    tenant key (401) → priority → tenant quota (429) → model's adaptive
    concurrency limit, priority aware (503 + Retry-After)

A request that passes holds a permit of its model's limiter until it is
answered; the time it took feeds the limit. The limiter learns the tenant's
name too, so that waiters are served fairly between tenants.
"""

from __future__ import annotations

from failsoft.control.tenants import PRIORITIES, Tenant, Tenants
from failsoft.errors import BadRequest
from failsoft.pipeline.limiter import AdaptiveLimiter, Permit, Priority
from failsoft.protocol.types import InferRequest

_PRIORITY_BY_NAME: dict[str, Priority] = {name: Priority(name) for name in PRIORITIES}


class Admission:
    def __init__(self, tenants: Tenants) -> None:
        self.tenants = tenants

    def identify(
        self, authorization: str | None, priority: str | None
    ) -> tuple[Tenant | None, Priority]:
        """The tenant (401 for an unknown key) and the request's priority (400 if unknown)."""
        tenant = self.tenants.authenticate(authorization)
        if priority is None:
            name = tenant.priority if tenant is not None else "default"
            return tenant, _PRIORITY_BY_NAME[name]
        found = _PRIORITY_BY_NAME.get(priority.strip().lower())
        if found is None:
            raise BadRequest(
                f"header Failsoft-Priority must be one of {', '.join(PRIORITIES)}, got {priority!r}"
            )
        return tenant, found

    async def admit(
        self,
        tenant: Tenant | None,
        priority: Priority,
        request: InferRequest,
        limiter: AdaptiveLimiter,
    ) -> Permit:
        """Charge the tenant's quota, then wait for a slot under the model's limit."""
        self.tenants.admit(tenant, _rows(request))
        return await limiter.acquire(priority, tenant.name if tenant is not None else None)


def _rows(request: InferRequest) -> int:
    """The batch size: the first dimension of the first input (1 for a scalar)."""
    for array in request.inputs.values():
        return int(array.shape[0]) if array.ndim else 1
    return 0
