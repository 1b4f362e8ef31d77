"""The dependency map: models → versions → replicas (their upstream or worker) → fallback tiers,
each with its state now.

``build_map`` is pure: it reads a snapshot (plain data, see ``map_snapshot``) and returns a
tree of ``Node``. States of models, versions and fallback tiers: ``operational``,
``degraded``, ``down``, ``halted``, ``switched-off``; of replicas: ``up``, ``ejected``,
``breaker open``, ``probe failing``, ``restarting``. A replica's detail names its upstream
URL or its worker's pid, never a filesystem path (a worker's socket stays private).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

OPERATIONAL = "operational"
DEGRADED = "degraded"
DOWN = "down"
HALTED = "halted"
SWITCHED_OFF = "switched-off"
UP = "up"
EJECTED = "ejected"
BREAKER_OPEN = "breaker open"
PROBE_FAILING = "probe failing"
RESTARTING = "restarting"
GOOD = frozenset({OPERATIONAL, UP})
BAD = frozenset({DOWN, HALTED, SWITCHED_OFF, EJECTED, BREAKER_OPEN, PROBE_FAILING, RESTARTING})
_ANSWERS = frozenset({OPERATIONAL, DEGRADED})  # a version or tier in these can answer


@dataclass
class Node:
    kind: str  # model, version, replica, fallback
    name: str
    state: str
    detail: str = ""
    children: list[Node] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"kind": self.kind, "name": self.name, "state": self.state}
        if self.detail:
            found["detail"] = self.detail
        if self.children:
            found["children"] = [child.to_json() for child in self.children]
        return found


def build_map(snapshot: Mapping[str, Any]) -> list[Node]:
    """One tree per model, from ``snapshot["models"]`` (see ``map_snapshot``)."""
    models: Mapping[str, Any] = snapshot.get("models", {})
    versions = {
        (name, version): _version(version, data, model)
        for name, model in models.items()
        for version, data in model.get("versions", {}).items()
    }
    trees = []
    for name, model in models.items():
        default = model.get("default_version")
        version_nodes = [versions[(name, version)] for version in model.get("versions", {})]
        tiers = [_tier(tier, name, models, versions) for tier in model.get("fallback", [])]
        state = _model_state(model, versions.get((name, default)), version_nodes, tiers)
        node = Node("model", name, state, f"default {default}" if default else "")
        node.children = version_nodes
        if tiers:
            node.children.append(Node("fallback", "fallback", _chain_state(tiers), "", tiers))
        trees.append(node)
    return trees


def _version(name: str, data: Mapping[str, Any], model: Mapping[str, Any]) -> Node:
    replicas = [_replica(replica) for replica in data.get("replicas", [])]
    up = sum(replica.state == UP for replica in replicas)
    detail = f"{data.get('backend', '?')}, {up}/{len(replicas)} replicas up"
    if model.get("halted") or data.get("halted"):
        state = HALTED
    elif data.get("switched_off"):
        state = SWITCHED_OFF
    elif replicas and up == len(replicas):
        state = OPERATIONAL
    elif up:
        state = DEGRADED
    else:
        state = DOWN
    return Node("version", name, state, detail, replicas)


def _replica(data: Mapping[str, Any]) -> Node:
    breaker = (data.get("breaker") or {}).get("state", "closed")
    if not data.get("available", True):
        state = RESTARTING
    elif data.get("healthy") is False:
        state = PROBE_FAILING
    elif breaker != "closed":
        state = BREAKER_OPEN
    elif (data.get("ejection") or {}).get("ejected"):
        state = EJECTED
    else:
        state = UP
    parts = []
    if data.get("pid") is not None:
        # a restarting worker's pid is the one that exited, until its replacement starts
        was = "was " if state == RESTARTING else ""
        parts.append(f"{was}worker pid {data['pid']}")
    elif "inline" in data:  # an in-process replica (its value says where it runs now)
        parts.append("in-process")
    elif isinstance(data.get("base_url"), str) and data["base_url"].startswith("http"):
        parts.append(f"upstream {data['base_url']}")
    restarts = data.get("restarts")
    if restarts:
        parts.append(f"{restarts} restart{'' if restarts == 1 else 's'}")
    if breaker != "closed":
        parts.append(f"breaker {breaker}")
    return Node("replica", str(data.get("name", "?")), state, ", ".join(parts))


def _tier(
    tier: Mapping[str, Any],
    model: str,
    models: Mapping[str, Any],
    versions: Mapping[tuple[str, str], Node],
) -> Node:
    kind, target = tier.get("kind"), tier.get("target")
    if kind == "version":
        found = versions.get((model, str(target)))
        return Node("fallback", f"version:{target}", found.state if found else DOWN)
    if kind == "model":
        other = models.get(str(target), {})
        version = tier.get("version") or other.get("default_version")
        found = versions.get((str(target), str(version)))
        return Node("fallback", f"model:{target}", found.state if found else DOWN, f"{version}")
    # heuristic, static and stale-cache tiers run in the gateway: they answer while it does
    names = {"python": "heuristic", "static": "static", "stale_cache": "stale_cache"}
    return Node("fallback", names.get(str(kind), str(kind)), OPERATIONAL, "local")


def _chain_state(tiers: list[Node]) -> str:
    if all(tier.state in _ANSWERS for tier in tiers):
        return OPERATIONAL
    return DEGRADED if any(tier.state in _ANSWERS for tier in tiers) else DOWN


def _model_state(
    model: Mapping[str, Any], default: Node | None, versions: list[Node], tiers: list[Node]
) -> str:
    if model.get("halted"):
        return HALTED
    if default is not None and default.state == OPERATIONAL:
        every = all(version.state == OPERATIONAL for version in versions)
        return OPERATIONAL if every else DEGRADED
    if default is not None and default.state == DEGRADED:
        return DEGRADED
    # the default version cannot answer: the fallback chain does, degraded, or nothing does
    return DEGRADED if any(tier.state in _ANSWERS for tier in tiers) else DOWN


def map_snapshot(
    status: Mapping[str, Any],
    fallbacks: Mapping[str, list[dict[str, Any]]],
    switches: Mapping[str, Any],
) -> dict[str, Any]:
    """The snapshot ``build_map`` reads: the admin status's models, each with its fallback
    tiers (``{"kind", "target", "version"?}``) and what operators switched (``Switches``)."""
    models: dict[str, Any] = {}
    for name, model in status.get("models", {}).items():
        switched = switches.get(name)
        halted = bool(getattr(switched, "halted", False))
        halted_versions: frozenset[str] = getattr(switched, "halted_versions", frozenset())
        disabled: frozenset[str] = getattr(switched, "disabled_versions", frozenset())
        models[name] = {
            "default_version": model.get("default_version"),
            "halted": halted,
            "fallback": list(fallbacks.get(name, [])),
            "versions": {
                version: {
                    "backend": data.get("backend"),
                    "halted": version in halted_versions,
                    "switched_off": version in disabled,
                    "replicas": data.get("replicas", []),
                }
                for version, data in model.get("versions", {}).items()
            },
        }
    return {"models": models}


def tier_spec(tier: Any) -> dict[str, Any]:
    """A configured fallback tier (pipeline.fallback) as snapshot data."""
    for kind in ("model", "version", "python", "static", "stale_cache"):  # a model tier has both
        if hasattr(tier, kind):
            spec: dict[str, Any] = {"kind": kind}
            if kind in ("version", "model"):
                spec["target"] = getattr(tier, kind)
            if kind == "model" and getattr(tier, "version", None):
                spec["version"] = tier.version
            return spec
    return {"kind": "unknown"}


def runtime_map(runtime: Any, status: Mapping[str, Any]) -> dict[str, Any]:
    """GET /admin/map's answer: the map of ``runtime`` now, from its admin ``status``."""
    fallbacks = {
        name: [tier_spec(tier) for tier in model.config.fallback]
        for name, model in runtime.models.items()
    }
    snapshot = map_snapshot(status, fallbacks, runtime.switches)
    return {"models": [node.to_json() for node in build_map(snapshot)]}
