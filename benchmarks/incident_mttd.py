"""Time to detect, measured by failsoft itself, on the all-replicas-down drill.

Runs drills/all-replicas-down.yaml (every iris v1 worker fails every call for
8 s under 50 requests/s; the fallback chain answers, degraded) against the
demo configuration, ROUNDS times, each on a fresh gateway with its own
control store. After each run it reads the gateway's incidents
(/admin/incidents) and reports, per round:

- whether an incident opened, its cause class (expected: infra);
- MTTD: the first impacted (failed or degraded) request -> incident opened,
  as failsoft measured it on its own clock;
- the baseline measured in the same run: the drill's own time to detect (the
  fault's start -> the gateway's first reaction, from the load driver's
  view), and MTTD as a ratio to it;
- the timeline's kinds, and whether it is complete: the fault, the first
  impacted request, failed attempts, breaker opens or ejections, the
  fallback, the panic signal, the opening, and the fault's end.

Target: an incident in every round, cause infra, timeline complete, MTTD <= 5 s.
Exit 0 when met, 1 when not, 2 on a setup failure.

    python benchmarks/incident_mttd.py            # 3 rounds (about 2 minutes)
    python benchmarks/incident_mttd.py --rounds 1 --scale 0.5
    python benchmarks/incident_mttd.py --drill drills/all-workers-killed.yaml
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from failsoft.demo import prepare_demo
from failsoft.drills.experiment import load_experiment
from failsoft.drills.runner import TargetChoice, run_drill
from failsoft.drills.target import open_target

REPO = Path(__file__).resolve().parents[1]
DRILL = REPO / "drills" / "all-replicas-down.yaml"
MAX_MTTD_S = 5.0
NEEDED = ("fault", "impact", "attempt", "fallback", "signal", "state")
# Killed workers: their exits and restarts instead of breakers and ejections.
NEEDED_KILLED = ("fault", "impact", "fallback", "replica", "restart", "signal", "state")


def complete(incident: dict[str, Any], killed: bool = False) -> tuple[bool, list[str]]:
    """Whether the timeline holds what a person needs, and what it lacks."""
    kinds = {entry["kind"] for entry in incident["timeline"]}
    missing = [kind for kind in (NEEDED_KILLED if killed else NEEDED) if kind not in kinds]
    if not killed and not kinds & {"breaker", "ejection"}:
        missing.append("breaker|ejection")
    texts = " ".join(entry["text"] for entry in incident["timeline"])
    if " ended (" not in texts:
        missing.append("fault ended")
    return not missing, missing


# What a person does after the drill, for the sample postmortem (--postmortem).
RESPONSE: tuple[tuple[str, dict[str, Any]], ...] = (
    ("ack", {}),
    ("update", {"text": "v1 workers answer 503; v2 answers meanwhile (degraded)"}),
    ("remediation", {"text": "page on v1's own error rate, not only on the fallback's"}),
    ("remediation", {"text": "drill all-replicas-down weekly in CI"}),
    ("remediation", {"close": 2}),
    ("resolve", {"text": "the fault ended; v1 answers again"}),
)


def one_round(
    config: Path, scale: float, drill: Path = DRILL, respond: bool = False
) -> dict[str, Any]:
    experiment = load_experiment(drill)
    with open_target(config, None) as target:
        os.environ["FAILSOFT_ADMIN_TOKEN"] = target.admin_token or ""
        card = run_drill(experiment, TargetChoice(url=target.url), scale=scale)
        auth = {"Authorization": f"Bearer {target.admin_token}"}
        listed = httpx.get(f"{target.url}/admin/incidents", headers=auth, timeout=10).json()
        incidents = [
            httpx.get(f"{target.url}/admin/incidents/{i['id']}", headers=auth, timeout=10).json()
            for i in listed["incidents"]
        ]
        postmortem = None
        if incidents:
            number = min(i["id"] for i in incidents)
            for verb, body in RESPONSE if respond else ():
                httpx.post(
                    f"{target.url}/admin/incidents/{number}/{verb}",
                    json=body,
                    headers=auth,
                    timeout=10,
                ).raise_for_status()
            postmortem = httpx.get(
                f"{target.url}/admin/incidents/{number}/postmortem", headers=auth, timeout=10
            ).text
    found = [i for i in incidents if i["model"] == "iris"]
    result: dict[str, Any] = {
        "drill_passed": card.passed,
        "drill_detect_s": card.detect_s[0] if card.detect_s else None,
        "incidents": len(found),
        "postmortem": postmortem,
    }
    if found:
        first = min(found, key=lambda i: i["id"])
        killed = any(fault.kind == "kill" for fault in experiment.faults)
        ok, missing = complete(first, killed)
        result.update(
            cause=first["cause"],
            mttd_s=first["mttd_s"],
            timeline_complete=ok,
            missing=missing,
            timeline_entries=len(first["timeline"]),
            failed=first["failed"],
            degraded=first["degraded"],
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--drill", type=Path, default=DRILL, help="another drill (all-workers-killed.yaml)"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="shorten the drill (CI)")
    parser.add_argument(
        "--postmortem",
        type=Path,
        default=None,
        help="acknowledge, update, remediate and resolve round 1's incident, "
        "then write its postmortem here",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="failsoft-mttd-") as scratch:
        try:
            config = prepare_demo(Path(scratch), progress=lambda message: None)
        except Exception as error:
            print(f"setup failed: {error}", file=sys.stderr)
            return 2
        rounds = [
            one_round(
                config, args.scale, args.drill, respond=args.postmortem is not None and n == 0
            )
            for n in range(args.rounds)
        ]
    if args.postmortem is not None and rounds and rounds[0]["postmortem"]:
        args.postmortem.write_text(rounds[0]["postmortem"])
    met = True
    for number, result in enumerate(rounds, 1):
        mttd, base = result.get("mttd_s"), result.get("drill_detect_s")
        ratio = f"{mttd / base:.1f}x" if mttd is not None and base and base >= 0.001 else "n/a"
        print(
            f"round {number}: incidents {result['incidents']}, cause {result.get('cause')}, "
            f"MTTD {mttd if mttd is None else f'{mttd:.3f} s'} "
            f"(drill's time to detect {base if base is None else f'{base:.3f} s'}; "
            f"ratio {ratio}), timeline complete {result.get('timeline_complete')} "
            f"{result.get('missing') or ''}({result.get('timeline_entries')} entries), "
            f"failed {result.get('failed')}, degraded {result.get('degraded')}, "
            f"drill passed {result['drill_passed']}"
        )
        met &= (
            result["incidents"] >= 1
            and result.get("cause") == "infra"
            and bool(result.get("timeline_complete"))
            and mttd is not None
            and mttd <= MAX_MTTD_S
        )
    values = [r["mttd_s"] for r in rounds if r.get("mttd_s") is not None]
    if values:
        print(
            f"MTTD over {len(values)} rounds: median {statistics.median(values):.3f} s, "
            f"max {max(values):.3f} s (target <= {MAX_MTTD_S:g} s)"
        )
    print("target met" if met else "target NOT met")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
