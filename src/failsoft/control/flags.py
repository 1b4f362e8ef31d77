"""Runtime flags: what they are, how one is evaluated, and the switches the gateway obeys.

A flag has a kind (boolean, string, integer, float, object), a default
value, and rules tried in order; the first rule whose targeting matches the
request gives the value. Targeting is by tenant, by a header's value, and by
a sticky percentage (the ``Failsoft-Key`` bucket, as rollouts use it). A flag
may expire: past ``expires_at`` it is no longer in force, as if cleared.

The gateway's own switches are flags with reserved keys (booleans):

    failsoft.halt.<model>                    safe halt: no call to any version
    failsoft.halt.<model>.<version>          safe halt of one version
    failsoft.disable.<model>.<version>       its traffic goes to the fallback chain
    failsoft.feature.<model>.<feature>       false turns a feature off for the model:
                                             hedging, caching, shadowing, retries

``switches_for`` compiles them into one small ``Switches`` per model that
the request path reads without evaluating anything; a switch with targeting
rules is evaluated per request (``Switches.targeted``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from failsoft._options import StrictModel
from failsoft.routing.split import BUCKETS, bucket

FlagKind = Literal["boolean", "string", "integer", "float", "object"]
FEATURES = ("hedging", "caching", "shadowing", "retries")
PREFIX = "failsoft."
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$"


class Targeting(StrictModel):
    tenants: list[str] | None = Field(default=None, description="only these tenants")
    header: dict[str, list[str]] | None = Field(
        default=None, description="a header name and the values that match (any of them)"
    )
    percent: Annotated[float, Field(ge=0, le=100)] | None = Field(
        default=None, description="this share of keys, sticky by Failsoft-Key"
    )


class Rule(StrictModel):
    when: Targeting
    value: Any


class FlagSpec(StrictModel):
    kind: FlagKind
    value: Any = Field(description="the value when no rule matches")
    rules: Annotated[list[Rule], Field(max_length=100)] = Field(default_factory=list)
    expires_at: float | None = Field(
        default=None, description="epoch seconds after which the flag is no longer in force"
    )
    description: Annotated[str, Field(max_length=1000)] = ""

    @model_validator(mode="after")
    def _values_fit_the_kind(self) -> FlagSpec:
        _check_value("value", self.kind, self.value)
        for index, rule in enumerate(self.rules):
            _check_value(f"rules[{index}].value", self.kind, rule.value)
        return self


def _check_value(where: str, kind: FlagKind, value: Any) -> None:
    fits = {
        "boolean": type(value) is bool,
        "string": type(value) is str,
        "integer": type(value) is int,
        "float": type(value) in (int, float),
        "object": type(value) is dict,
    }[kind]
    if not fits:
        raise ValueError(f"{where}: {value!r} is not a {kind}")


@dataclass(frozen=True)
class Context:
    """What a flag may target: the stickiness key, the tenant, the request's headers."""

    key: str = ""
    tenant: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    value: Any
    reason: str  # OFREP's: STATIC, TARGETING_MATCH, SPLIT, DISABLED
    variant: str  # "default" or "rule-<n>"


def evaluate(flag_key: str, spec: FlagSpec, context: Context, now: float) -> Evaluation:
    """The flag's value for this context (its default once it has expired)."""
    if spec.expires_at is not None and now >= spec.expires_at:
        return Evaluation(spec.value, "DISABLED", "expired")
    for index, rule in enumerate(spec.rules):
        matched = _matches(flag_key, rule.when, context)
        if matched is not None:
            return Evaluation(rule.value, matched, f"rule-{index}")
    return Evaluation(spec.value, "STATIC", "default")


def _matches(flag_key: str, when: Targeting, context: Context) -> str | None:
    """The reason the rule applies (TARGETING_MATCH or SPLIT), or None."""
    if when.tenants is not None and context.tenant not in when.tenants:
        return None
    if when.header is not None:
        for name, values in when.header.items():
            if context.headers.get(name.lower()) not in values:
                return None
    if when.percent is not None:
        if bucket(context.key, flag_key) >= when.percent * BUCKETS / 100:
            return None
        return "SPLIT"
    return "TARGETING_MATCH"


@dataclass(frozen=True)
class Switches:
    """The gateway's switches for one model, compiled from the flags in force."""

    halted: bool = False
    halted_versions: frozenset[str] = frozenset()
    disabled_versions: frozenset[str] = frozenset()
    features_off: frozenset[str] = frozenset()
    # Switches with targeting rules: flag key -> spec, evaluated per request.
    targeted: Mapping[str, FlagSpec] = field(default_factory=dict)

    def for_request(self, context: Context, now: float, model: str) -> Switches:
        """These switches with the targeted ones evaluated for this request."""
        if not self.targeted:
            return self
        on = {key: spec for key, spec in self.targeted.items()}
        evaluated = {
            key: spec.model_copy(
                update={"value": evaluate(key, spec, context, now).value, "rules": []}
            )
            for key, spec in on.items()
        }
        extra = switches_for(model, evaluated, now)
        return Switches(
            self.halted or extra.halted,
            self.halted_versions | extra.halted_versions,
            self.disabled_versions | extra.disabled_versions,
            self.features_off | extra.features_off,
        )

    @property
    def quiet(self) -> bool:
        """Nothing switched: the request path has nothing to do."""
        return not (
            self.halted
            or self.halted_versions
            or self.disabled_versions
            or self.features_off
            or self.targeted
        )


NO_SWITCHES = Switches()


def switch_key(kind: str, model: str, name: str | None = None) -> str:
    """The reserved key of a switch: ``switch_key("halt", "iris", "v2")``."""
    parts = [PREFIX.rstrip("."), kind, model] + ([name] if name else [])
    return ".".join(parts)


def switches_for(model: str, flags: Mapping[str, FlagSpec], now: float) -> Switches:
    """Compile the switches of ``model`` from every flag in force."""
    halted = False
    halted_versions: set[str] = set()
    disabled: set[str] = set()
    off: set[str] = set()
    targeted: dict[str, FlagSpec] = {}
    for key, spec in flags.items():
        parsed = _parse_switch(key, model)
        if parsed is None or spec.kind != "boolean":
            continue
        if spec.expires_at is not None and now >= spec.expires_at:
            continue
        if spec.rules:
            targeted[key] = spec
            continue
        kind, name = parsed
        on = bool(spec.value)
        if kind == "halt" and name is None and on:
            halted = True
        elif kind == "halt" and name is not None and on:
            halted_versions.add(name)
        elif kind == "disable" and name is not None and on:
            disabled.add(name)
        elif kind == "feature" and name in FEATURES and not on:
            off.add(name)
    return Switches(
        halted,
        frozenset(halted_versions),
        frozenset(disabled),
        frozenset(off),
        targeted,
    )


def _parse_switch(key: str, model: str) -> tuple[str, str | None] | None:
    """(kind, version or feature) when ``key`` is a switch of ``model``."""
    for kind in ("halt", "disable", "feature"):
        head = f"{PREFIX}{kind}.{model}"
        if key == head and kind == "halt":
            return kind, None
        if key.startswith(head + "."):
            rest = key[len(head) + 1 :]
            if rest:
                return kind, rest
    return None
