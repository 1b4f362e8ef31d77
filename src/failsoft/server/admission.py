"""Admission: who is asking, how urgent it is, and whether there is room.

    tenant key (401) → priority, capped by the tenant → request quota (429)
    → [body read and decoded] → row quota (429) → model's adaptive
    concurrency limit, priority aware (503 + Retry-After)

The request quota is charged before the body is read, so a tenant over its
quota costs no decoding; the rows once the batch is known. A request that
passes holds a slot of its model's limiter (``Held``) until it is answered;
its release feeds the limiter only what the model's replicas did
(``Call.sample``): a cache hit, a poison input or a client's own deadline
says nothing about the model's capacity.
"""

from __future__ import annotations

from failsoft.call import Call
from failsoft.control.tenants import Tenant, Tenants
from failsoft.errors import BadRequest
from failsoft.pipeline.limiter import AdaptiveLimiter, Permit
from failsoft.priority import ORDER, Priority, capped

_PRIORITY_BY_NAME: dict[str, Priority] = {p.value: p for p in ORDER}
_NAMES = ", ".join(p.value for p in ORDER)


class Admission:
    def __init__(self, tenants: Tenants) -> None:
        self.tenants = tenants

    def identify(
        self, authorization: str | None, priority: str | None
    ) -> tuple[Tenant | None, Priority]:
        """The tenant (401 for an unknown key) and the request's priority (400 if unknown).

        A tenant's configured priority is the most it may ask for; anonymous
        requests get ``default`` at most.
        """
        tenant = self.tenants.authenticate(authorization)
        ceiling = tenant.priority if tenant is not None else Priority.DEFAULT
        if priority is None:
            return tenant, ceiling
        found = _PRIORITY_BY_NAME.get(priority.strip().lower())
        if found is None:
            raise BadRequest(f"header Failsoft-Priority must be one of {_NAMES}, got {priority!r}")
        return tenant, capped(found, ceiling)

    def admit_request(self, tenant: Tenant | None) -> None:
        self.tenants.admit_request(tenant)

    def admit_rows(self, tenant: Tenant | None, rows: int) -> None:
        self.tenants.admit_rows(tenant, rows)

    def hold(
        self, tenant: Tenant | None, priority: Priority, limiter: AdaptiveLimiter, call: Call
    ) -> Held | None:
        """A slot under the model's limit at once, or None: then ``wait`` for one."""
        permit = limiter.try_acquire(priority, tenant.name if tenant is not None else None)
        return None if permit is None else Held(permit, call)

    async def wait(
        self, tenant: Tenant | None, priority: Priority, limiter: AdaptiveLimiter, call: Call
    ) -> Held:
        """A slot after queueing for it; raises ``Shed`` when none comes in time."""
        permit = await limiter.acquire(priority, tenant.name if tenant is not None else None)
        return Held(permit, call)


class Held:
    """One request's slot under its model's limit. ``release`` it exactly once, in a
    ``finally``: it feeds the limiter what the replicas did (``Call.sample``), if anything."""

    __slots__ = ("_admitted", "_call", "_permit")

    def __init__(self, permit: Permit, call: Call) -> None:
        self._permit = permit
        self._call = call
        self._admitted = call.clock.now()

    def release(self) -> None:
        call = self._call
        if call.sample is None:
            self._permit.cancel()
        else:
            self._permit.release(call.sample, call.clock.now() - self._admitted)
