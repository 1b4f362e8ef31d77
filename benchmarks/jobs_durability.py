"""The durable-jobs acceptance run: 10,000 async jobs, the gateway SIGKILLed twice, on
SQLite and on Redis Streams, every model execution recorded in PostgreSQL.

Each job is submitted with `Prefer: respond-async` and its own Idempotency-Key
by 8 client threads, which resubmit (same key, same body) whatever was not
acknowledged while the gateway was down. The gateway is killed when a third and
two thirds of the jobs have run, and started again on the same queue. Then every
job is read back (see failsoft/drills/jobs_drill.py). Figures per queue:

    lost               accepted jobs without their correct result (target 0)
    dup stored         results stored more than once for one job (target 0)
    re-executions      executions beyond one per job (at-least-once: allowed, reported)
    replayed           submissions answered with an existing job (the key worked)
    wall s, jobs/s     from the first submission to the last result read

Needs PostgreSQL (FAILSOFT_JOBS_PG_URL, default postgresql://postgres@127.0.0.1:5432/test;
a schema of its own, dropped afterwards) and redis-server on PATH (started here with
--appendonly yes on a Unix socket). Exit 0 when nothing was lost or stored twice.

    PYTHONPATH=src python benchmarks/jobs_durability.py                 # 10,000 x 2 queues
    PYTHONPATH=src python benchmarks/jobs_durability.py --jobs 1000 --queue redis --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import REPO, src_env

if str(REPO / "src") not in sys.path:
    sys.path.insert(1, str(REPO / "src"))
from failsoft.drills.jobs_drill import DrillReport, run_drill


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per queue")
    parser.add_argument("--kills", type=int, default=2, help="SIGKILLs of the gateway per run")
    parser.add_argument("--queue", choices=["sqlite", "redis", "both"], default="both")
    parser.add_argument("--json", action="store_true", help="one JSON object per queue")
    args = parser.parse_args()
    queues = ["sqlite", "redis"] if args.queue == "both" else [args.queue]
    reports: list[DrillReport] = []
    for queue in queues:
        with tempfile.TemporaryDirectory(prefix="fs-jobs-drill-") as folder:
            pythonpath = src_env()["PYTHONPATH"]
            report = run_drill(
                queue, args.jobs, args.kills, Path(folder), pythonpath=pythonpath,
                finish_timeout_s=max(300.0, args.jobs / 10),
            )  # fmt: skip
        reports.append(report)
        if args.json:
            print(json.dumps(report.as_dict()), flush=True)
    if not args.json:
        print(
            f"{'queue':>6} {'jobs':>6} {'kills':>5} {'lost':>5} {'dup stored':>10} "
            f"{'re-executions':>13} {'replayed':>8} {'wall s':>7} {'jobs/s':>7}"
        )
        for r in reports:
            print(
                f"{r.queue:>6} {r.jobs:>6} {r.kills:>5} {r.lost:>5} {r.duplicates_stored:>10} "
                f"{r.re_executions:>13} {r.replayed_submissions:>8} {r.wall_s:>7.1f} "
                f"{r.jobs / r.wall_s:>7.1f}"
            )
    ok = all(
        r.lost == 0 and r.duplicates_stored == 0 and r.unknown_executions == 0 for r in reports
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
