"""The team server reached from other machines (nbs/team/02_server, team/03_workers): network namespaces made by the test.

One namespace is the server's machine: PostgreSQL on its own loopback, the MLflow team
server on its address on a bridge. Another is a worker's machine, with a host name of its
own, linked to the bridge by a veth pair. A worker trains, logs, registers and runs the
gate against the server over that network only: the address exists nowhere else, so the
test's own namespace cannot reach it. Then three workers on three machines share one grid
sweep through PostgreSQL (Optuna's storage, with a password on that network), and one of
them is killed with SIGKILL in the middle of a trial. Needs root; skipped with the reason elsewhere,
except where MLOPS_REQUIRE_NETNS=1 (set by .ci/run): there it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from netns import Machines, netns_unavailable
from paths import TINY_CONFIG

from mlops_day28.reliability.local_server import mlflow_version_at

pytestmark = [pytest.mark.server, pytest.mark.slow]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def machines():
    why = netns_unavailable()
    if why:
        if os.environ.get("MLOPS_REQUIRE_NETNS") == "1":
            pytest.fail(f"network namespaces are required here (MLOPS_REQUIRE_NETNS=1): {why}")
        pytest.skip(why)
    m = Machines(["server", "worker1", "worker2", "worker3"])
    try:
        yield m
    finally:
        m.close()
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in left for ns in m.ns.values()), left  # every namespace is gone


MLFLOW = [str(BIN / "mlops-mlflow")]
PORT = "5001"


def against(uri: str, *command) -> list[str]:
    "`command` run with the tracking server at `uri` (through `env`: a machine's command line is a list of strings)."
    return ["env", f"MLFLOW_TRACKING_URI={uri}", *map(str, command)]


@pytest.fixture
def team(machines):
    "The team server in the `server` machine, in a project folder of its own: (project, its URI, the start's output)."
    project = Path(tempfile.mkdtemp(prefix="team-net-"))
    project.chmod(0o755)  # PostgreSQL runs as `postgres`, which must reach .team/pg
    (project / "pyproject.toml").touch()
    address = machines.address["server"]
    try:
        start = machines.run(
            "server", [*MLFLOW, "start", "--team", "--root", str(project), "--host", address, "--port", PORT]
        )
        assert start.returncode == 0, start.stdout + start.stderr
        yield project, f"http://{address}:{PORT}", start.stdout
    finally:
        stop = machines.run("server", [*MLFLOW, "stop", "--team", "--root", str(project)])
        shutil.rmtree(project, ignore_errors=True)
    assert stop.stdout.startswith("stopped the team server: MLflow"), stop.stdout + stop.stderr
    assert machines.pids("server") == []  # nothing of the servers is left running in that machine


def test_a_worker_on_another_machine_trains_against_the_team_server(machines, team):
    project, uri, started = team
    assert started.startswith(f"started: team MLflow server at {uri}")
    assert mlflow_version_at(uri) is None  # from the test's own machine, nothing answers there

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    train = against(
        uri, BIN / "mlops-train", "--config", TINY_CONFIG, "--no-progress", "--set", "tracking.run_name=from-worker1"
    )
    trained = machines.run("worker1", train, hostname="worker1", env=env, cwd=str(project))
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    assert "Registered digits-classifier v1" in trained.stdout

    ask = (
        "import mlflow; c = mlflow.MlflowClient(); "
        "r = c.search_runs([e.experiment_id for e in c.search_experiments()], \"attributes.run_name = 'from-worker1'\")[0]; "
        "print(r.info.status, r.data.tags['_mlflow_mlops.host'], c.get_model_version_by_alias('digits-classifier', 'champion').version)"
    )
    seen = machines.run("server", against(uri, sys.executable, "-c", ask), env=env)
    assert seen.stdout.split() == ["FINISHED", "worker1", "1"], seen.stdout + seen.stderr


POLL_RUNNING = """
import os, sys, time, mlflow
c = mlflow.MlflowClient()
deadline = time.time() + 240
while time.time() < deadline:
    exp = c.get_experiment_by_name("week5_project_optimization")
    runs = c.search_runs([exp.experiment_id], f"tags.`sweep.name` = '{sys.argv[1]}'") if exp else []
    mine = [r for r in runs if r.data.tags.get("_mlflow_mlops.host") == sys.argv[2] and r.data.tags.get("sweep.role") != "parent"]
    if any(r.info.status == "FINISHED" for r in mine):  # it has finished one trial: kill it in its next
        for r in mine:
            if r.info.status == "RUNNING":
                os.kill(int(r.data.tags["_mlflow_mlops.pid"]), 9)  # at once: mid-trial, not a moment after it ended
                print(r.data.tags["_mlflow_mlops.pid"], r.info.run_id)
                sys.exit(0)
    time.sleep(0.3)
sys.exit(1)
"""

REPORT = """
import json, sys, mlflow
c = mlflow.MlflowClient()
exp = c.get_experiment_by_name("week5_project_optimization")
runs = c.search_runs([exp.experiment_id], f"tags.`sweep.name` = '{sys.argv[1]}'", max_results=1000)
print(json.dumps([{"role": r.data.tags.get("sweep.role", "child"), "status": r.info.status, "key": r.data.tags.get("sweep.trial_key"),
  "host": r.data.tags.get("_mlflow_mlops.host"), "best": r.data.tags.get("is_best") == "true", "run_id": r.info.run_id,
  "reason": r.data.tags.get("mlops.closed_reason")} for r in runs]))
"""


def test_three_machines_share_one_grid_sweep_and_a_killed_worker_trial_runs_again(machines, team, tmp_path):
    project, uri, started = team
    address, name = machines.address["server"], f"team_grid_{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    logs = contextlib.ExitStack()
    try:
        storage = started.split("sweep.storage=")[1].split()[0]
        assert f"@{address}:" in storage and ":" in storage.split("@")[0].removeprefix("postgresql://")  # a password
        sweep = against(
            uri, BIN / "mlops-sweep", "--config", TINY_CONFIG, "--worker", "--storage", storage, "--no-progress"
        )
        sweep += ["--set", f"sweep.name={name}"]
        sweep += ["--set", "training.num_epochs=15"]  # trials of a few seconds: time to be killed in one
        workers = {}
        for w in ("worker1", "worker2", "worker3"):
            log = logs.enter_context(open(tmp_path / f"{w}.log", "w"))  # noqa: SIM115 (closed by the stack)
            workers[w] = machines.start(
                w, sweep, hostname=w, env=env, cwd=str(project), stdout=log, stderr=subprocess.STDOUT
            )
        ask = against(uri, sys.executable, "-c")
        found = machines.run("server", [*ask, POLL_RUNNING, name, "worker2"], env=env, timeout=300)
        assert found.returncode == 0, found.stdout + found.stderr
        pid, killed_run = found.stdout.split()
        assert int(pid) == workers["worker2"].pid  # the worker process itself, killed mid-trial
        for w in ("worker1", "worker3"):
            assert workers[w].wait(300) == 0, (tmp_path / f"{w}.log").read_text()[-3000:]
        assert workers["worker2"].wait(10) == -9

        report = machines.run("server", [*ask, REPORT, name], env=env)
        runs = json.loads(report.stdout)
        children = [r for r in runs if r["role"] == "child"]
        finished = [r for r in children if r["status"] == "FINISHED"]
        assert len(finished) == 18 and len({r["key"] for r in finished}) == 18  # each grid point once
        assert sum(r["best"] for r in runs) == 1
        assert {r["host"] for r in finished} == {"worker1", "worker2", "worker3"}
        assert not [r for r in runs if r["status"] == "RUNNING"]  # nothing left RUNNING
        killed = next(r for r in children if r["run_id"] == killed_run)
        assert killed["status"] == "FAILED" and "sent no heartbeat for 15 s" in killed["reason"]
        assert [r["status"] for r in runs if r["role"] == "parent"] == ["FINISHED"]
    finally:
        logs.close()
