"""Faults in a sweep: its process killed or stopped, two sweeps of one name at once.

The bar in every case: no worker outlives its sweep, and once the sweep has been run to
the end there is one parent, exactly 18 children for the 18 grid points (each point once),
one `is_best`, and no run left RUNNING.
"""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest
from faultkit import error_lines, wait_for
from mlflow import MlflowClient

pytestmark = [pytest.mark.server, pytest.mark.slow]

EXPERIMENT = "week5_project_optimization"


def sweep_runs(uri: str, name: str) -> tuple[list, list]:
    "(parent runs, active child runs) of the sweep `name`."
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return [], []
    runs = client.search_runs([exp.experiment_id], f"tags.`sweep.name` = '{name}'", max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    return parents, [r for r in runs if r.data.tags.get("sweep.role") != "parent"]


def assert_complete(uri: str, name: str) -> None:
    "One parent, 18 FINISHED children (each grid point once), one is_best, nothing RUNNING."
    parents, children = sweep_runs(uri, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    keys = [c.data.tags["sweep.trial_key"] for c in children]
    assert len(children) == 18 and len(set(keys)) == 18, sorted(keys)
    assert {c.info.status for c in children} == {"FINISHED"}
    assert sum(c.data.tags.get("is_best") == "true" for c in children) == 1
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert not client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")


def finished_children(uri: str, name: str, n: int):
    return lambda: sum(c.info.status == "FINISHED" for c in sweep_runs(uri, name)[1]) >= n


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_killed_sweep_leaves_no_worker_and_resumes_to_18_children(project, server, sig):
    name = f"stopped_{sig.name.lower()}"
    cfg = str(project.config(sweep={"name": name, "n_jobs": 2}))
    proc = project.start("mlops-sweep", "--config", cfg, "--no-progress")
    wait_for(finished_children(server.uri, name, 3), 180, "three trials finished")
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) >= 2
    os.kill(proc.pid, sig)
    if sig == signal.SIGTERM:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143 and "terminated" in error_lines(err)[-1]
        assert MlflowClient(server.uri).get_run(sweep_runs(server.uri, name)[0][0].info.run_id).info.status == "KILLED"
    time.sleep(0.5)
    again = project.start("mlops-sweep", "--config", cfg, "--no-progress")  # resume at once
    wait_for(
        lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers), 20, "workers gone"
    )
    _out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert_complete(server.uri, name)


@pytest.mark.parametrize("delay", ["at once", "mid-sweep"])
def test_a_second_sweep_of_the_same_name_refuses_in_one_line(project, server, delay):
    name = "twice_" + delay.replace(" ", "_").replace("-", "_")
    cfg = str(project.config(sweep={"name": name, "n_jobs": 2}))
    first = project.start("mlops-sweep", "--config", cfg, "--no-progress")
    if delay == "mid-sweep":
        wait_for(finished_children(server.uri, name, 2), 180, "two trials finished")
    second = project.start("mlops-sweep", "--config", cfg, "--no-progress")
    results = {}
    for label, proc in (("first", first), ("second", second)):
        _out, err = proc.communicate(timeout=300)
        results[label] = (proc.returncode, err)
    codes = sorted(code for code, _ in results.values())
    assert codes == [0, 2], results
    refused = next(err for code, err in results.values() if code == 2)
    (line,) = error_lines(refused)
    assert f"sweep {name!r} is running now" in line
    assert_complete(server.uri, name)
    _, children = sweep_runs(server.uri, name)
    assert not [c for c in children if c.data.tags.get("sweep.state") == "abandoned"]  # no live trial touched
    assert json.loads(children[0].data.tags["sweep.trial_key"])  # children are trials of this grid
