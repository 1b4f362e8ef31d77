"""Ground truth joined late: does the gateway's online accuracy match the true figure?

Starts `failsoft serve` (iris v1, in-process onnx, prediction log at 100%,
two tenants), sends N one-row predictions — 80% from tenant ``good``, 20%
from tenant ``bad`` — with rows drawn (seeded) from the iris data set, and
keeps each answer's request id and predicted class. Then the ground truth
arrives, late and in bulk (``POST /v2/models/iris/feedback``, 2,000 a call,
shuffled, with some unknown and duplicate ids mixed in): the iris label for
``good``; for ``bad``, a segment whose accuracy drops to 50%, a random half
of its rows get a label other than the predicted one, the other half the
predicted one.

The true accuracy is computed here from what was sent; the gateway's comes
from ``GET /admin/accuracy``. Prints both, overall and per segment (tenant,
and petal-length buckets), and exits 1 unless the overall figure is within
0.5 percentage points of the truth, the bad segment shows its drop (<= 60%,
and within 0.5 points of its true figure) and unknown/duplicate ids were
counted.

    PYTHONPATH=src python benchmarks/feedback.py                 # 10,000 predictions
    PYTHONPATH=src python benchmarks/feedback.py --predictions 1000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from failsoft.demo import default_data_dir, prepare_demo
from failsoft.drills.server import ServerProcess

REPO = Path(__file__).resolve().parents[1]


def demo_folder() -> Path:
    """The demo's model files; trained only when missing (the cached configuration is
    left as it is: gateways of other checkouts may be reading it)."""
    folder = default_data_dir()
    if not (folder / "iris-v1.onnx").is_file():
        prepare_demo(folder, progress=lambda message: print(message, flush=True))
    return folder


ADMIN_TOKEN = "feedback-benchmark-admin-token"
KEYS = {"good": "fsk_good_tenant_key_for_the_benchmark", "bad": "fsk_bad_tenant_key_for_benchmark"}
BAD_SHARE = 0.2
TOLERANCE = 0.005  # 0.5 percentage points
CHUNK = 2000
PETAL_LENGTH = {"input": "features", "column": 2, "edges": [2.5, 4.9]}


def gateway_config(model: Path) -> dict[str, Any]:
    return {
        "predictions": {
            "enabled": True,
            "sample_rate": 1.0,
            "feedback": {
                "segments": {"iris": {"input": "features", "column": 2, "edges": [2.5, 4.9]}}
            },
        },
        "tenants": {
            name: {"key_sha256": hashlib.sha256(key.encode()).hexdigest()}
            for name, key in KEYS.items()
        },
        "models": {
            "iris": {
                "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [
                    {"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
                ],
                "versions": {"v1": {"backend": "onnx", "path": str(model)}},
            }
        },
    }


async def predict(
    url: str, rows: np.ndarray, tenants: list[str], concurrency: int
) -> list[tuple[str, int]]:
    """(request id, predicted class) of each row, in order."""
    results: list[tuple[str, int] | None] = [None] * len(rows)
    next_index = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < len(rows):
            index = next_index
            next_index += 1
            body = {
                "inputs": [
                    {
                        "name": "features",
                        "datatype": "FP32",
                        "shape": [1, 4],
                        "data": rows[index].tolist(),
                    }
                ]
            }
            headers = {"Authorization": f"Bearer {KEYS[tenants[index]]}"}
            response = await client.post("/v2/models/iris/infer", json=body, headers=headers)
            response.raise_for_status()
            label = response.json()["outputs"][0]["data"][0]
            results[index] = (response.headers["x-request-id"], int(label))

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return [found for found in results if found is not None]


def send_feedback(url: str, tenant: str, items: list[dict[str, Any]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {KEYS[tenant]}"}
    with httpx.Client(base_url=url, timeout=120) as client:
        for start in range(0, len(items), CHUNK):
            response = client.post(
                "/v2/models/iris/feedback",
                json={"feedback": items[start : start + CHUNK]},
                headers=headers,
            )
            response.raise_for_status()
            for key, value in response.json().items():
                if isinstance(value, int):
                    totals[key] = totals.get(key, 0) + value
    return totals


def run(predictions: int, concurrency: int, seed: int) -> dict[str, Any]:
    from sklearn.datasets import load_iris

    rng = random.Random(seed)
    data = load_iris()
    picks = [rng.randrange(len(data.target)) for _ in range(predictions)]
    rows = np.asarray(data.data[picks], dtype=np.float32)
    truth = [int(data.target[i]) for i in picks]
    tenants = ["bad" if rng.random() < BAD_SHARE else "good" for _ in range(predictions)]
    demo = demo_folder() / "failsoft-demo.yaml"
    with tempfile.TemporaryDirectory(prefix="failsoft-feedback-") as tmp:
        path = Path(tmp) / "failsoft.yaml"
        path.write_text(json.dumps(gateway_config(demo.parent / "iris-v1.onnx")))
        env = {
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
            "FAILSOFT_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        server = ServerProcess(path, env=env).start()
        try:
            answered = asyncio.run(predict(server.url, rows, tenants, concurrency))
            labels: dict[str, list[dict[str, Any]]] = {"good": [], "bad": []}
            correct: dict[str, int] = {"good": 0, "bad": 0}
            for (request_id, predicted), actual, tenant in zip(
                answered, truth, tenants, strict=True
            ):
                if tenant == "bad":  # right on a random half of its rows, wrong on the rest
                    wrong = rng.random() < 0.5
                    actual = (predicted + rng.choice((1, 2))) % 3 if wrong else predicted
                correct[tenant] += predicted == actual
                labels[tenant].append({"request_id": request_id, "label": actual})
            counts = {"good": len(labels["good"]), "bad": len(labels["bad"])}
            for tenant in labels:
                rng.shuffle(labels[tenant])
            # Noise the join must count and survive: unknown ids and a few duplicates.
            labels["good"] += [{"request_id": f"never-{i}", "label": 1} for i in range(25)]
            labels["good"] += labels["good"][:25]
            outcome = {
                tenant: send_feedback(server.url, tenant, labels[tenant]) for tenant in labels
            }
            with httpx.Client(base_url=server.url, timeout=30) as client:
                response = client.get(
                    "/admin/accuracy",
                    params={"model": "iris"},
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                )
                response.raise_for_status()
                board = response.json()
        finally:
            server.stop()
    segments = board["models"]["iris"]["versions"]["v1"]["segments"]
    true = {
        "all": (correct["good"] + correct["bad"]) / (counts["good"] + counts["bad"]),
        "tenant:good": correct["good"] / counts["good"],
        "tenant:bad": correct["bad"] / counts["bad"],
    }
    return {
        "predictions": len(answered),
        "rows_by_tenant": counts,
        "true_accuracy": true,
        "gateway_accuracy": {name: stat["accuracy"] for name, stat in segments.items()},
        "labelled_rows": {name: stat["count"] for name, stat in segments.items()},
        "feedback": outcome,
    }


def check(figures: dict[str, Any]) -> list[str]:
    problems = []
    true, measured = figures["true_accuracy"], figures["gateway_accuracy"]
    for segment in ("all", "tenant:good", "tenant:bad"):
        if abs(measured.get(segment, -1.0) - true[segment]) > TOLERANCE:
            problems.append(f"{segment}: {measured.get(segment)} vs true {true[segment]:.4f}")
    if measured.get("tenant:bad", 1.0) > 0.6:
        problems.append("the bad segment's drop does not show")
    good = figures["feedback"]["good"]
    if good.get("unknown") != 25 or good.get("duplicate") != 25:
        problems.append(f"unknown/duplicate ids not counted: {good}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    figures = run(args.predictions, args.concurrency, args.seed)
    problems = check(figures)
    figures["problems"] = problems
    if args.json:
        print(json.dumps(figures, indent=1))
    else:
        print(f"{figures['predictions']} predictions; rows by tenant {figures['rows_by_tenant']}")
        print(f"{'segment':<22} {'true':>8} {'gateway':>8} {'rows':>6}")
        for segment, value in sorted(figures["gateway_accuracy"].items()):
            true_value = figures["true_accuracy"].get(segment)
            shown = f"{true_value * 100:7.2f}%" if true_value is not None else "       -"
            print(
                f"{segment:<22} {shown} {value * 100:7.2f}% {figures['labelled_rows'][segment]:>6}"
            )
        print(f"feedback outcomes: {figures['feedback']}")
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
