"""Run one drill: start or reach the target, drive the load, inject the faults, score.

Faults are added through the admin API at their start and removed at their
end; each is also created with its own duration, so it expires by itself if
the drill dies half-way. A deploy step patches the configuration the target
serves and proposes it (/admin/config) at its time; an applied change stays
applied after the drill. A flag step sets a flag through the admin API at
its time and clears it ``for_s`` later (or at the load's end), reading the
switched versions' calls in /metrics meanwhile. A hostile client's attack
runs alongside the load on the same time 0, and readiness is polled through
the run when the experiment bounds it. ``scale`` shortens every time in the experiment
(load and fault schedule) for the short form CI runs; the expectations are
about the gateway's reaction times and stay as written, but for the p99
hypothesis, which a short run judges with the noise margin for latency
(Experiment.with_noise_margin).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from failsoft.control.tenants import new_key
from failsoft.drills.datastep import data_bodies, drift_checks
from failsoft.drills.deploy import DeployOutcome, classify, merge_patch
from failsoft.drills.experiment import Deploy, Experiment, ScheduledFault
from failsoft.drills.flagstep import FlagOutcome, FlagStep, switched_versions
from failsoft.drills.incidentstep import (
    Receiver,
    approver,
    follow_incident,
    incident_checks,
    score_incident,
)
from failsoft.drills.load import (
    AttackOutcomes,
    Outcomes,
    Schedule,
    infer_path,
    poll_readiness,
    run_attack,
    run_load,
)
from failsoft.drills.rolloutstep import follow_rollout
from failsoft.drills.scorecard import Check, FaultWindow, Scorecard, score
from failsoft.drills.setup import apply_setup, undo_setup
from failsoft.drills.target import AdminClient, TargetError, TenantEntry, open_target

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TargetChoice:
    """Where to run: overrides the experiment's own target when set."""

    config: Path | None = None
    url: str | None = None


def _quiet(message: str) -> None:
    return None


def run_drill(
    experiment: Experiment,
    choice: TargetChoice = TargetChoice(),
    *,
    scale: float = 1.0,
    progress: Progress = _quiet,
) -> Scorecard:
    config, url = choice.config, choice.url
    token_env = "FAILSOFT_ADMIN_TOKEN"
    if config is None and url is None and experiment.target is not None:
        config, url = experiment.target.config, experiment.target.url
        token_env = experiment.target.admin_token_env
    if scale < 1.0:
        experiment = experiment.with_noise_margin()
    progress(f"{experiment.name}: starting the target" if url is None else experiment.name)
    tenants = experiment.load.tenants
    if url is None:  # our own target: its tenants get fresh keys
        keys = {name: new_key() for name in tenants}
        added = {name: TenantEntry(keys[name], tenant.priority) for name, tenant in tenants.items()}
    else:
        keys, added = _tenant_keys(experiment), {}
    with open_target(config, url, token_env, added) as target:
        return asyncio.run(
            _drive(experiment, target.url, target.admin_token, scale, progress, keys)
        )


async def _drive(
    experiment: Experiment,
    url: str,
    token: str | None,
    scale: float,
    progress: Progress,
    tenant_keys: dict[str, str],
) -> Scorecard:
    admin = AdminClient(url, token)
    model = experiment.load.model
    duration = experiment.load.duration_s * scale
    original = None
    receivers = {name: Receiver() for name in experiment.webhooks}
    setup = list(experiment.setup)
    if receivers:
        hooks = {name: receiver.url for name, receiver in receivers.items()}
        setup.append({"runbooks": {"webhooks": hooks}})
    wanted = experiment.expect.incident
    incident = None
    approvals: list[float] = []
    approving: asyncio.Task[list[float]] | None = None
    try:
        await admin.clear_faults()
        original = await apply_setup(admin, setup, progress)
        status = await admin.status()
        objective = status.get("models", {}).get(model, {}).get("objective_pct")
        versions = list(status.get("models", {}).get(model, {}).get("versions", {}))
        before = await admin.model_counts(model)
        progress(
            f"{experiment.name}: {experiment.load.rate:g} req/s for {duration:.1f} s, "
            f"{len(experiment.faults)} fault(s)"
            + (f", an attack at {experiment.attack.rate:g} req/s" if experiment.attack else "")
            + (f", {len(experiment.deploys)} deploy(s)" if experiment.deploys else "")
            + (f", {len(experiment.flags)} flag step(s)" if experiment.flags else "")
            + (f", {len(experiment.rollouts)} rollout(s)" if experiment.rollouts else "")
        )
        schedule = Schedule.soon(0.05)  # time to build the attack's bodies first
        data = experiment.data
        load = asyncio.create_task(
            run_load(
                url,
                experiment.load,
                duration_s=duration,
                tenant_keys=tenant_keys,
                schedule=schedule,
                bodies=None if data is None else lambda offsets: data_bodies(data, offsets, scale),
            )
        )
        attack = _attack(experiment, url, scale, schedule)
        readiness = (
            asyncio.create_task(poll_readiness(url, duration, schedule=schedule))
            if experiment.expect.max_not_ready is not None
            else None
        )
        deploys = asyncio.gather(
            *(
                _deploy(admin, deploy, number, scale, schedule.wall, progress)
                for number, deploy in enumerate(experiment.deploys, 1)
            )
        )
        flag_steps = asyncio.gather(
            *(
                _flag(
                    admin, step, number, model, versions, scale, duration, schedule.wall, progress
                )
                for number, step in enumerate(experiment.flags, 1)
            )
        )
        rollout_steps = asyncio.gather(
            *(
                follow_rollout(
                    admin.request,
                    step,
                    number,
                    scale=scale,
                    started=schedule.wall,
                    until_s=duration,
                    progress=progress,
                )
                for number, step in enumerate(experiment.rollouts, 1)
            )
        )
        stop_approving = asyncio.Event()
        approving = (
            asyncio.create_task(approver(admin, model, schedule.wall, stop_approving))
            if wanted is not None and wanted.approve
            else None
        )
        windows = await asyncio.gather(  # their times are the load's (same time 0)
            *(_inject(admin, fault, scale, schedule.wall, progress) for fault in experiment.faults)
        )
        deployed = await deploys
        flagged = await flag_steps
        rolled = await rollout_steps
        outcomes = await load
        attacked = await attack if attack is not None else None
        polls = await readiness if readiness is not None else None
        after = await admin.model_counts(model)
        events = _localise(await admin.events(), outcomes)
        if wanted is not None:
            incident = await follow_incident(admin, wanted, model, outcomes.started_at)
            stop_approving.set()
            approvals = await approving if approving is not None else []
    finally:
        try:
            await undo_setup(admin, original, progress)
        finally:
            if approving is not None:
                approving.cancel()
            await admin.close()
            for receiver in receivers.values():
                receiver.close()
    card = score(
        experiment,
        outcomes,
        windows,
        events,
        duration_s=duration,
        attempts=after[0] - before[0],
        requests_served=after[1] - before[1],
        objective_pct=objective,
        attack=attacked,
        readiness=polls,
        deploys=deployed,
        flags=flagged,
        rollouts=rolled,
    )
    if wanted is not None:
        received = {name: receiver.count for name, receiver in receivers.items()}
        card.incident = score_incident(
            wanted,
            incident,
            outcomes,
            approvals,
            received,
            since_s=min((window.start_s for window in windows), default=0.0),
            timeout_s=experiment.load.timeout_ms / 1000,
        )
        card.checks.extend(Check(*check) for check in incident_checks(wanted, card.incident))
    if experiment.data is not None:
        checks, card.drift = drift_checks(
            experiment.data, model, events, scale, experiment.expect.max_drift_detect_s
        )
        card.checks.extend(checks)
    return card


def _attack(
    experiment: Experiment, url: str, scale: float, schedule: Schedule
) -> asyncio.Task[AttackOutcomes] | None:
    if experiment.attack is None:
        return None
    path = infer_path(experiment.load.model, experiment.load.version)
    window = experiment.attack_window_s(scale)
    return asyncio.create_task(run_attack(url, experiment.attack, path, window, schedule=schedule))


async def _inject(
    admin: AdminClient, fault: ScheduledFault, scale: float, started: float, progress: Progress
) -> FaultWindow:
    await asyncio.sleep(max(0.0, started + fault.at_s * scale - time.time()))
    added = await admin.add_fault(fault.spec(scale))
    start = time.time() - started
    progress(f"  +{start:5.1f}s fault {added['id']}: {_describe(fault)}")
    await asyncio.sleep(max(0.0, started + (fault.at_s + fault.for_s) * scale - time.time()))
    await admin.end_fault(added["id"])
    end = time.time() - started
    progress(f"  +{end:5.1f}s fault {added['id']} ended")
    return FaultWindow(
        _describe(fault),
        fault.model,
        start,
        end,
        kind=fault.kind,
        version=fault.version,
        replica=fault.replica,
        fault_id=str(added["id"]),
    )


async def _deploy(
    admin: AdminClient,
    deploy: Deploy,
    number: int,
    scale: float,
    started: float,
    progress: Progress,
) -> DeployOutcome:
    """At its time: patch the served configuration, propose it, and see what is served after."""
    await asyncio.sleep(max(0.0, started + deploy.at_s * scale - time.time()))
    before, config = await admin.served_config()
    proposed = merge_patch(config, deploy.change)
    start = time.time() - started
    try:
        status, answer = await admin.propose(proposed, f"drill deploy {number}")
    except TargetError as error:
        status, answer = 0, {"error": str(error)}
    end = time.time() - started
    result, reason, revision = classify(status, answer)
    after, _ = await admin.served_config()
    progress(
        f"  +{start:5.1f}s deploy {number}: {result} in {1000 * (end - start):.0f} ms"
        + (f": {reason}" if reason else "")
    )
    return DeployOutcome(
        number,
        deploy.expect,
        start,
        end,
        status,
        result,
        reason,
        before,
        after,
        revision,
        deploy.reason,
    )


async def _flag(
    admin: AdminClient,
    step: FlagStep,
    number: int,
    model: str,
    versions: list[str],
    scale: float,
    duration: float,
    started: float,
    progress: Progress,
) -> FlagOutcome:
    """At its time: set the flag; at its end, clear it; the switched versions' calls between."""
    switched = switched_versions(step.key, step.spec, model, versions)
    await asyncio.sleep(max(0.0, started + step.at_s * scale - time.time()))
    start = time.time() - started
    try:
        status, answer = await admin.set_flag(step.key, step.spec)
    except TargetError as unreachable:
        status, answer = 0, {"error": str(unreachable)}
    end = time.time() - started
    refusal = "" if status == 200 else str(answer.get("error", "") or f"HTTP {status}")
    calls_at = await admin.attempts(model, switched) if switched and status == 200 else None
    progress(
        f"  +{start:5.1f}s flag {number} {step.key}: "
        + (f"set in {1000 * (end - start):.0f} ms" if status == 200 else f"refused: {refusal}")
    )
    until = (step.at_s + step.for_s) * scale if step.for_s is not None else duration
    await asyncio.sleep(max(0.0, started + until - time.time()))
    calls = None
    if calls_at is not None:
        calls = await admin.attempts(model, switched) - calls_at
    cleared_start = time.time() - started
    if status == 200:
        await admin.clear_flag(step.key)
    cleared_end = time.time() - started
    progress(
        f"  +{cleared_start:5.1f}s flag {number} cleared"
        + (f"; {calls} call(s) to {', '.join(switched)} meanwhile" if calls is not None else "")
    )
    return FlagOutcome(
        number,
        step.key,
        start,
        end,
        status,
        refusal,
        cleared_start,
        cleared_end,
        switched,
        calls,
    )


def _tenant_keys(experiment: Experiment) -> dict[str, str]:
    keys = {}
    for name, tenant in experiment.load.tenants.items():
        key = os.environ.get(tenant.key_env) if tenant.key_env else None
        if not key:
            where = f"set ${tenant.key_env}" if tenant.key_env else "give key_env, and set it,"
            raise TargetError(
                f"load.tenants.{name}: {where} to the tenant's API key (a running target)"
            )
        keys[name] = key
    return keys


def _describe(fault: ScheduledFault) -> str:
    where = "/".join(part for part in (fault.model, fault.version, fault.replica) if part)
    return f"{fault.kind} {where}"


def _localise(recent: dict[str, Any], outcomes: Outcomes) -> list[dict[str, Any]]:
    """Event times as seconds since the load started, correcting for clock offset."""
    offset = time.time() - float(recent.get("now", time.time()))
    events = []
    for event in recent.get("events", []):
        events.append({**event, "at_s": float(event["time"]) + offset - outcomes.started_at})
    return events


__all__ = ["TargetChoice", "TargetError", "run_drill"]
