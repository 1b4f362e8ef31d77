"""The bundled drill suite, run for real: it passes on the demo configuration, and
it fails, naming the broken promise, when the resilience features are switched off.

Both runs use the short form CI runs (10 s of load per drill) through the real
`failsoft drill suite` command, JOBS drills at a time; each drill starts its own
gateway. The run with resilience off takes one drill per switch; `pytest --long`
runs all the drills whose failing lines are asserted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from failsoft.demo import CONFIG_NAME
from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration

DRILLS = REPO / "drills"
DRILL_COUNT = len(list(DRILLS.glob("*.yaml")))
SUITE_TIMEOUT_S = 840  # within pytest-timeout's 900 s a test, so the suite's output is kept
# Drills at a time. Each sends 100 requests a second and mostly waits: on a fast 2-core
# machine three at once passed, but on one a third as fast (1,900-2,600 req/s for the
# serve benchmark) three at once failed three drills (workers not back after the heal, p99
# 209 ms against 200, overload's availability 97.5%), before this change as after it, and
# one at a time passed them. So: one at a time unless cores are to spare.
JOBS = max(1, min(3, (os.cpu_count() or 1) - 1))
# The drills that kill, fail, corrupt or hang one worker of two.
SINGLE_WORKER = ("replica-crash", "replica-errors", "replica-garbage", "replica-hang")


# With resilience off only these drills' failing lines are asserted. The rollout,
# data-shift and bad-deploy drills judge the control plane and data checks, which those
# switches do not touch, and safe-halt breaks as kill-switch does: running them again
# would only spend CI time.
FRAGILE_DRILLS = (
    "all-replicas-down",
    "all-workers-killed",
    "bad-inputs",
    "hostile-client",
    "kill-switch",
    "overload",
    "replica-slow",
    "worker-restart-storm",
    *SINGLE_WORKER,
)
# Without --long, one drill for each switch turned off (fallback, admission, hedging,
# attribution, retries, ejection) and bad-inputs, whose setup is refused at once; the
# others break the same promises again.
SHORT_FRAGILE_DRILLS = (
    "all-replicas-down",
    "bad-inputs",
    "hostile-client",
    "overload",
    "replica-crash",
    "replica-errors",
    "replica-slow",
)


def run_suite(config: Path, out: Path, drills: Path = DRILLS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "failsoft",
            "drill",
            "suite",
            str(drills),
            "--short",
            "--jobs",
            str(JOBS),
            "--config",
            str(config),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT_S,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )


def summary(stdout: str) -> dict[str, str]:
    """drill name -> the summary line's verdict and failing checks."""
    lines = stdout.split("suite summary:", 1)[1].splitlines()
    found = {}
    for line in lines:
        match = re.match(r"\s+(passed|FAILED)\s+(\S+)\s+[\d.]+s\s*(.*)$", line)
        if match:
            found[match.group(2)] = f"{match.group(1)} {match.group(3)}".strip()
    return found


def failed_reports(stdout: str) -> str:
    """The scorecards of the drills that failed, then the suite's summary: what a failure
    needs explained, where the output's tail would show only the last drills."""
    report = re.compile(r"^drill (\S+): \d+ requests\n.*?^drill \1 (PASSED|FAILED)$", re.M | re.S)
    failed = [m.group(0) for m in report.finditer(stdout) if m.group(2) == "FAILED"]
    summary_at = stdout.find("suite summary:")
    return "\n".join([*failed, stdout[summary_at:] if summary_at >= 0 else stdout[-6000:]])


def fragile_config(demo_dir: Path, directory: Path) -> Path:
    """The demo without retries, hedging, ejection, fallback, admission control, failure
    attribution, or the balancer's failure penalty (which alone steers calls away from a
    failing replica)."""
    config: dict[str, Any] = yaml.safe_load((demo_dir / CONFIG_NAME).read_text())
    for model in config["models"].values():
        model["retry"] = {"enabled": False}
        model["hedge"] = {"enabled": False}
        model["ejection"] = {"enabled": False}
        model["limiter"] = {"enabled": False}
        model["balancer"] = {"failure_penalty_ms": 0}
        model["fallback"] = []
        model["attribution"] = {"enabled": False}
    path = demo_dir / "fragile.yaml"  # next to the model files its paths name
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_bundled_suite_passes_on_the_demo_configuration(demo_dir: Path, tmp_path: Path) -> None:
    result = run_suite(demo_dir / CONFIG_NAME, tmp_path)
    assert result.returncode == 0, failed_reports(result.stdout) + result.stderr[-3000:]
    verdicts = summary(result.stdout)
    assert set(verdicts) == {path.stem for path in DRILLS.glob("*.yaml")}
    assert all(verdict == "passed" for verdict in verdicts.values()), verdicts
    assert DRILL_COUNT == 19
    assert f"resilience score: 100% ({DRILL_COUNT} of {DRILL_COUNT} drills passed)" in result.stdout
    card = json.loads((tmp_path / "replica-crash.json").read_text())
    assert card["passed"] is True
    assert card["lost"] == 0
    assert (tmp_path / "replica-crash.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hostile = json.loads((tmp_path / "hostile-client.json").read_text())
    assert set(hostile["attack"]) == {"poison", "deadline", "outputs", "oversize"}
    assert hostile["attack"]["oversize"] == {"413": sum(hostile["attack"]["oversize"].values())}
    assert hostile["not_ready"] == 0
    assert hostile["readiness_polls"] >= 90
    for name in ("all-replicas-down", "all-workers-killed"):
        healed = json.loads((tmp_path / f"{name}.json").read_text())
        assert healed["failed_after_heal"] <= 5, (name, healed["failed_after_heal"])
    # The infra incident, the bundled runbook's notice (received by the drill) and MTTD.
    down = json.loads((tmp_path / "all-replicas-down.json").read_text())["incident"]
    assert down["cause"] == "infra"
    assert down["state"] == "mitigated"
    assert down["acted"] == ["webhook"]
    assert down["received"] == {"oncall": 1}
    assert down["missing"] == []
    assert 0 <= down["mttd_s"] <= 5
    assert any(row["text"].startswith("waiting for approval") for row in down["runbook"])
    deployed = json.loads((tmp_path / "bad-deploy.json").read_text())
    assert [deploy["result"] for deploy in deployed["deploys"]] == ["refused", "refused"]
    assert "sha256" in deployed["deploys"][0]["reason"]
    assert "failed its probe" in deployed["deploys"][1]["reason"]
    assert deployed["lost"] == 0
    assert deployed["degraded_pct"] == 0
    shifted = json.loads((tmp_path / "data-shift.json").read_text())
    assert shifted["drift"]["false_alarms"] == 0
    assert shifted["drift"]["detect_s"] <= 60
    assert "features[2]" in shifted["drift"]["named"]
    assert shifted["lost"] == 0
    bad = json.loads((tmp_path / "bad-inputs.json").read_text())
    assert bad["lost"] == 0
    marked = bad["marked"]
    assert marked["violators"] == bad["requests"] // 10  # 2 of the 20 requests cycled
    assert marked["violators_degraded"] == marked["violators_warned"] == marked["violators"]
    assert marked["others_degraded"] == marked["others_warned"] == marked["not_as_marked"] == 0
    assert sum(bad["replica_penalties"].values()) == 0
    for name, outcome, stage in (
        ("rollout-good", "promoted", None),
        ("rollout-errors", "rolled-back", 0),
        ("rollout-wrong-predictions", "rolled-back", 0),
        ("rollout-low-traffic", "paused", 0),
    ):
        rolled = json.loads((tmp_path / f"{name}.json").read_text())["rollouts"][0]
        assert rolled["outcome"] == outcome, (name, rolled["reason"])
        assert stage is None or rolled["stage"] == stage, (name, rolled["stage"])
        assert all("samples" in check for check in rolled["checks"]), name
    wrong = json.loads((tmp_path / "rollout-wrong-predictions.json").read_text())["rollouts"][0]
    assert any(c["name"].startswith("disagreement") for c in wrong["checks"])
    assert all(entry["action"] != "promoted" for entry in wrong["history"])
    for name, steps in (("kill-switch", 1), ("safe-halt", 2)):
        switched = json.loads((tmp_path / f"{name}.json").read_text())
        assert switched["lost"] == 0, name
        assert len(switched["flags"]) == steps, name
        for flag in switched["flags"]:
            assert flag["status"] == 200, (name, flag)
            assert flag["effective_s"] < 1.0, (name, flag)
            assert flag["calls"] == 0, (name, flag)
            assert flag["answers"]["other"] == 0, (name, flag)
            assert flag["answers"]["fallback"] > 0, (name, flag)


def test_the_suite_fails_with_the_right_lines_when_resilience_is_off(
    demo_dir: Path, tmp_path: Path, long_run: bool
) -> None:
    names = FRAGILE_DRILLS if long_run else SHORT_FRAGILE_DRILLS
    chosen = tmp_path / "drills"
    chosen.mkdir()
    for name in names:
        (chosen / f"{name}.yaml").symlink_to(DRILLS / f"{name}.yaml")
    if "replica-slow" in names:
        # The short form's fault window holds ~333 requests, so its p99 is about the
        # 4th slowest: with 3% of calls stalled, fewer than 4 stall about once in a
        # hundred runs (a CI run met it). A 10% share makes that vanishingly rare.
        drill = yaml.safe_load((DRILLS / "replica-slow.yaml").read_text())
        drill["faults"][0]["probability"] = 0.1
        (chosen / "replica-slow.yaml").unlink()
        (chosen / "replica-slow.yaml").write_text(yaml.safe_dump(drill))
    result = run_suite(fragile_config(demo_dir, tmp_path), tmp_path / "out", chosen)
    assert result.returncode == 1, result.stdout[-6000:]
    verdicts = summary(result.stdout)
    assert set(verdicts) == set(names), verdicts

    def expect(name: str, *phrases: str, starts: str = "FAILED") -> None:
        """The drill failed, its line starting with `starts` and naming each phrase."""
        if name not in names:  # only --long runs it
            return
        assert verdicts[name].startswith(starts), (name, verdicts[name])
        for phrase in phrases:
            assert phrase in verdicts[name], (name, phrase, verdicts[name])

    # Without fallback, every v1 answer is lost while v1 is down. (A request sent just
    # before the fault and answered once it bit may fail "availability before" too.)
    expect("all-replicas-down", "availability during")
    # Without admission control the saturated model times out, critical requests too.
    expect("overload", "availability during")
    # Without retries, a killed worker's calls fail; without fallback, so do the rest.
    expect("worker-restart-storm", "requests lost")
    # Without hedging, the 3% of calls that stall for 300 ms make the p99.
    expect("replica-slow", starts="FAILED p99 during")
    # Without fallback, a total outage of v1 loses every request while it lasts.
    expect("all-workers-killed", "availability during")
    # Without fallback, poison inputs that drive v1 to NaN are answered with errors.
    expect("hostile-client", "poison uncontained")
    # The single-worker drills: the balancer splits calls between workers that look
    # alike, so the sick one gets its share from the start. Without retries the call
    # that meets the crash is lost; without retries and ejection, the failing worker's
    # calls fail until its breaker opens; without hedging, a call that reaches the hung
    # worker waits out its deadline (then the worker looks slow and is avoided).
    for name in SINGLE_WORKER:
        expect(name, "requests lost")
    for name in ("replica-errors", "replica-garbage"):
        expect(name, "availability during")
    # Without fallback a switched-off or halted version's requests get a clean 503: the
    # switches still hold (in force at once, no call to the version, no silent answer),
    # only the availability the fallback chain gave is gone. (safe-halt breaks the same
    # way; not run twice here.)
    expect("kill-switch", "availability during", "requests lost")
    assert "flag" not in verdicts.get("kill-switch", ""), verdicts
    # Without a fallback chain the degrade policy has nothing to answer with: the drill's
    # setup is refused (the configuration is invalid), and says why.
    expect("bad-inputs", "input_policy degrade needs a fallback chain")
    assert re.search(r"FAIL availability during\s+0\.00%", result.stdout)
    assert re.search(
        rf"resilience score: \d+% \(\d+ of {len(names)} drills passed\)", result.stdout
    )
