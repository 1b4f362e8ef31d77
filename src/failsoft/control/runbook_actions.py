"""A runbook's actions through the admin API's own services (flags, rollouts, revisions)
and the operator's replica actions (control/replica_ops.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from failsoft.control import replica_ops
from failsoft.errors import NotReady

if TYPE_CHECKING:
    from failsoft.control.plane import ControlPlane
    from failsoft.runtime import Runtime

__all__ = ["GatewayActions"]


class GatewayActions:
    def __init__(self, control: ControlPlane | None, runtime: Runtime) -> None:
        self._control = control
        self._runtime = runtime

    def _plane(self) -> ControlPlane:
        if self._control is None:
            raise NotReady("this gateway has no control store")
        return self._control

    def flag_value(self, key: str) -> object | None:
        flags = self._control.flags if self._control is not None else None
        spec = flags.get(key) if flags is not None else None
        return None if spec is None else spec.value

    async def set_flag(self, key: str, data: dict[str, Any], actor: str) -> None:
        flags = self._plane().flags
        if flags is None:
            raise NotReady("the flag service is not running")
        await flags.set(key, data, actor=actor)

    async def abort_rollout(self, key: str, actor: str) -> str:
        rollouts = self._plane().rollouts
        if rollouts is None:
            raise NotReady("the rollout controller is not running")
        state = await rollouts.abort(key, actor=actor)
        return str(state.status.value)

    async def rollback_config(self, target: int | None, actor: str) -> str:
        outcome = await self._plane().revisions.rollback(target, actor=actor)
        return f"{outcome.status} (revision {outcome.revision})"

    async def eject(
        self, model: str, version: str, replica: str | None, seconds: float, actor: str
    ) -> replica_ops.Done:
        return replica_ops.eject(self._runtime, model, version, replica, seconds, actor)

    async def restart_workers(self, model: str, version: str, actor: str) -> replica_ops.Done:
        return await replica_ops.restart_workers(self._runtime, model, version, actor)
