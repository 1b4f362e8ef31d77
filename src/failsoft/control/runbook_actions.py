"""A runbook's actions through the admin API's own services (flags, rollouts, revisions)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from failsoft.control.plane import ControlPlane

__all__ = ["GatewayActions"]


class GatewayActions:
    def __init__(self, control: ControlPlane) -> None:
        self._control = control

    def flag_value(self, key: str) -> object | None:
        flags = self._control.flags
        spec = flags.get(key) if flags is not None else None
        return None if spec is None else spec.value

    async def set_flag(self, key: str, data: dict[str, Any], actor: str) -> None:
        assert self._control.flags is not None
        await self._control.flags.set(key, data, actor=actor)

    async def abort_rollout(self, key: str, actor: str) -> str:
        assert self._control.rollouts is not None
        state = await self._control.rollouts.abort(key, actor=actor)
        return str(state.status.value)

    async def rollback_config(self, target: int | None, actor: str) -> str:
        outcome = await self._control.revisions.rollback(target, actor=actor)
        return f"{outcome.status} (revision {outcome.revision})"
