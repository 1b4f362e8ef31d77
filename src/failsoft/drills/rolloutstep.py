"""A drill's rollout step: start a rollout mid-load, follow it to its end, judge it.

    rollouts:
      - at_s: 2
        spec: {model: iris, to: v2, strategy: canary, steps: [10, 50, 100], step_s: 15}
        short: {step_s: 3}                   # replaces keys of spec in the short form (CI)
        expect:
          outcome: promoted                  # promoted | rolled-back | not-promoted
          at_stage: 0                        # the stage the rollout ended at (0: the first)
          max_failed_pct: 0.5                # failed requests among those sent meanwhile
          failed_check: disagreement         # rolled-back: a check whose name has this

The drill posts the spec to /admin/rollouts at ``at_s`` and polls the
rollout every ``POLL_S`` until it ends (and, rolled back, until its
verification is in) or the load does. The scorecard judges:

- the outcome, and for ``not-promoted`` that it never was promoted (held,
  rolled back, or still analysing when the load ended);
- where it ended (``at_stage``) and, for a rollback, which check failed and
  that the rollback was verified (stable serving, its probes passing);
- the failed requests (any status but 200) among those sent from the start
  of the rollout to its end — the cost of the rollout to the clients;
- the evidence of its last decision: every check with its value, threshold
  and sample size, as the gateway recorded it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from pydantic import Field, ValidationError, model_validator

from failsoft._options import StrictModel, validation_problems
from failsoft.control.rollouts import RolloutSpec

__all__ = [
    "POLL_S",
    "RolloutExpect",
    "RolloutOutcome",
    "RolloutScore",
    "RolloutStep",
    "follow_rollout",
    "score_rollout",
]

POLL_S = 0.2
BACK_WITHIN_S = 1.0  # a rollback: no request sent this long after it reaches the candidate
VERIFY_WAIT_S = 5.0  # after a rollback, how long to wait for its verification
ENDED = ("promoted", "aborted", "rolled-back")


class RolloutExpect(StrictModel):
    outcome: Literal["promoted", "rolled-back", "not-promoted"]
    at_stage: Annotated[int, Field(ge=0)] | None = None
    max_failed_pct: Annotated[float, Field(ge=0, le=100)] | None = None
    failed_check: Annotated[str, Field(min_length=1)] | None = Field(
        default=None, description="rolled-back: text in the name of a check that failed"
    )


class RolloutStep(StrictModel):
    """A rollout started through the target's admin API mid-load."""

    at_s: Annotated[float, Field(ge=0)]
    spec: dict[str, Any] = Field(description="the rollout as POST /admin/rollouts takes it")
    short: dict[str, Any] | None = Field(
        default=None, description="keys of spec replaced in the short form (CI)"
    )
    expect: RolloutExpect

    @model_validator(mode="after")
    def _valid_specs(self) -> RolloutStep:
        for where, data in (("spec", self.spec), ("short", self.merged(True))):
            try:
                RolloutSpec.model_validate(data)
            except ValidationError as error:
                problems = validation_problems(error, root="")
                raise ValueError(
                    f"{where}: " + "; ".join(p.removeprefix(": ") for p in problems)
                ) from None
        return self

    def merged(self, short: bool) -> dict[str, Any]:
        return {**self.spec, **(self.short or {})} if short else dict(self.spec)


@dataclass(frozen=True)
class RolloutOutcome:
    """One rollout step as it ran; times in seconds since the load started."""

    number: int
    start_s: float  # the rollout was sent
    status: int  # of the POST (0: no answer)
    error: str
    rollout_id: str
    final: dict[str, Any]  # the rollout as last seen
    ended_s: float | None  # when it was first seen ended (None: still going at the load's end)
    changes: list[tuple[float, str, int]] = field(default_factory=list)  # (t, status, stage)


@dataclass(frozen=True)
class RolloutScore:
    number: int
    rollout_id: str
    status: int
    error: str
    outcome: str  # the rollout's status at the end
    start_s: float
    ended_s: float | None
    stage: int
    stages: list[str]
    reason: str
    requests: int  # sent while it ran
    failed: int
    failed_pct: float | None
    checks: list[dict[str, Any]]  # the last decision's (or analysis's) checks
    verified: dict[str, Any] | None
    history: list[dict[str, Any]]
    changes: list[tuple[float, str, int]]
    back_s: float | None = None  # rollback: until the last request the candidate answered


async def follow_rollout(
    request: Callable[..., Any],
    step: RolloutStep,
    number: int,
    *,
    scale: float,
    started: float,
    until_s: float,
    progress: Callable[[str], None],
) -> RolloutOutcome:
    """At its time, start the rollout; then poll it until it ends or ``until_s`` passes.

    ``request(method, path, body)`` is the admin client's (an answer with
    ``status`` and ``body``).
    """
    await asyncio.sleep(max(0.0, started + step.at_s * scale - time.time()))
    start = time.time() - started
    spec = step.merged(scale < 1.0)
    try:
        answer = await request("POST", "/admin/rollouts", orjson.dumps(spec))
        status, body = answer.status, _json(answer.body)
    except Exception as unreachable:  # the target did not answer: judged as not started
        status, body = 0, {"error": str(unreachable)}
    if status != 201:
        refusal = str(body.get("error", "") or f"HTTP {status}")
        progress(f"  +{start:5.1f}s rollout {number}: refused: {refusal}")
        return RolloutOutcome(number, start, status, refusal, "", body, None)
    rollout_id = str(body["id"])
    progress(f"  +{start:5.1f}s rollout {number} {rollout_id}: {_where(body)}")
    final, ended, changes = body, None, [(start, str(body["status"]), int(body["stage"]))]
    verify_by = None
    while time.time() - started < until_s:
        await asyncio.sleep(POLL_S)
        try:
            seen = await request("GET", f"/admin/rollouts/{rollout_id}", b"")
        except Exception:  # a missed poll; the next one tells
            continue
        if seen.status != 200:
            continue
        final = _json(seen.body)
        now = time.time() - started
        change = (now, str(final["status"]), int(final["stage"]))
        if change[1:] != changes[-1][1:]:
            changes.append(change)
            progress(f"  +{now:5.1f}s rollout {number}: {_where(final)}")
        if final["status"] in ENDED:
            ended = ended if ended is not None else now
            if final["status"] == "promoted" or final.get("verified") is not None:
                break
            verify_by = verify_by or now + VERIFY_WAIT_S
            if now > verify_by:
                break
    return RolloutOutcome(number, start, status, "", rollout_id, final, ended, changes)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"error": raw[:200].decode("utf-8", "replace")}
    return data if isinstance(data, dict) else {"error": "not a JSON object"}


def _where(shown: dict[str, Any]) -> str:
    stages = shown.get("stages") or []
    stage = int(shown.get("stage", 0))
    label = stages[stage] if 0 <= stage < len(stages) else "?"
    reason = shown.get("reason") or ""
    return f"{shown.get('status')} at {label}" + (f": {reason}" if reason else "")


def _back_s(
    final: dict[str, Any], offsets: np.ndarray, served_by: Sequence[str], started_at: float
) -> float | None:
    """From the rollback (its history entry, gateway time) to the send of the last request
    the candidate answered as the primary: how long the switch took, as clients saw it."""
    history = final.get("history") or []
    ended = [e for e in history if e.get("action") in ("rolled-back", "aborted")]
    if not ended:
        return None
    at = float(ended[-1]["at"]) - started_at
    prefix = f"{final.get('model')}/{final.get('candidate')}/"
    late = [
        float(offset)
        for offset, who in zip(offsets, served_by, strict=False)
        if offset >= at and who.startswith(prefix) and "/fallback" not in who
    ]
    return max(0.0, max(late) - at) if late else 0.0


def score_rollout(
    outcome: RolloutOutcome,
    offsets: np.ndarray,
    status: np.ndarray,
    end_s: float,
    served_by: Sequence[str] = (),
    started_at: float | None = None,
) -> RolloutScore:
    final = outcome.final
    until = outcome.ended_s if outcome.ended_s is not None else end_s
    during = (offsets >= outcome.start_s) & (offsets < until)
    requests = int(during.sum())
    failed = int((during & (status != 200)).sum())
    history = list(final.get("history") or [])
    decided = [entry for entry in history if entry.get("checks")]
    analysis = final.get("analysis") or {}
    checks = decided[-1]["checks"] if decided else list(analysis.get("checks") or [])
    return RolloutScore(
        outcome.number,
        outcome.rollout_id,
        outcome.status,
        outcome.error,
        str(final.get("status", "not started")),
        outcome.start_s,
        outcome.ended_s,
        int(final.get("stage", 0) or 0),
        list(final.get("stages") or []),
        str(final.get("reason", "")),
        requests,
        failed,
        100.0 * failed / requests if requests else None,
        checks,
        final.get("verified"),
        history,
        outcome.changes,
        None if started_at is None else _back_s(final, offsets, served_by, started_at),
    )


def evidence(checks: list[dict[str, Any]]) -> str:
    """``replica error rate fail 20.1% (threshold 1.0%, n=240)``, one per check."""
    parts = []
    for check in checks:
        value, threshold = check.get("value"), check.get("threshold")
        shown = "-" if value is None else f"{value:.4g}"
        limit = "-" if threshold is None else f"{threshold:.4g}"
        parts.append(
            f"{check['name']} {check['verdict']} {shown} (threshold {limit}, n={check['samples']})"
        )
    return "; ".join(parts) or "no analysis"


@dataclass(frozen=True)
class _Check:
    name: str
    measured: str
    expected: str
    ok: bool


def rollout_checks(score: RolloutScore, expect: RolloutExpect) -> list[_Check]:
    """The rollout step's checks (``scorecard.Check`` takes the same four fields)."""
    name = f"rollout {score.number}"
    checks = [
        _Check(
            f"{name} started",
            str(score.status or "no answer") + (f": {score.error}" if score.error else ""),
            "started (201)",
            score.status == 201,
        )
    ]
    if score.status != 201:
        return checks
    where = score.stages[score.stage] if 0 <= score.stage < len(score.stages) else "?"
    measured = f"{score.outcome} at {where}"
    if expect.outcome == "not-promoted":
        promoted = any(entry.get("action") == "promoted" for entry in score.history)
        ok = score.outcome != "promoted" and not promoted
        checks.append(_Check(f"{name} outcome", measured, "never promoted", ok))
    else:
        ok = score.outcome == expect.outcome
        checks.append(_Check(f"{name} outcome", measured, expect.outcome, ok))
    if expect.at_stage is not None:
        wanted = score.stages[expect.at_stage] if expect.at_stage < len(score.stages) else "?"
        checks.append(_Check(f"{name} ended at", where, wanted, score.stage == expect.at_stage))
    if expect.failed_check is not None:
        failed = [c["name"] for c in score.checks if c.get("verdict") == "fail"]
        checks.append(
            _Check(
                f"{name} failed check",
                ", ".join(failed) or "none",
                f"one with {expect.failed_check!r}",
                any(expect.failed_check in check for check in failed),
            )
        )
    if score.outcome in ("rolled-back", "aborted"):
        verified = score.verified or {}
        share = verified.get("stable_share")
        shown = (
            "not verified"
            if not verified
            else f"stable share {'-' if share is None else f'{share:.0%}'}, probes "
            f"{verified.get('probes_passed')} passed {verified.get('probes_failed')} failed"
        )
        checks.append(
            _Check(
                f"{name} rollback verified",
                shown,
                "stable serves, probes pass",
                bool(verified.get("ok")),
            )
        )
        back = score.back_s
        checks.append(
            _Check(
                f"{name} back to stable",
                "-" if back is None else f"{back:.3f} s",
                f"<= {BACK_WITHIN_S:g} s",
                back is not None and back <= BACK_WITHIN_S,
            )
        )
    if expect.max_failed_pct is not None:
        pct = score.failed_pct
        checks.append(
            _Check(
                f"{name} failed requests",
                f"{score.failed} of {score.requests}" + ("" if pct is None else f" ({pct:.2f}%)"),
                f"<= {expect.max_failed_pct:g}%",
                pct is not None and pct <= expect.max_failed_pct,
            )
        )
    checks.append(
        _Check(
            f"{name} evidence",
            evidence(score.checks),
            "each check with value, threshold, n",
            bool(score.checks) and all("samples" in check for check in score.checks),
        )
    )
    return checks
