"""Faults in a team sweep: the team's MLflow server or its PostgreSQL killed mid-sweep (nbs/team/03_workers, team/02_server).

The bar: each `mlops-sweep --worker` stops with one line that names what was lost (for the
storage: PostgreSQL and its URL, without a password), and no traceback; `mlops-mlflow
status --team` says what is down, even while MLflow's /health says OK; `mlops-mlflow start
--team` (`make team`) restarts what died; and once a worker rejoins, every grid point has
finished exactly once, in MLflow and in Optuna, with one best and nothing left RUNNING.

Each test gets a team server of its own, in a temporary project, on free ports; everything
it starts, and everything a restart started, is stopped by process id at the end, also when
the test fails. Needs Debian's postgresql package: skipped without it, except where
MLOPS_REQUIRE_POSTGRES=1 (set by .ci/run): there they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import optuna
import psutil
import pytest
from faultkit import Project, error_lines, wait_for
from mlflow import MlflowClient

from mlops_day28.reliability.coordination import PID_TAG
from mlops_day28.reliability.processes import free_port, stop_process
from mlops_day28.sweep import grid_points, trial_key
from mlops_day28.team.postgres import postgres_program
from mlops_day28.team.server import recorded_team_server, start_team_server, stop_team_server

pytestmark = [pytest.mark.server, pytest.mark.slow]

EXPERIMENT = "week5_project_optimization"
GRID = {"training.learning_rate": [0.001, 0.01], "model.dropout": [0.1, 0.3, 0.5], "training.num_epochs": [2]}


def _ours(root: Path) -> list[psutil.Process]:
    "The processes started for the project at `root`: PostgreSQL (-D root/.team/pg) and MLflow (root/.team/artifacts)."
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if p.info["status"] != psutil.STATUS_ZOMBIE and str(root) in " ".join(p.info["cmdline"] or []):
                found.append(p)
    return found


@pytest.fixture
def team():
    "(project, team server): the team server in a project of its own; stopped by pid afterwards, whatever restarted it."
    if postgres_program("initdb") is None:
        if os.environ.get("MLOPS_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is required here (MLOPS_REQUIRE_POSTGRES=1) but not installed")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="fault-team-"))  # not under pytest's folder, which only root may enter
    root.chmod(0o755)  # as root, PostgreSQL runs as `postgres`, which must reach .team/pg
    (root / "pyproject.toml").write_text("# a throw-away project for a team fault test\n")
    project = Project(root)
    try:
        server = start_team_server(root, free_port(), timeout=120)
        project.env["MLFLOW_TRACKING_URI"] = server.uri
        yield project, server
    finally:
        project.stop_all()
        stop_team_server(root)  # what the record names now: a restart changed the pids
        for p in _ours(root):  # anything a failed restart left unrecorded, by its pid
            stop_process(p.pid, timeout=5)
        shutil.rmtree(root, ignore_errors=True)
    assert not _ours(root), "team server processes left running"


def sweep_cmd(project: Project, server, name: str) -> tuple[str, ...]:
    cfg = project.config(name, sweep={"name": name, "grid": GRID, "worker_grace": 3})
    return ("mlops-sweep", "--config", str(cfg), "--worker", "--storage", server.optuna, "--no-progress")


def children(uri: str, name: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], f"tags.`sweep.name` = '{name}'", max_results=1000) if exp else []
    return [r for r in runs if r.data.tags.get("sweep.role") != "parent"]


def freeze_mid_trial(workers: list[subprocess.Popen], uri: str, name: str) -> None:
    "SIGSTOP every worker at a moment when one of them is in a trial (after one trial finished), checked while frozen."
    pids = {str(w.pid) for w in workers}

    def in_a_trial():
        runs = children(uri, name)
        if not any(r.info.status == "FINISHED" for r in runs):
            return False
        running = [r for r in runs if r.info.status == "RUNNING" and r.data.tags.get(PID_TAG) in pids]
        if not running:
            return False
        for w in workers:
            os.kill(w.pid, signal.SIGSTOP)
        if MlflowClient(uri).get_run(running[0].info.run_id).info.status == "RUNNING":
            return True  # frozen, it cannot end: the kill that comes next lands mid-trial
        for w in workers:
            os.kill(w.pid, signal.SIGCONT)
        return False

    wait_for(in_a_trial, 180, "a worker in a trial, after one trial finished")


def one_line_each(workers: list[subprocess.Popen]) -> list[str]:
    "Each worker's whole stderr, which must be one `error:` line and no traceback; the lines."
    lines = []
    for w in workers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 1, (w.returncode, out[-2000:], err[-3000:])
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-3000:]
        lines.append(error_lines(err)[0])
    return lines


def assert_every_point_once(uri: str, storage: str, name: str) -> None:
    "Every grid point FINISHED exactly once in MLflow and COMPLETE once in Optuna; one best; nothing RUNNING."
    client, points = MlflowClient(uri), {trial_key(p) for p in grid_points(GRID)}
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], f"tags.`sweep.name` = '{name}'", max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    assert [p.info.status for p in parents] == ["FINISHED"]
    finished = [r.data.tags["sweep.trial_key"] for r in children(uri, name) if r.info.status == "FINISHED"]
    assert sorted(finished) == sorted(points), finished  # each point once
    assert sum(r.data.tags.get("is_best") == "true" for r in runs) == 1
    assert {r.info.status for r in children(uri, name)} <= {"FINISHED", "FAILED", "KILLED"}  # the others closed
    assert not client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    study = optuna.load_study(study_name=f"{EXPERIMENT}/{name}", storage=storage)
    complete = [trial_key(t.params) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(complete) == sorted(points), complete
    assert not [
        t.number for t in study.trials if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    ]


def test_the_tracking_server_killed_mid_sweep_loses_no_grid_point(team):
    project, server = team
    name, port = "lost_tracking", server.uri.rsplit(":", 1)[1]
    cmd = sweep_cmd(project, server, name)
    workers = [project.start(*cmd) for _ in range(2)]
    freeze_mid_trial(workers, server.uri, name)
    os.killpg(server.mlflow_pid, signal.SIGKILL)  # the server and its workers, as a crash would; PostgreSQL lives
    for w in workers:
        os.kill(w.pid, signal.SIGCONT)
    for line in one_line_each(workers):
        assert line.startswith(
            f"error: the sweep worker stopped: the tracking server at {server.uri} stopped answering"
        )
        assert "was queued again and runs when a worker rejoins" in line, line

    status = project.run("mlops-mlflow", "status", "--team", "--root", str(project.path))
    assert status.returncode == 1 and "is down; its database runs (PostgreSQL" in status.stdout, status.stdout
    start = project.run("mlops-mlflow", "start", "--team", "--root", str(project.path), "--port", port)
    assert start.returncode == 0, start.stderr
    assert start.stdout.startswith(f"restarted MLflow (pid {server.mlflow_pid} was down): team MLflow server at "), (
        start
    )
    assert recorded_team_server(project.path).pg_pid == server.pg_pid  # the database was kept

    again = project.run(*cmd, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "ended the sweep" in again.stdout
    assert_every_point_once(server.uri, server.optuna, name)
    lost = [r for r in children(server.uri, name) if r.info.status == "FAILED"]
    assert lost and all(r.data.tags.get("mlops.closed_reason") for r in lost)  # closed, with the reason


def test_postgresql_killed_mid_sweep_is_named_and_make_team_restarts_it(team):
    project, server = team
    name, port = "lost_storage", server.uri.rsplit(":", 1)[1]
    cmd = sweep_cmd(project, server, name)
    workers = [project.start(*cmd) for _ in range(2)]
    freeze_mid_trial(workers, server.uri, name)
    os.kill(server.pg_pid, signal.SIGKILL)  # the postmaster; MLflow's server lives on, its database gone
    os.waitpid(server.pg_pid, 0)  # our child (start_team_server ran here): reaped
    for w in workers:
        os.kill(w.pid, signal.SIGCONT)
    storage = f"PostgreSQL at postgresql://mlflow@127.0.0.1:{server.pg_port}/optuna"
    for line in one_line_each(workers):
        assert line.startswith(f"error: the sweep worker stopped: its storage, {storage}, does not answer"), line

    status = project.run("mlops-mlflow", "status", "--team", "--root", str(project.path))
    assert status.returncode == 1, status.stdout
    assert "answers /health, but its database is down: " in status.stdout, status.stdout
    assert f"PostgreSQL (pid {server.pg_pid}) is not running; make team restarts it" in status.stdout
    start = project.run("mlops-mlflow", "start", "--team", "--root", str(project.path), "--port", port)
    assert start.returncode == 0, start.stderr
    assert start.stdout.startswith(f"restarted PostgreSQL (pid {server.pg_pid} was not running): team MLflow"), start
    assert f"sweep.storage=postgresql://mlflow@127.0.0.1:{server.pg_port}/optuna" in start.stdout  # the same URL
    assert project.run("mlops-mlflow", "status", "--team", "--root", str(project.path)).returncode == 0

    again = project.run(*cmd, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_every_point_once(server.uri, server.optuna, name)


def test_both_killed_make_team_restarts_both(team):
    project, server = team
    os.killpg(server.mlflow_pid, signal.SIGKILL)
    os.kill(server.pg_pid, signal.SIGKILL)
    for pid in (server.mlflow_pid, server.pg_pid):
        os.waitpid(pid, 0)
    status = project.run("mlops-mlflow", "status", "--team", "--root", str(project.path))
    assert status.returncode == 1 and "is down, and its database too: " in status.stdout, status.stdout
    port = server.uri.rsplit(":", 1)[1]
    start = project.run("mlops-mlflow", "start", "--team", "--root", str(project.path), "--port", port)
    assert start.returncode == 0, start.stderr
    assert start.stdout.startswith("restarted MLflow and PostgreSQL (both were down): team MLflow server at "), start
    assert project.run("mlops-mlflow", "status", "--team", "--root", str(project.path)).returncode == 0


def test_a_sweep_with_a_point_that_never_completes_says_so_and_marks_no_best(project, server):
    "A point whose training fails (5 classes for 10 digits): the sweep ends FAILED, naming it; a rejoin retries it."
    name, storage = "incomplete", f"sqlite:///{project.path}/optuna.db"
    grid = {"model.num_classes": [5, 10], "training.num_epochs": [1]}
    cfg = project.config(name, sweep={"name": name, "grid": grid})
    cmd = ("mlops-sweep", "--config", str(cfg), "--worker", "--storage", storage, "--no-progress")
    for attempt in (1, 2):  # the second worker reopens the sweep and runs the missing point again
        done = project.run(*cmd)
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr[-3000:]
        assert error_lines(done.stderr) == [
            f"error: sweep {name!r} ended incomplete: 1 of 2 grid points never completed: num_classes5; no best is "
            "marked and its parent run is FAILED (tag sweep.missing): run this command again to retry them"
        ]
        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        runs = client.search_runs([exp.experiment_id], f"tags.`sweep.name` = '{name}'", max_results=100)
        parent = next(r for r in runs if r.data.tags.get("sweep.role") == "parent")
        assert parent.info.status == "FAILED" and parent.data.tags["sweep.missing"] == "1 of 2"
        assert not [r for r in runs if r.data.tags.get("is_best")]
        kids = [r for r in runs if r.data.tags.get("sweep.role") != "parent"]
        classes = [(json.loads(r.data.tags["sweep.trial_key"])["model.num_classes"], r.info.status) for r in kids]
        assert sorted(classes) == [(5, "FAILED")] * attempt + [(10, "FINISHED")]  # a retry per rejoin; 10 ran once


def test_a_worker_stopped_mid_trial_queues_its_trial_again(project, server):
    "SIGTERM (or Ctrl-C) in the middle of a trial: the run ends KILLED, and the grid point runs again on a rejoin."
    name, storage = "stopped_worker", f"sqlite:///{project.path}/optuna.db"
    cfg = project.config(name, sweep={"name": name, "grid": GRID})
    cmd = ("mlops-sweep", "--config", str(cfg), "--worker", "--storage", storage, "--no-progress")
    worker = project.start(*cmd)
    freeze_mid_trial([worker], server.uri, name)
    os.kill(worker.pid, signal.SIGTERM)  # pending while it is frozen: it arrives mid-trial
    os.kill(worker.pid, signal.SIGCONT)
    _out, err = worker.communicate(timeout=60)
    assert worker.returncode == 143, err[-3000:]
    assert [r.info.status for r in children(server.uri, name) if r.info.status != "FINISHED"] == ["KILLED"]
    again = project.run(*cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_every_point_once(server.uri, storage, name)
