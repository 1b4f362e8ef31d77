"""What per-feature input constraints cost: in-process per request, and on a gateway.

1. In process: the input contract's check alone (the baseline) against the
   contract plus the feature checks (min/max on every iris column), for
   batches of 1, 64 and 4096 rows within the bounds; microseconds per request
   and the ratio.
2. On a gateway: `benchmarks/serve.py`'s iris gateway as it is (the baseline)
   and the same with the four columns constrained (input_policy: flag, every
   row within bounds), same closed-loop load, rounds alternating so noise on a
   shared machine hits both; the best round of each counts. Prints the
   throughput ratio constrained/plain (1.0: free).

    PYTHONPATH=src python benchmarks/input_checks.py            # 3 rounds of 8 s
    PYTHONPATH=src python benchmarks/input_checks.py --quick    # micro + 1 round of 3 s
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import timeit
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import (
    REPO,
    LoadResult,
    ServerProcess,
    drive,
    free_port,
    have_wrk,
    iris_body,
    src_env,
    wait_until_answers,
)
from serve import HOST, INFER_PATH, failsoft_argv, failsoft_config, make_check

if str(REPO / "src") not in sys.path:
    sys.path.insert(1, str(REPO / "src"))
from failsoft.data.contracts import ModelContract
from failsoft.data.input_checks import InputChecks
from failsoft.demo import default_data_dir, prepare_demo
from failsoft.protocol.spec import TensorSpec
from failsoft.protocol.types import InferRequest

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
FEATURES = {
    "sepal_length": {"min": 4.0, "max": 8.0},
    "sepal_width": {"min": 1.5, "max": 5.0},
    "petal_length": {"min": 0.5, "max": 7.5},
    "petal_width": {"min": 0.0, "max": 2.8},
}


def constrained_inputs() -> list[dict[str, Any]]:
    return [
        {
            "name": "features",
            "datatype": "FP32",
            "shape": [-1, 4],
            "columns": COLUMNS,
            "features": FEATURES,
        }
    ]


def micro(repeat: int) -> None:
    plain = [TensorSpec(name="features", datatype="FP32", shape=[-1, 4])]
    spec = TensorSpec.model_validate(constrained_inputs()[0])
    outputs = [TensorSpec(name="label", datatype="INT64", shape=[-1])]
    contract = ModelContract(plain, outputs)
    checks = InputChecks([spec], "flag")
    rng = np.random.default_rng(0)
    print("in process: contract check alone vs contract + feature checks (us per request)")
    for rows in (1, 64, 4096):
        batch = rng.uniform([4.5, 2.0, 1.0, 0.1], [7.5, 4.4, 6.9, 2.5], (rows, 4))
        request = InferRequest({"features": batch.astype(np.float32)})
        assert checks.find(request) is None
        number = max(10, repeat // rows)
        alone = partial(contract.check_request, request)

        def both_checks(request: InferRequest = request) -> None:
            contract.check_request(request)
            checks.judge(request)

        base = min(timeit.repeat(alone, number=number, repeat=5))
        both = min(timeit.repeat(both_checks, number=number, repeat=5))
        base_us, both_us = base / number * 1e6, both / number * 1e6
        print(
            f"  {rows:>5} rows: contract {base_us:8.2f} us, with features {both_us:8.2f} us "
            f"(+{both_us - base_us:.2f} us, ratio {both_us / base_us:.2f})"
        )


def gateway(args: argparse.Namespace) -> float:
    tool = "wrk" if have_wrk() else "python"
    config_path = prepare_demo(default_data_dir(), progress=lambda m: print(m, flush=True))
    model_path = config_path.parent / "iris-v1.onnx"
    body = iris_body()
    servers: list[ServerProcess] = []
    urls: dict[str, str] = {}
    runs: dict[str, list[LoadResult]] = {"plain": [], "constrained": []}
    with tempfile.TemporaryDirectory(prefix="failsoft-bench-") as tmp:
        tmp_dir = Path(tmp)
        try:
            for name in runs:
                port = free_port()
                config = failsoft_config(model_path, port)
                if name == "constrained":
                    iris = config["models"]["iris"]
                    iris["inputs"] = constrained_inputs()
                    iris["input_policy"] = "flag"
                path = tmp_dir / f"{name}.yaml"
                path.write_text(yaml.safe_dump(config, sort_keys=False))
                folder = tmp_dir / name
                folder.mkdir()
                server = ServerProcess(name, failsoft_argv(path, port), folder, src_env())
                servers.append(server)
                urls[name] = f"http://{HOST}:{port}{INFER_PATH}"
                wait_until_answers(
                    server, urls[name], body, args.startup_timeout, make_check(name, model_path)
                )
            for name in runs:
                drive(urls[name], body, connections=args.connections, duration_s=2.0, tool=tool)
            for round_no in range(1, args.rounds + 1):
                for name in runs:
                    result = drive(
                        urls[name],
                        body,
                        connections=args.connections,
                        duration_s=args.duration,
                        tool=tool,
                    )
                    runs[name].append(result)
                    print(
                        f"round {round_no} {name:>11}: {result.rps:9.1f} req/s  "
                        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                        f"errors {result.errors}",
                        flush=True,
                    )
        finally:
            for server in servers:
                server.stop()
    if any(r.errors for results in runs.values() for r in results):
        raise RuntimeError("some requests failed; the numbers are not valid")
    best = {name: max(results, key=lambda r: r.rps) for name, results in runs.items()}
    ratio = best["constrained"].rps / best["plain"].rps
    print(
        f"\nbest of {args.rounds}: plain {best['plain'].rps:.1f} req/s, constrained "
        f"{best['constrained'].rps:.1f} req/s ({tool} load, {args.connections} connections)"
    )
    print(f"ratio constrained/plain: {ratio:.3f}")
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="one round of 3 s")
    parser.add_argument("--micro-only", action="store_true", help="skip the gateway part")
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 3.0, 1
    micro(20_000)
    if args.micro_only:
        return 0
    try:
        gateway(args)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
