"""The course's 18-point grid on the team server, crashed mid-sweep: its MLflow server, then (another sweep) its PostgreSQL.

    .venv/bin/python bench/probe_team_crash.py [--workers 2] [--config configs/tiny.yaml]

For each fault: workers start, are frozen (SIGSTOP) while one is in a trial, the service is
killed with SIGKILL (MLflow: its process group; PostgreSQL: the postmaster), the workers go
on (SIGCONT) and stop. Reported: each worker's exit code, stderr lines, seconds to stop and
its last line; `mlops-mlflow status --team`; `mlops-mlflow start --team`; then one worker
rejoins, and the sweep is counted: children by status, grid points FINISHED (and distinct),
`is_best`, the parent's status. The team server runs in a temporary project (free ports),
stopped by process id at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow import MlflowClient

from mlops_day28.reliability.coordination import PID_TAG
from mlops_day28.reliability.processes import free_port
from mlops_day28.team.server import start_team_server, stop_team_server

EXPERIMENT = "week5_project_optimization"


def children(client: MlflowClient, name: str) -> list:
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], f"tags.`sweep.name` = '{name}'", max_results=1000) if exp else []
    return [r for r in runs if r.data.tags.get("sweep.role") != "parent"]


def freeze_mid_trial(client: MlflowClient, workers: list[subprocess.Popen], name: str, timeout: float = 300) -> None:
    "SIGSTOP every worker while one of them is in a trial (after one trial finished)."
    pids, deadline = {str(w.pid) for w in workers}, time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = children(client, name)
        running = [r for r in runs if r.info.status == "RUNNING" and r.data.tags.get(PID_TAG) in pids]
        if running and any(r.info.status == "FINISHED" for r in runs):
            for w in workers:
                os.kill(w.pid, signal.SIGSTOP)
            if client.get_run(running[0].info.run_id).info.status == "RUNNING":
                return
            for w in workers:
                os.kill(w.pid, signal.SIGCONT)
        time.sleep(0.2)
    raise SystemExit(f"{name}: no worker was seen in a trial within {timeout:g} s")


def crash(project: Path, fault: str, config: Path, n_workers: int) -> dict:
    "One sweep, one fault: what the workers said, what status and start said, and the sweep's counts after a rejoin."
    port = free_port()
    team = start_team_server(project, port, timeout=120)
    env = {**os.environ, "MLFLOW_TRACKING_URI": team.uri, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    name, client = f"crash_{fault}", MlflowClient(team.uri)
    cmd = [str(BIN / "mlops-sweep"), "--config", str(config), "--worker", "--storage", team.optuna]
    cmd += ["--no-progress", "--set", f"sweep.name={name}", "--set", "sweep.worker_grace=3"]
    workers = [
        subprocess.Popen(
            cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        for _ in range(n_workers)
    ]
    try:
        freeze_mid_trial(client, workers, name)
        if fault == "mlflow":
            os.killpg(team.mlflow_pid, signal.SIGKILL)
        else:
            os.kill(team.pg_pid, signal.SIGKILL)
            os.waitpid(team.pg_pid, 0)
        killed = time.monotonic()
        for w in workers:
            os.kill(w.pid, signal.SIGCONT)
        said = []
        for w in workers:
            _out, err = w.communicate(timeout=300)
            lines = err.strip().splitlines()
            said.append(
                {
                    "exit": w.returncode,
                    "stderr_lines": len(lines),
                    "traceback": "Traceback" in err,
                    "stopped_after_s": round(time.monotonic() - killed, 1),
                    "last_line": lines[-1] if lines else "",
                }
            )
        mlops = BIN / "mlops-mlflow"
        status = subprocess.run([mlops, "status", "--team", "--root", project], capture_output=True, text=True)
        start = subprocess.run(
            [mlops, "start", "--team", "--root", project, "--port", str(port)], capture_output=True, text=True
        )
        t0 = time.monotonic()
        again = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=900)
        runs = children(client, name)
        finished = [r.data.tags["sweep.trial_key"] for r in runs if r.info.status == "FINISHED"]
        exp = client.get_experiment_by_name(EXPERIMENT)
        parent = client.search_runs(
            [exp.experiment_id], f"tags.`sweep.name` = '{name}' and tags.`sweep.role` = 'parent'"
        )
        return {
            "workers": said,
            "status": (status.returncode, status.stdout.strip()),
            "start": (start.returncode, start.stdout.strip().splitlines()[:1] or start.stderr.strip()),
            "rejoin": {
                "exit": again.returncode,
                "seconds": round(time.monotonic() - t0, 1),
                "stderr": again.stderr[-500:],
            },
            "children": {s: sum(r.info.status == s for r in runs) for s in ("FINISHED", "FAILED", "KILLED", "RUNNING")},
            "points_finished": len(finished),
            "points_distinct": len(set(finished)),
            "is_best": sum(r.data.tags.get("is_best") == "true" for r in runs),
            "parent": [p.info.status for p in parent],
        }
    finally:
        for w in workers:
            if w.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.pid, signal.SIGKILL)
                w.wait()
        stop_team_server(project)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny.yaml")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    report: dict = {"config": str(args.config), "workers": args.workers, "cpus": os.cpu_count()}
    for fault in ("mlflow", "postgres"):
        project = Path(tempfile.mkdtemp(prefix=f"probe-team-{fault}-"))
        project.chmod(0o755)  # as root, PostgreSQL runs as `postgres`, which must reach .team/pg
        (project / "pyproject.toml").touch()
        try:
            report[fault] = crash(project, fault, args.config.resolve(), args.workers)
        finally:
            shutil.rmtree(project, ignore_errors=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
