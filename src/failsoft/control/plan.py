"""What applying a configuration would change: a plan, as a person reads it.

``plan(old, new)`` compares two validated configurations and lists each
change once, at the level where it happens: a model added or removed; a
version added, removed, or rebuilt (its backend changed: new replicas load
and must pass their probes before they take traffic); a model setting
changed (applied in place: its replicas keep their state); tenants, server
and chaos settings. ``server.host`` and ``server.port`` cannot change
without a restart: the plan says so instead of pretending.

    ~ models.iris.default_version: v1 -> v3
    + models.iris.versions.v3 (onnx, 1 replica)
    ~ models.iris.timeout_ms: 1000 -> 800
    - models.old
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from failsoft.config import Config, ModelConfig, ProcessBackend

_RESTART_ONLY = ("host", "port")


@dataclass(frozen=True)
class Change:
    sign: str  # "+" added, "-" removed, "~" changed
    path: str
    detail: str = ""

    def render(self) -> str:
        return f"{self.sign} {self.path}" + (f": {self.detail}" if self.detail else "")


@dataclass(frozen=True)
class Plan:
    changes: list[Change] = field(default_factory=list)
    restart_needed: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.changes and not self.restart_needed

    def counts(self) -> dict[str, int]:
        return {sign: sum(1 for c in self.changes if c.sign == sign) for sign in "+~-"}

    def render(self) -> str:
        if self.empty:
            return "no changes"
        lines = [change.render() for change in self.changes]
        lines += [f"! {path}: needs a restart to take effect" for path in self.restart_needed]
        counts = self.counts()
        lines.append(f"{counts['+']} to add, {counts['~']} to change, {counts['-']} to remove")
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "changes": [{"sign": c.sign, "path": c.path, "detail": c.detail} for c in self.changes],
            "restart_needed": list(self.restart_needed),
        }


def plan(old: Config, new: Config) -> Plan:
    changes: list[Change] = []
    restart: list[str] = []
    old_server, new_server = old.server.model_dump(), new.server.model_dump()
    for key in sorted(set(old_server) | set(new_server)):
        if old_server.get(key) != new_server.get(key):
            path = f"server.{key}"
            if key in _RESTART_ONLY:
                restart.append(path)
            else:
                changes.append(Change("~", path, _shown(key, old_server, new_server)))
    if old.store != new.store:
        restart.append("store")
    if old.artifacts != new.artifacts:
        restart.append("artifacts")
    if old.predictions.sample_rate != new.predictions.sample_rate:
        changes.append(Change("~", "predictions.sample_rate", f"{new.predictions.sample_rate:g}"))
    if old.predictions.model_dump(exclude={"sample_rate"}) != new.predictions.model_dump(
        exclude={"sample_rate"}
    ):
        restart.append("predictions")
    changes += _section_changes("tenants", old.tenants, new.tenants)
    if old.chaos != new.chaos:
        changes.append(Change("~", "chaos", "fault injection settings"))
    # Applied at once by the incident tracker and the runbooks (Operate.reconfigure).
    for section in ("incidents", "runbooks"):
        if getattr(old, section) != getattr(new, section):
            changes.append(Change("~", section, f"{section} settings"))
    for name in sorted(set(old.models) | set(new.models)):
        before, after = old.models.get(name), new.models.get(name)
        if before is None and after is not None:
            versions = ", ".join(sorted(after.versions))
            changes.append(Change("+", f"models.{name}", f"versions {versions}"))
        elif after is None:
            changes.append(Change("-", f"models.{name}"))
        elif before is not None:
            changes += _model_changes(name, before, after)
    return Plan(changes, restart)


def _model_changes(name: str, before: ModelConfig, after: ModelConfig) -> Iterator[Change]:
    where = f"models.{name}"
    old, new = before.model_dump(mode="json"), after.model_dump(mode="json")
    for key in sorted(set(old) | set(new)):
        if key == "versions" or old.get(key) == new.get(key):
            continue
        yield Change("~", f"{where}.{key}", _shown(key, old, new))
    for version in sorted(set(before.versions) | set(after.versions)):
        path = f"{where}.versions.{version}"
        was, now = before.versions.get(version), after.versions.get(version)
        if was is None and now is not None:
            yield Change("+", path, describe_backend(now))
        elif now is None:
            yield Change("-", path)
        elif was is not None and was != now:
            yield Change("~", path, f"rebuilt: {describe_backend(was)} -> {describe_backend(now)}")


def _section_changes(section: str, old: dict[str, Any], new: dict[str, Any]) -> Iterator[Change]:
    for name in sorted(set(old) | set(new)):
        if name not in old:
            yield Change("+", f"{section}.{name}")
        elif name not in new:
            yield Change("-", f"{section}.{name}")
        elif old[name] != new[name]:
            yield Change("~", f"{section}.{name}")


def describe_backend(version: Any) -> str:
    replicas = getattr(version, "replicas", None)
    urls = getattr(version, "urls", None)
    count = len(urls) if urls is not None else replicas
    kind = version.backend
    if isinstance(version, ProcessBackend):
        kind = f"process of {version.worker.backend}"
    return f"{kind}, {count} replica{'s' if count != 1 else ''}"


def _shown(key: str, old: dict[str, Any], new: dict[str, Any]) -> str:
    before, after = old.get(key), new.get(key)
    if key in ("admin_token",):
        return "changed"
    if isinstance(before, dict | list) or isinstance(after, dict | list):
        return "changed"
    return f"{before} -> {after}"
