"""A suite: every drill file in a folder, run one after the other, one verdict.

Each drill gets a fresh target (started from the same configuration), so one
drill's ejections and open breakers cannot help or hurt the next. The
resilience score is the share of drills that passed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from failsoft.drills.experiment import Experiment, ExperimentError, load_experiment
from failsoft.drills.runner import Progress, TargetChoice, run_drill
from failsoft.drills.scorecard import Scorecard
from failsoft.drills.target import TargetError


@dataclass
class SuiteResult:
    cards: list[tuple[Experiment, Scorecard | None, str]]  # (drill, scorecard, error)
    seconds: list[float] = field(default_factory=list)  # wall time of each drill

    @property
    def passed(self) -> int:
        return sum(1 for _, card, _ in self.cards if card is not None and card.passed)

    @property
    def score_pct(self) -> float:
        return 100.0 * self.passed / len(self.cards) if self.cards else 0.0


def drill_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def load_suite(folder: Path) -> list[Experiment]:
    """Every drill in ``folder``, all validated before any runs."""
    if not folder.is_dir():
        raise ExperimentError(str(folder), ["not a folder of drill files"])
    files = drill_files(folder)
    if not files:
        raise ExperimentError(str(folder), ["no drill files (*.yaml) here"])
    experiments, problems = [], []
    for path in files:
        try:
            experiments.append(load_experiment(path))
        except ExperimentError as error:
            problems += [f"{path.name}: {problem}" for problem in error.problems]
    if problems:
        raise ExperimentError(str(folder), problems)
    return experiments


def run_suite(
    experiments: list[Experiment],
    choice: TargetChoice,
    *,
    short_s: float | None = None,
    progress: Progress,
    on_card: Callable[[Experiment, Scorecard], None] | None = None,
) -> SuiteResult:
    """Run each drill; with ``short_s``, each drill's times shrink to a load of that long."""
    result = SuiteResult([])
    for index, experiment in enumerate(experiments, 1):
        progress(f"[{index}/{len(experiments)}] {experiment.name}")
        scale = experiment.scale_for(short_s)
        started = time.monotonic()
        try:
            card = run_drill(experiment, choice, scale=scale, progress=progress)
        except TargetError as error:
            result.cards.append((experiment, None, str(error)))
            result.seconds.append(time.monotonic() - started)
            progress(f"{experiment.name}: could not run: {error}")
            continue
        result.cards.append((experiment, card, ""))
        result.seconds.append(time.monotonic() - started)
        if on_card is not None:
            on_card(experiment, card)
    return result
