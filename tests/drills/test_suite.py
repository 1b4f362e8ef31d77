"""The suite's runner: drills at once in processes of their own, the result in suite order."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from failsoft.cli import main
from failsoft.drills.experiment import Experiment
from failsoft.drills.runner import TargetChoice
from failsoft.drills.suite import _tagged, run_suite

DRILLS = Path(__file__).resolve().parents[2] / "drills"


def _drill(name: str) -> Experiment:
    request = {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    return Experiment.model_validate(
        {
            "name": name,
            "load": {
                "model": "iris",
                "rate": 10,
                "duration_s": 10,
                "requests": [{"inputs": [request], "expect": {"label": [0]}}],
            },
        }
    )


def _to_stderr(message: str) -> None:  # picklable: the drills' processes print through it
    print(message, file=sys.stderr, flush=True)


def test_drills_that_cannot_run_at_once_are_each_named_in_suite_order(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    missing = TargetChoice(config=tmp_path / "absent.yaml")
    seen: list[str] = []

    result = run_suite(
        [_drill("first"), _drill("second"), _drill("third")],
        missing,
        jobs=2,
        progress=_to_stderr,
        on_card=lambda experiment, card: seen.append(experiment.name),
    )

    assert [experiment.name for experiment, _, _ in result.cards] == ["first", "second", "third"]
    for _, card, problem in result.cards:
        assert card is None
        assert problem == f"target configuration not found: {missing.config}"
    assert seen == []  # no scorecard to show
    assert result.passed == 0
    assert len(result.seconds) == 3
    printed = capfd.readouterr().err
    assert "3 drills, 2 at a time" in printed
    assert "second: could not run: target configuration not found" in printed


def test_drills_at_once_against_one_running_gateway_are_refused() -> None:
    with pytest.raises(ValueError, match="one at a time"):
        run_suite([_drill("a")], TargetChoice(url="http://127.0.0.1:9"), jobs=2, progress=print)


def test_the_cli_refuses_jobs_with_a_url() -> None:
    result = CliRunner().invoke(
        main, ["drill", "suite", str(DRILLS), "--url", "http://127.0.0.1:9", "--jobs", "2"]
    )

    assert result.exit_code == 2
    assert "would mix their faults" in result.output


def test_the_cli_refuses_zero_jobs() -> None:
    result = CliRunner().invoke(main, ["drill", "suite", str(DRILLS), "--jobs", "0"])

    assert result.exit_code == 2
    assert "--jobs" in result.output


def test_each_line_of_a_drill_running_with_others_names_it() -> None:
    lines: list[str] = []

    _tagged(lines.append, "replica-crash", "replica-crash: starting the target")
    _tagged(lines.append, "replica-crash", "  +  3.3s fault f1: kill iris/v1/w0")

    assert lines == [
        "replica-crash: starting the target",
        "replica-crash: +  3.3s fault f1: kill iris/v1/w0",
    ]
