"""The team server (PostgreSQL) against the local server (SQLite): one tracked run, and four writers at once.

    .venv/bin/python bench/bench_team.py [--config configs/tiny.yaml] [--writers 4] [--repeats 2]

Starts both servers in a temporary project folder (free ports, stopped by process id at the
end): the local one as `make mlflow` runs it (SQLite, one worker) and the team one as
`make team` does (PostgreSQL, two workers, proxied artifacts). Then, against each:

- one `mlops-train` at a time (--repeats times, alternating servers): its wall time;
- `--writers` `mlops-train` processes started together, each training, logging a model,
  registering it and running the gate: each one's exit code and time, the lines in their
  output that say "database is locked" or a retry, and afterwards what the server holds
  (FINISHED runs, model versions; a run or version missing is one lost). The same again
  with no server at all, every writer opening one SQLite file (`MLFLOW_TRACKING_URI=sqlite:///...`),
  as a team sharing a file on a network disk would: once with its tables made first, once new.

Prints a JSON summary and the ratios team / local, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow import MlflowClient
from team_project import team_and_local

TROUBLE = ("database is locked", "Retrying", "retry", "OperationalError", "deadlock", "already exists")


def train(uri: str, config: Path, name: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    cmd = [str(BIN / "mlops-train"), "--config", str(config), "--no-progress", "--set", f"tracking.run_name={name}"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def one_run(uri: str, config: Path, name: str) -> float:
    start = time.perf_counter()
    p = train(uri, config, name)
    out, _ = p.communicate(timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"{name} failed on {uri}:\n{out[-3000:]}")
    return time.perf_counter() - start


def writers(uri: str, config: Path, n: int, tag: str) -> dict:
    start = time.perf_counter()
    procs = [(train(uri, config, f"{tag}-writer-{i}"), time.perf_counter()) for i in range(n)]
    results = []
    for p, t0 in procs:
        out, _ = p.communicate(timeout=900)
        trouble = [line for line in out.splitlines() if any(t in line for t in TROUBLE)]
        results.append({"exit": p.returncode, "s": round(time.perf_counter() - t0, 1), "trouble": trouble[:5]})
    wall = time.perf_counter() - start
    seen = {
        "wall_s": round(wall, 1),
        "exits": [r["exit"] for r in results],
        "each_s": [r["s"] for r in results],
        "trouble_lines": sum(len(r["trouble"]) for r in results),
        "trouble_examples": [t[:200] for r in results for t in r["trouble"]][:5],
    }
    try:
        client = MlflowClient(uri, registry_uri=uri)
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            f"attributes.run_name LIKE '{tag}-writer-%'",
            max_results=1000,
        )
    except Exception as e:  # the store itself is broken
        return {**seen, "store_error": str(e).splitlines()[0][:300], "runs_lost": n, "versions_lost": n}
    finished = sum(r.info.status == "FINISHED" for r in runs)
    versions = [v for v in client.search_model_versions(max_results=1000) if v.run_id in {r.info.run_id for r in runs}]
    return {
        **seen,
        "runs_finished": finished,
        "runs_lost": n - finished,
        "versions": len(versions),
        "versions_lost": n - len(versions),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny.yaml")
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    report: dict = {"config": str(args.config), "writers": args.writers, "cpus": os.cpu_count()}
    with team_and_local("bench-team-") as (project, team, local, started):
        report["team_first_start_s"] = round(started["team"], 1)
        report["local_start_s"] = round(started["local"], 1)
        servers = {"local": local.uri, "team": team.uri}
        fresh = f"sqlite:///{project / 'fresh' / 'mlflow.db'}"  # no server: every writer opens the file, new
        made = f"sqlite:///{project / 'made' / 'mlflow.db'}"  # the same, its tables made first
        (project / "fresh").mkdir(), (project / "made").mkdir()
        MlflowClient(made, registry_uri=made).search_experiments()
        times = {k: [] for k in servers}
        for r in range(args.repeats):
            for kind in servers if r % 2 == 0 else reversed(list(servers)):
                times[kind].append(one_run(servers[kind], args.config, f"single-{kind}-{r}"))
        report["one_run_s"] = {k: [round(t, 1) for t in v] for k, v in times.items()}
        report["one_run_ratio_team_over_local"] = round(
            statistics.median(times["team"]) / statistics.median(times["local"]), 2
        )
        for kind, uri in {**servers, "sqlite_file_made": made, "sqlite_file_new": fresh}.items():
            report[f"writers_{kind}"] = writers(uri, args.config, args.writers, kind)
        for kind, log in [("local", project / ".mlflow" / "server.log"), ("team", project / ".team" / "server.log")]:
            text = log.read_text(errors="replace") if log.exists() else ""
            report[f"server_log_{kind}"] = {t: text.count(t) for t in TROUBLE if text.count(t)}
        report["writers_wall_ratio_team_over_local"] = round(
            report["writers_team"]["wall_s"] / report["writers_local"]["wall_s"], 2
        )
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
