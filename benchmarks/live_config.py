"""Live configuration under load: apply, roll back and refuse revisions without a restart.

Measures the live-configuration rows of issue 11's acceptance table on a
running gateway, each against the same gateway's own figures before the
change (measured in the same run). Every scenario starts a fresh gateway,
``failsoft serve --config F --data-dir D`` (a fresh D each time, an admin
token in FAILSOFT_ADMIN_TOKEN), on the demo's configuration: iris v1 in two
supervised worker processes (the default), v2 in-process, a fallback chain.
An open-loop load of RATE (200) requests/s goes to iris's default version for
the whole run (failsoft.drills.load.run_load: latency from each request's
scheduled send, three rows cycled, each answer checked against its label),
and the changes go through the admin API at set times:

(a) swap: apply a revision that adds iris v3 (an ONNX copy of the demo's iris
    v1 model, in-process) and makes it the default; then (c) roll back to the
    previous revision (v1 never left: its workers are warm); then apply one
    that replaces v1 by v3 (v1's workers are stopped) and roll back to the
    previous revision again, which needs v1's workers started anew.
(b) slow: the same apply with a model whose loading really takes about 1 s:
    an ExtraTrees ensemble of 256 deep trees (about 2 million nodes, 100 MB of
    ONNX) built once with scikit-learn + skl2onnx and cached; the time to
    create its onnxruntime session is measured and printed. In-process (the
    session is created on the replica's thread) and, in a third gateway, as
    `backend: process` (one worker process). Then (c) a rollback to the
    previous revision and one to the older revision with the slow model,
    which must load it again (load + probe).
(d) bad: apply a revision whose file does not match its sha256 pin, and one
    that adds a v3 (an ONNX model trained on rotated labels: well-formed,
    wrong) failing its golden probe: each must be refused with its reason
    while the old revision keeps serving.

For each change: requests that failed (any status but 200, or a wrong
answer) and that were degraded (Failsoft-Degraded: true), from the change to
the next one; p99 of the requests sent from the change until 1 s after the
gateway's answer (the swap window) against p99 of the steady seconds before
the first change; for a rollback, the time from the request until answers
come from the old default (every request sent from then on is served by it),
with a resolution of one request interval (5 ms).

Targets (issue 11): (a) 0 failed, 0 degraded, p99 during <= 2x before;
(b) 0 failed, p99 during <= max(2x before, before + 20 ms); (c) rollback to
the previous revision effective in < 2 s with 0 failed, to an older one
reported (it is load + probe); (d) refused with the reason, the revision
served unchanged, 0 failed. Exit 0 when all are met, 1 when one is missed,
2 on a setup failure. On a small shared machine the p99 figures are noisy:
a p99 over a window of a few hundred requests is its third-worst latency.

    python benchmarks/live_config.py                    # about 2 minutes (+20 s the first time)
    python benchmarks/live_config.py --quick            # about 1.5 minutes
    python benchmarks/live_config.py --rounds 3         # three fresh sets of gateways
    python benchmarks/live_config.py --quick --scenario bad --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import (
    REPO,
    ServerProcess,
    free_port,
    iris_body,
    run_async,
    src_env,
    wait_until_answers,
)

if str(REPO / "src") not in sys.path:
    sys.path.insert(1, str(REPO / "src"))
from failsoft.demo import default_data_dir, demo_config_text, prepare_demo
from failsoft.drills.deploy import merge_patch
from failsoft.drills.experiment import Load
from failsoft.drills.load import Outcomes, Schedule, run_load
from failsoft.drills.target import AdminClient

HOST = "127.0.0.1"
RATE = 200.0
SETTLE_S = 1.0  # the swap window runs this long past the gateway's answer
TIMEOUT_MS = 1000  # the demo's deadline
ROWS = [  # (features, label) cycled by the load; every model here answers these alike
    ([5.1, 3.5, 1.4, 0.2], 0),
    ([5.7, 2.8, 4.1, 1.3], 1),
    ([6.7, 3.0, 5.2, 2.3], 2),
]
TOKEN_ENV = "FAILSOFT_ADMIN_TOKEN"
SCENARIOS = ("swap", "slow", "slow-process", "bad")

# The slow model: change the recipe number when the recipe changes (the cache is rebuilt).
SLOW_RECIPE = 1
SLOW_TREES = 256  # a power of two: averaged leaf probabilities stay exactly within [0, 1]
SLOW_SAMPLES = 24_000
SLOW_NOISE = 0.3


# --- models ---------------------------------------------------------------------------


def cache_root() -> Path:
    """Next to the demo's cache: ``$FAILSOFT_HOME/bench``, else ``~/.cache/failsoft/bench``."""
    return default_data_dir().parent / "bench"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, Any]:
    import onnxruntime
    import skl2onnx
    import sklearn

    return {
        "recipe": SLOW_RECIPE,
        "sklearn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _export(model: Any) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        model,
        initial_types=[("features", FloatTensorType([None, 4]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    data: bytes = onx.SerializeToString()
    return data


def _slow_model() -> bytes:
    """Deep trees on noisy copies of the iris rows: many nodes, slow to load, fast to run."""
    from sklearn.datasets import load_iris
    from sklearn.ensemble import ExtraTreesClassifier

    features, target = load_iris(return_X_y=True)
    rng = np.random.default_rng(0)
    picked = rng.integers(0, len(target), SLOW_SAMPLES)
    noisy = (features[picked] + rng.normal(0, SLOW_NOISE, (SLOW_SAMPLES, 4))).astype(np.float32)
    model = ExtraTreesClassifier(n_estimators=SLOW_TREES, random_state=0, n_jobs=1)
    model.fit(noisy, target[picked])
    return _export(model)


def _wrong_model() -> bytes:
    """Logistic regression on rotated labels: well-formed answers, every one of them wrong."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, target = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=5000, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(features.astype(np.float32), (target + 1) % 3)
    return _export(model)


def _session(path: Path) -> Any:
    """An onnxruntime session made as failsoft's onnx backend makes one."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])


def _answers(path: Path) -> tuple[list[int], float, float]:
    session = _session(path)
    rows = np.asarray([row for row, _ in ROWS], dtype=np.float32)
    label, probabilities = session.run(["label", "probabilities"], {"features": rows})
    return [int(x) for x in label], float(probabilities.min()), float(probabilities.max())


@dataclass(frozen=True)
class Models:
    demo: Path  # the demo's folder: iris-v1.onnx, iris-v2.onnx, breast-cancer-v1.onnx
    copy: Path  # iris v3: a byte copy of iris-v1.onnx under another name
    slow: Path  # iris v3 that takes about 1 s to load
    wrong: Path  # iris v3 that fails the golden probe
    slow_bytes: int


def prepare_models(cache: Path, progress: Callable[[str], None]) -> Models:
    """Train (or reuse) the models; the slow one is checked to answer like the demo's."""
    demo = cache / "demo"
    prepare_demo(demo, progress=lambda message: None, port=0)
    folder = cache / "live-config"
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / "iris-v3-copy.onnx"
    if not copy.is_file() or _sha256(copy) != _sha256(demo / "iris-v1.onnx"):
        shutil.copyfile(demo / "iris-v1.onnx", copy)
    manifest_path = folder / "manifest.json"
    builders = {"iris-v3-slow.onnx": _slow_model, "iris-v3-wrong.onnx": _wrong_model}
    try:
        manifest = json.loads(manifest_path.read_text())
        valid = manifest["versions"] == _versions() and all(
            _sha256(folder / name) == manifest["files"][name] for name in builders
        )
    except (OSError, ValueError, KeyError, TypeError):
        valid = False
    if valid:
        progress(f"models: using the cached files in {folder}")
    else:
        progress(f"models: building the slow and the wrong iris v3 into {folder} (about 30 s)")
        files = {}
        for name, build in builders.items():
            started = time.perf_counter()
            data = build()
            (folder / name).write_bytes(data)
            files[name] = hashlib.sha256(data).hexdigest()
            progress(f"  {name}: {len(data) / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s")
        manifest_path.write_text(json.dumps({"versions": _versions(), "files": files}, indent=2))
    slow, wrong = folder / "iris-v3-slow.onnx", folder / "iris-v3-wrong.onnx"
    labels, low, high = _answers(slow)
    if labels != [label for _, label in ROWS] or low < 0 or high > 1:
        raise RuntimeError(f"{slow}: answers {labels}, probabilities in [{low}, {high}]")
    labels, _, _ = _answers(wrong)
    if labels[0] == ROWS[0][1]:
        raise RuntimeError(f"{wrong}: answers the golden row right; it must not")
    return Models(demo, copy, slow, wrong, slow.stat().st_size)


def measure_load_s(path: Path, times: int) -> list[float]:
    """Seconds to create the model's onnxruntime session (file read included), ``times`` times."""
    seconds = []
    for _ in range(times):
        started = time.perf_counter()
        _session(path)
        seconds.append(time.perf_counter() - started)
    return seconds


# --- a gateway, its load and its changes ----------------------------------------------


def base_config(models: Models) -> dict[str, Any]:
    """The demo's configuration with absolute model paths."""
    config: dict[str, Any] = yaml.safe_load(demo_config_text(port=0, host=HOST))
    for model in config["models"].values():
        for version in model["versions"].values():
            local = version.get("worker", version)
            if "path" in local:
                local["path"] = str(models.demo / local["path"])
    return config


def v3(path: Path, backend: str = "onnx") -> dict[str, Any]:
    local = {"backend": "onnx", "path": str(path)}
    if backend == "process":
        return {"backend": "process", "replicas": 1, "worker": local}
    return local


def iris_patch(**iris: Any) -> dict[str, Any]:
    return {"models": {"iris": iris}}


Action = Callable[[AdminClient], Awaitable[tuple[int, Any]]]


@dataclass(frozen=True)
class Step:
    name: str
    action: Action
    serves: str | None = None  # the default version answers must come from after it


def apply(patch: dict[str, Any]) -> Action:
    async def run(admin: AdminClient) -> tuple[int, Any]:
        _, served = await admin.served_config()
        return await admin.propose(merge_patch(served, patch), "benchmarks/live_config.py")

    return run


def rollback(revision: int | None = None) -> Action:
    async def run(admin: AdminClient) -> tuple[int, Any]:
        return await admin.rollback(revision)

    return run


@dataclass
class StepRun:
    """One change as it ran; times in seconds since the load started."""

    name: str
    serves: str | None
    at_s: float  # the request was sent
    answered_s: float  # the gateway answered
    status: int
    answer: Any
    revision_before: int
    revision_after: int


@dataclass(frozen=True)
class Timing:
    warm_s: float  # not judged: the first seconds of a fresh gateway
    before_s: float  # the baseline
    hold_s: float  # from one change to the next, and after the last


async def drive(
    url: str, token: str, steps: Sequence[Step], timing: Timing
) -> tuple[Outcomes, list[StepRun]]:
    duration = timing.warm_s + timing.before_s + len(steps) * timing.hold_s
    load = Load.model_validate(
        {
            "model": "iris",
            "rate": RATE,
            "duration_s": duration,
            "timeout_ms": TIMEOUT_MS,
            "requests": [
                {
                    "inputs": [
                        {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": row}
                    ],
                    "expect": {"label": [label]},
                }
                for row, label in ROWS
            ],
        }
    )
    schedule = Schedule.soon(0.05)
    admin = AdminClient(url, token)
    runs: list[StepRun] = []

    async def changes() -> None:
        for number, step in enumerate(steps):
            at = schedule.clock + timing.warm_s + timing.before_s + number * timing.hold_s
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            before, _ = await admin.served_config()
            sent = time.perf_counter() - schedule.clock
            status, answer = await step.action(admin)
            answered = time.perf_counter() - schedule.clock
            after, _ = await admin.served_config()
            runs.append(
                StepRun(step.name, step.serves, sent, answered, status, answer, before, after)
            )

    try:
        outcomes, _ = await asyncio.gather(run_load(url, load, schedule=schedule), changes())
    finally:
        await admin.close()
    return outcomes, runs


def start_gateway(
    config: dict[str, Any], work: Path, name: str, token: str
) -> tuple[ServerProcess, str]:
    path = work / f"{name}.json"
    path.write_text(json.dumps(config))  # JSON is YAML
    data_dir = work / f"{name}-data"  # fresh: a new control store, revision 1 from the file
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "failsoft",
        "serve",
        "--config",
        str(path),
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]
    server = ServerProcess(f"failsoft-{name}", argv, work, env={**src_env(), TOKEN_ENV: token})
    url = f"http://{HOST}:{port}"
    wait_until_answers(server, f"{url}/v2/models/iris/infer", iris_body(), timeout_s=120)
    return server, url


# --- judging ----------------------------------------------------------------------------


def _version(served_by: str) -> str:
    parts = served_by.split("/")
    return parts[1] if len(parts) > 2 and not parts[2].startswith("fallback") else ""


@dataclass
class Window:
    requests: int
    failed: int
    degraded: int
    p99_ms: float | None
    max_ms: float | None


def window(outcomes: Outcomes, start_s: float, end_s: float) -> Window:
    mask = (outcomes.offsets >= start_s) & (outcomes.offsets < end_s)
    answered = outcomes.latency_s[mask & (outcomes.status == 200)] * 1000
    p99 = float(np.percentile(answered, 99)) if answered.size else None
    top = float(answered.max()) if answered.size else None
    return Window(
        int(mask.sum()),
        int((mask & ~outcomes.correct).sum()),
        int((mask & outcomes.degraded).sum()),
        p99,
        top,
    )


def effective_s(outcomes: Outcomes, start_s: float, end_s: float, version: str) -> float | None:
    """From ``start_s`` until every request sent from then to ``end_s`` is served by ``version``."""
    mask = (outcomes.offsets >= start_s) & (outcomes.offsets < end_s)
    indices = np.flatnonzero(mask)
    good = [
        _version(outcomes.served_by[i]) == version and not outcomes.degraded[i] for i in indices
    ]
    if not good or not good[-1]:
        return None
    first = len(good)
    while first > 0 and good[first - 1]:
        first -= 1
    return max(0.0, float(outcomes.offsets[indices[first]]) - start_s)


@dataclass
class Measured:
    """One change, judged."""

    scenario: str
    step: str
    status: int
    revision_before: int
    revision_after: int
    call_s: float  # the admin call, from request to answer
    after: Window  # from the change to the next one
    swap: Window  # from the change to SETTLE_S past the answer
    effective_s: float | None  # rollbacks and applies: until answers come from the new default
    reason: str
    versions_after: dict[str, int]  # served-by versions of the requests after the change


@dataclass
class Scenario:
    name: str
    baseline: Window
    warm: Window
    steps: list[Measured] = field(default_factory=list)
    load_s: list[float] = field(default_factory=list)  # the slow model's session creation


def judge(name: str, outcomes: Outcomes, runs: list[StepRun], timing: Timing) -> Scenario:
    begin = timing.warm_s
    result = Scenario(
        name,
        baseline=window(outcomes, begin, begin + timing.before_s),
        warm=window(outcomes, 0.0, begin),
    )
    ends = [run.at_s for run in runs[1:]] + [float(outcomes.offsets[-1]) + 1.0]
    for run, end in zip(runs, ends, strict=True):
        mask = (outcomes.offsets >= run.at_s) & (outcomes.offsets < end)
        versions: dict[str, int] = {}
        for index in np.flatnonzero(mask):
            version = _version(outcomes.served_by[index]) or "other"
            versions[version] = versions.get(version, 0) + 1
        answer = run.answer if isinstance(run.answer, dict) else {}
        result.steps.append(
            Measured(
                name,
                run.name,
                run.status,
                run.revision_before,
                run.revision_after,
                run.answered_s - run.at_s,
                window(outcomes, run.at_s, end),
                window(outcomes, run.at_s, run.answered_s + SETTLE_S),
                None if run.serves is None else effective_s(outcomes, run.at_s, end, run.serves),
                str(answer.get("error", "")),
                versions,
            )
        )
    return result


# --- the scenarios ----------------------------------------------------------------------


def scenario_steps(name: str, models: Models) -> list[Step]:
    if name == "swap":
        return [
            Step(
                "apply: add v3 (copy), default v3",
                apply(iris_patch(versions={"v3": v3(models.copy)}, default_version="v3")),
                "v3",
            ),
            Step("rollback to the previous revision", rollback(), "v1"),
            Step(
                "apply: replace v1 by v3 (copy)",
                apply(
                    iris_patch(versions={"v1": None, "v3": v3(models.copy)}, default_version="v3")
                ),
                "v3",
            ),
            Step("rollback to the previous revision (v1 removed)", rollback(), "v1"),
        ]
    if name == "slow":
        return [
            Step(
                "apply: add v3 (slow), default v3",
                apply(iris_patch(versions={"v3": v3(models.slow)}, default_version="v3")),
                "v3",
            ),
            Step("rollback to the previous revision", rollback(), "v1"),
            # Revision 2 holds the slow v3, unloaded by the rollback: it loads again.
            Step("rollback to revision 2 (older: reload v3)", rollback(2), "v3"),
        ]
    if name == "slow-process":
        return [
            Step(
                "apply: add v3 (slow, process), default v3",
                apply(
                    iris_patch(versions={"v3": v3(models.slow, "process")}, default_version="v3")
                ),
                "v3",
            ),
        ]
    if name == "bad":
        return [
            Step(
                "apply: v2 with a wrong sha256 pin",
                apply(iris_patch(versions={"v2": {"sha256": "0" * 64}})),
                "v1",
            ),
            Step(
                "apply: add v3 failing its golden probe, default v3",
                apply(iris_patch(versions={"v3": v3(models.wrong)}, default_version="v3")),
                "v1",
            ),
        ]
    raise ValueError(name)


def run_scenario(
    name: str, models: Models, work: Path, timing: Timing, progress: Callable[[str], None]
) -> Scenario:
    token = secrets.token_urlsafe(24)
    server, url = start_gateway(base_config(models), work, name, token)
    try:
        progress(f"{name}: gateway up at {url}; {RATE:g} req/s")
        outcomes, runs = run_async(drive(url, token, scenario_steps(name, models), timing))
    finally:
        server.stop()
    for run in runs:
        answer = run.answer if isinstance(run.answer, dict) else {}
        said = answer.get("error") or f"{answer.get('status')} revision {answer.get('revision')}"
        progress(
            f"  +{run.at_s:5.1f}s {run.name}: {run.status} in "
            f"{1000 * (run.answered_s - run.at_s):.0f} ms: {str(said)[:150]}"
        )
    return judge(name, outcomes, runs, timing)


# --- the table --------------------------------------------------------------------------


@dataclass
class Row:
    check: str
    measured: str
    target: str
    ok: bool | None  # None: reported only


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _p99_row(label: str, step: Measured, before: Window, slack_ms: float | None) -> Row:
    during, base = step.swap.p99_ms, before.p99_ms
    if during is None or base is None:
        return Row(label, "no answers", "", False)
    bound = 2 * base if slack_ms is None else max(2 * base, base + slack_ms)
    target = "<= 2x before" if slack_ms is None else f"<= max(2x before, before + {slack_ms:g} ms)"
    measured = (
        f"{during:.1f} ms vs {base:.1f} ms ({during / base:.2f}x; "
        f"{step.swap.requests} req, max {_ms(step.swap.max_ms)})"
    )
    return Row(label, measured, f"{target} = {bound:.1f} ms", during <= bound)


def _failed_row(label: str, step: Measured, *, degraded: bool | None = True) -> list[Row]:
    """Failed (and degraded) requests from the change to the next one; ``degraded``: None
    reports them without a target, False leaves them out."""
    rows = [
        Row(
            f"{label}: failed",
            f"{step.after.failed} of {step.after.requests}",
            "0",
            step.after.failed == 0,
        )
    ]
    if degraded is not False:
        count = step.after.degraded
        if degraded is None:
            rows.append(Row(f"{label}: degraded", str(count), "reported", None))
        else:
            rows.append(Row(f"{label}: degraded", str(count), "0", count == 0))
    return rows


def _effective_row(label: str, step: Measured, bound_s: float | None) -> Row:
    value = step.effective_s
    measured = (
        "never"
        if value is None
        else f"{1000 * value:.0f} ms (the call took {1000 * step.call_s:.0f} ms)"
    )
    if step.status != 200:
        measured = f"HTTP {step.status}: {step.reason[:80]}"
        value = None
    if bound_s is None:
        return Row(label, measured, "reported (load + probe)", None if value is not None else False)
    return Row(label, measured, f"< {bound_s:g} s", value is not None and value < bound_s)


def _refused_rows(label: str, step: Measured, words: str) -> list[Row]:
    refused = step.status == 409 and words in step.reason
    kept = step.revision_after == step.revision_before
    served = set(step.versions_after) == {"v1"}
    return [
        Row(
            f"{label}: refused with the reason",
            f"{step.status}: {step.reason[:90]}",
            f"409 naming {words!r}",
            refused,
        ),
        Row(
            f"{label}: old revision serves",
            f"revision {step.revision_before} -> {step.revision_after}; answers from "
            + ", ".join(f"{v} x{n}" for v, n in sorted(step.versions_after.items())),
            "revision kept, all from v1",
            kept and served,
        ),
        *_failed_row(label, step, degraded=False),
    ]


def rows_for(scenarios: dict[str, Scenario]) -> list[Row]:
    rows: list[Row] = []
    swap = scenarios.get("swap")
    if swap is not None:
        add, back, replace, back_removed = swap.steps
        rows += _failed_row("a. add v3 + default", add)
        rows.append(_p99_row("a. add v3 + default: p99 swap/before", add, swap.baseline, None))
        rows += _failed_row("a'. replace v1 by v3", replace)
        rows.append(_p99_row("a'. replace v1 by v3: p99 swap/before", replace, swap.baseline, None))
        rows.append(_effective_row("c. rollback to previous (v1 loaded)", back, 2.0))
        rows += _failed_row("c. rollback to previous (v1 loaded)", back, degraded=False)
        rows.append(_effective_row("c. rollback to previous (v1 removed)", back_removed, 2.0))
        rows += _failed_row("c. rollback to previous (v1 removed)", back_removed, degraded=False)
    for name, tag in (("slow", "b. slow v3 in-process"), ("slow-process", "b. slow v3 process")):
        slow = scenarios.get(name)
        if slow is None:
            continue
        add = slow.steps[0]
        rows += _failed_row(tag, add, degraded=None)
        rows.append(_p99_row(f"{tag}: p99 swap/before", add, slow.baseline, 20.0))
        rows.append(Row(f"{tag}: apply call", f"{add.call_s:.2f} s", "reported", None))
        if name == "slow":
            back, older = slow.steps[1], slow.steps[2]
            rows.append(_effective_row("c. rollback to previous (slow run)", back, 2.0))
            rows.append(_effective_row("c. rollback to older (reload slow v3)", older, None))
            rows += _failed_row("c. rollback to older (reload slow v3)", older, degraded=False)
    bad = scenarios.get("bad")
    if bad is not None:
        pin, probe = bad.steps
        rows += _refused_rows("d. wrong sha256", pin, "sha256")
        rows += _refused_rows("d. failing golden probe", probe, "failed its probe")
    for scenario in scenarios.values():
        rows.append(
            Row(
                f"{scenario.name}: baseline (before)",
                f"p99 {_ms(scenario.baseline.p99_ms)}, {scenario.baseline.failed} failed of "
                f"{scenario.baseline.requests}",
                "reported",
                None,
            )
        )
    return rows


MEASURED_WIDTH = 64


def render(rows: list[Row]) -> str:
    def cut(text: str) -> str:
        return text if len(text) <= MEASURED_WIDTH else text[: MEASURED_WIDTH - 3] + "..."

    checks = max(len(row.check) for row in rows)
    targets = max(len(row.target) for row in rows)
    lines = [f"{'check':<{checks}}  {'measured':<{MEASURED_WIDTH}}  {'target':<{targets}}  result"]
    for row in rows:
        verdict = "info" if row.ok is None else ("ok" if row.ok else "MISSED")
        lines.append(
            f"{row.check:<{checks}}  {cut(row.measured):<{MEASURED_WIDTH}}  "
            f"{row.target:<{targets}}  {verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter phases (4 s, not 6 s)")
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every scenario this often (fresh gateways)"
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help=f"where the models are kept [{cache_root()}]"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    timing = Timing(2.0, 4.0, 4.0) if args.quick else Timing(3.0, 6.0, 6.0)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the servers

    def progress(message: str) -> None:
        print(message, flush=True)

    load_before = os.getloadavg()
    rounds: list[dict[str, Scenario]] = []
    try:
        models = prepare_models(args.cache_dir or cache_root(), progress)
        load_s = measure_load_s(models.slow, 2 if args.quick else 3)
        progress(
            f"slow model: {models.slow_bytes / 1e6:.0f} MB; onnxruntime session creation "
            + ", ".join(f"{s:.2f} s" for s in load_s)
        )
        with tempfile.TemporaryDirectory(prefix="failsoft-live-") as scratch:
            for number in range(1, args.rounds + 1):
                scenarios: dict[str, Scenario] = {}
                for name in names:
                    work = Path(scratch) / f"round{number}"
                    work.mkdir(exist_ok=True)
                    scenarios[name] = run_scenario(name, models, work, timing, progress)
                    scenarios[name].load_s = load_s if name.startswith("slow") else []
                rounds.append(scenarios)
    except (RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows: list[Row] = []
    for number, scenarios in enumerate(rounds, 1):
        for row in rows_for(scenarios):
            if args.rounds > 1:
                row.check = f"[{number}] {row.check}"
            rows.append(row)
    cpus = os.cpu_count()
    print()
    print(
        f"live configuration, {RATE:g} req/s open loop to iris's default version, "
        f"{'quick' if args.quick else 'full'} run x{args.rounds} (warm-up {timing.warm_s:g} s, "
        f"baseline {timing.before_s:g} s, {timing.hold_s:g} s per change, swap window = the "
        f"change + {SETTLE_S:g} s); {cpus} CPUs, load average {load_before[0]:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after; the slow model's session takes "
        + "/".join(f"{s:.2f}" for s in load_s)
        + " s to create"
    )
    print("noisy: a shared machine, and a p99 over a few hundred requests is the 3rd worst")
    print(render(rows))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "rate": RATE,
                    "quick": args.quick,
                    "timing": asdict(timing),
                    "cpus": cpus,
                    "load_average_before": load_before,
                    "slow_model": {"bytes": models.slow_bytes, "load_s": load_s},
                    "rows": [asdict(row) for row in rows],
                    "rounds": [
                        {name: asdict(scenario) for name, scenario in scenarios.items()}
                        for scenarios in rounds
                    ],
                },
                indent=2,
            )
            + "\n"
        )
    return 0 if all(row.ok is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
