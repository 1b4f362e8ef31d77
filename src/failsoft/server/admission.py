"""Admission: who is asking, how urgent it is, and whether there is room.

    tenant key (401) → priority, capped by the tenant → request quota (429)
    → [body read and decoded] → row quota (429) → model's adaptive
    concurrency limit, priority aware (503 + Retry-After)

The request quota is charged before the body is read, so a tenant over its
quota costs no decoding; the rows once the batch is known. A request that
passes holds a permit of its model's limiter for as long as ``permit`` is
entered; on the way out the permit feeds the limiter only what the model's
replicas did (``Call.sample``): a cache hit, a poison input or a client's
own deadline says nothing about the model's capacity.
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

    def permit(
        self, tenant: Tenant | None, priority: Priority, limiter: AdaptiveLimiter, call: Call
    ) -> Held:
        """``async with`` it to hold a slot under the model's limit (raises ``Shed`` if none)."""
        return Held(limiter, priority, tenant.name if tenant is not None else None, call)


class Held:
    """A slot under a model's limit for one request; on exit it feeds ``Call.sample``."""

    __slots__ = ("_admitted", "_call", "_limiter", "_permit", "_priority", "_tenant")

    def __init__(
        self, limiter: AdaptiveLimiter, priority: Priority, tenant: str | None, call: Call
    ) -> None:
        self._limiter = limiter
        self._priority = priority
        self._tenant = tenant
        self._call = call
        self._permit: Permit | None = None
        self._admitted = 0.0

    async def __aenter__(self) -> None:
        self._permit = await self._limiter.acquire(self._priority, self._tenant)
        self._admitted = self._call.clock.now()

    async def __aexit__(self, *exc_info: object) -> None:
        permit, call = self._permit, self._call
        assert permit is not None
        if call.sample is None:
            permit.cancel()
        else:
            permit.release(call.sample, call.clock.now() - self._admitted)
