"""The 18-trial grid sweep: 1, 2 and 3 `mlops-sweep --worker` processes over the team server (PostgreSQL)
against `mlops-sweep` on the local server (SQLite, one process), measured in the same run.

    .venv/bin/python bench/bench_team_sweep.py [--config configs/tiny.yaml]

Both servers run in a temporary project folder (free ports, stopped by process id). Each
configuration gets a sweep name of its own. Wall time is from starting the workers to
the last one's exit; every sweep is checked: 18 FINISHED children, one best.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow import MlflowClient
from team_project import team_and_local


def sweep(uri: str, config: Path, name: str, workers: int, storage: str | None) -> float:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    cmd = [str(BIN / "mlops-sweep"), "--config", str(config), "--set", f"sweep.name={name}", "--no-progress"]
    cmd += ["--worker", "--storage", storage] if storage else ["--n-jobs", "1"]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(workers)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"{name}: a worker failed:\n{out[-3000:]}")
    wall = time.perf_counter() - start
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("week5_project_optimization")
    runs = client.search_runs([exp.experiment_id], f"tags.`sweep.name` = '{name}'", max_results=1000)
    finished = [r for r in runs if r.data.tags.get("sweep.role") != "parent" and r.info.status == "FINISHED"]
    best = sum(r.data.tags.get("is_best") == "true" for r in runs)
    if len(finished) != 18 or best != 1:
        raise SystemExit(f"{name}: {len(finished)} finished children and {best} best, not 18 and 1")
    return wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny.yaml")
    args = ap.parse_args(argv)
    report: dict = {"config": str(args.config), "cpus": os.cpu_count()}
    with team_and_local("bench-team-sweep-") as (_project, team, local, _started):
        report["local_sqlite_1_process_s"] = round(sweep(local.uri, args.config, "bench_local", 1, None), 1)
        for n in (1, 2, 3):
            report[f"team_{n}_workers_s"] = round(sweep(team.uri, args.config, f"bench_team_{n}", n, team.optuna), 1)
        base = report["local_sqlite_1_process_s"]
        report["ratios_over_local"] = {n: round(report[f"team_{n}_workers_s"] / base, 2) for n in (1, 2, 3)}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
