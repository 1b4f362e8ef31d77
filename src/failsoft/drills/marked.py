"""Requests marked in the drill file as to be degraded (or not), and how they were answered.

A load request may say ``degraded: true`` (it breaks the model's input
constraints under ``input_policy: degrade``: it must be answered 200 by the
fallback chain, marked degraded, with a Failsoft-Data-Warning header) or
``degraded: false`` (it must be answered by the model itself, not degraded,
without a warning). Requests are cycled, so request ``i`` of the load is
``load.requests[i % len(load.requests)]``.
"""

from __future__ import annotations

import numpy as np

from failsoft.drills.experiment import Experiment
from failsoft.drills.load import Outcomes


def marked_answers(experiment: Experiment, outcomes: Outcomes) -> dict[str, int] | None:
    """Counts for the marked requests (None when no request is marked)."""
    specs = experiment.load.requests
    marks = [spec.degraded for spec in specs]
    if all(mark is None for mark in marks):
        return None
    count = len(outcomes.status)
    which = np.array([marks[i % len(specs)] for i in range(count)], dtype=object)
    violators = which == True  # noqa: E712 - an object array of True/False/None
    others = which == False  # noqa: E712
    answered = outcomes.status == 200
    degraded = answered & outcomes.degraded
    warned = outcomes.warned
    good_violators = violators & degraded & warned
    clean_others = others & answered & ~outcomes.degraded & ~warned
    return {
        "violators": int(violators.sum()),
        "violators_degraded": int((violators & degraded).sum()),
        "violators_warned": int((violators & answered & warned).sum()),
        "others": int(others.sum()),
        "others_degraded": int((others & degraded).sum()),
        "others_warned": int((others & answered & warned).sum()),
        "not_as_marked": int((violators & ~good_violators).sum() + (others & ~clean_others).sum()),
    }
