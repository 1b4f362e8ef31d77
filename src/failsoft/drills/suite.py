"""A suite: every drill file in a folder, run one after the other, one verdict.

Each drill gets a fresh target (started from the same configuration), so one
drill's ejections and open breakers cannot help or hurt the next. The
resilience score is the share of drills that passed.

With ``jobs`` above 1 that many drills run at once, each in a process of its
own (its load's timing never waits on another drill's work for the GIL) and
against its own target. Most drills send a fixed 100 requests a second and
spend their time waiting, so a few at once take a fraction of the time on a
small machine; but drills running together share its cores, so the figures
to keep come from a run with one at a time.
"""

from __future__ import annotations

import functools
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
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
    jobs: int = 1,
    progress: Progress,
    on_card: Callable[[Experiment, Scorecard], None] | None = None,
) -> SuiteResult:
    """Run each drill, ``jobs`` at a time; with ``short_s``, each drill's times shrink to a
    load of that long. ``on_card`` sees each scorecard as its drill ends; the result keeps
    the suite's order."""
    if jobs > 1 and choice.url is not None:
        raise ValueError("drills against one running gateway run one at a time")
    outcomes: list[Outcome | None] = [None] * len(experiments)
    if jobs <= 1:
        for index, experiment in enumerate(experiments):
            progress(f"[{index + 1}/{len(experiments)}] {experiment.name}")
            outcome = _run_one(experiment, choice, short_s, progress)
            outcomes[index] = outcome
            _show(outcome, experiment, on_card)
    else:
        spawn = multiprocessing.get_context("spawn")  # no copy of this process's threads
        with ProcessPoolExecutor(max_workers=jobs, mp_context=spawn) as pool:
            running: dict[Future[Outcome], int] = {}
            for index, experiment in enumerate(experiments):
                tagged = functools.partial(_tagged, progress, experiment.name)
                running[pool.submit(_run_one, experiment, choice, short_s, tagged)] = index
            progress(f"{len(experiments)} drills, {jobs} at a time")
            for future in as_completed(running):
                index = running[future]
                try:
                    outcome = future.result()
                except Exception as error:  # the drill's process died: say so, go on
                    outcome = (None, f"its process failed: {error}", 0.0)
                outcomes[index] = outcome
                _show(outcome, experiments[index], on_card)
    result = SuiteResult([])
    for experiment, ended in zip(experiments, outcomes, strict=True):
        assert ended is not None
        card, problem, seconds = ended
        result.cards.append((experiment, card, problem))
        result.seconds.append(seconds)
    return result


# A drill's scorecard (None when it could not run), why it could not, its wall time.
Outcome = tuple[Scorecard | None, str, float]


def _run_one(
    experiment: Experiment, choice: TargetChoice, short_s: float | None, progress: Progress
) -> Outcome:
    started = time.monotonic()
    try:
        card = run_drill(experiment, choice, scale=experiment.scale_for(short_s), progress=progress)
    except TargetError as error:
        progress(f"{experiment.name}: could not run: {error}")
        return None, str(error), time.monotonic() - started
    return card, "", time.monotonic() - started


def _show(
    outcome: Outcome,
    experiment: Experiment,
    on_card: Callable[[Experiment, Scorecard], None] | None,
) -> None:
    if outcome[0] is not None and on_card is not None:
        on_card(experiment, outcome[0])


def _tagged(progress: Progress, name: str, message: str) -> None:
    """``progress`` with every line naming its drill (drills running at once interleave)."""
    progress(message if message.startswith(name) else f"{name}: {message.strip()}")
