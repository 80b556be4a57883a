"""Faults in a sweep: its process killed or stopped, two sweeps of one name at once.

The bar in every case: no worker outlives its sweep, and once the sweep has been run to
the end there is one parent, one FINISHED child for each grid point (each point once), one
`is_best`, and no run left RUNNING. None of this needs a big grid: a 2x2 one whose second
half trains longer, so that a sweep stopped once its first trial finished still has trials
in flight. The tests share one server (none of them harms it), each in an experiment of its own.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal

import psutil
import pytest
from faultkit import error_lines, frozen_group, wait_for
from mlflow import MlflowClient

from mlops_day28.reliability.coordination import PID_TAG

pytestmark = [pytest.mark.server, pytest.mark.slow]

# Grid points run in this order, two at a time: the two short trials first, then the two longer ones.
GRID = {"training.num_epochs": [2, 12], "training.learning_rate": [0.001, 0.01]}
POINTS = [dict(zip(GRID, values, strict=True)) for values in itertools.product(*GRID.values())]


def sweep_config(project, name: str) -> str:
    "The sweep `name` on the 2x2 grid, two workers, in an experiment of its own (named after it)."
    return str(project.config(experiment_name=f"faults_{name}", sweep={"name": name, "n_jobs": 2, "grid": GRID}))


def sweep_runs(uri: str, name: str) -> tuple[list, list]:
    "(parent runs, active child runs) of the sweep `name`."
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"faults_{name}")
    if exp is None:
        return [], []
    runs = client.search_runs([exp.experiment_id], f"tags.`sweep.name` = '{name}'", max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    return parents, [r for r in runs if r.data.tags.get("sweep.role") != "parent"]


def assert_complete(uri: str, name: str) -> None:
    "One parent, a FINISHED child for each grid point (each once), one is_best, nothing RUNNING."
    parents, children = sweep_runs(uri, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    keys = [c.data.tags["sweep.trial_key"] for c in children]
    assert len(children) == len(POINTS) and len(set(keys)) == len(POINTS), sorted(keys)
    assert {frozenset(json.loads(k).items()) for k in keys} == {frozenset(p.items()) for p in POINTS}
    assert {c.info.status for c in children} == {"FINISHED"}
    assert sum(c.data.tags.get("is_best") == "true" for c in children) == 1
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"faults_{name}")
    assert not client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")


def finished_children(uri: str, name: str, n: int):
    return lambda: sum(c.info.status == "FINISHED" for c in sweep_runs(uri, name)[1]) >= n


def trials_said(out: str, name: str) -> tuple[int, int]:
    "(trials run, trials already done) as the sweep's summary line says."
    (said,) = re.findall(rf"sweep '{name}' \(grid\): (\d+) trials run, (\d+) already done, 0 failed", out)
    return int(said[0]), int(said[1])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_killed_sweep_leaves_no_worker_and_resumes_each_point_once(project, shared_server, sig):
    name = f"stopped_{sig.name.lower()}"
    cfg = sweep_config(project, name)
    proc = project.start("mlops-sweep", "--config", cfg, "--no-progress")
    wait_for(finished_children(shared_server.uri, name, 1), 180, "a trial finished")
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) >= 2
    os.kill(proc.pid, sig)
    if sig == signal.SIGTERM:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143 and "terminated" in error_lines(err)[-1]
        parent = sweep_runs(shared_server.uri, name)[0][0]
        assert MlflowClient(shared_server.uri).get_run(parent.info.run_id).info.status == "KILLED"
    else:
        proc.wait(30)
    again = project.start("mlops-sweep", "--config", cfg, "--no-progress")  # resume at once
    wait_for(
        lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers), 20, "workers gone"
    )
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    ran, done = trials_said(out, name)
    assert ran >= 1 and done >= 1 and ran + done == len(POINTS), out  # stopped mid-sweep: the resume ran the rest
    assert_complete(shared_server.uri, name)


@pytest.mark.parametrize("delay", ["at once", "mid-sweep"])
def test_a_second_sweep_of_the_same_name_refuses_in_one_line(project, shared_server, delay):
    """The sweep that holds the name is frozen (SIGSTOP, as Ctrl-Z would) once its trials run, until the other one
    has been answered: it is certainly still running when the other asks, however slow the machine; then it goes on."""
    name = "twice_" + delay.replace(" ", "_").replace("-", "_")
    sweep = ("mlops-sweep", "--config", sweep_config(project, name), "--no-progress")
    first = project.start(*sweep)
    second = project.start(*sweep) if delay == "at once" else None  # at once: the two race for the name
    if delay == "mid-sweep":
        wait_for(finished_children(shared_server.uri, name, 2), 180, "two trials finished")
    else:  # a trial started: the name is claimed and the lock on it let go
        wait_for(lambda: sweep_runs(shared_server.uri, name)[1], 180, "a trial started")
    (parent,) = sweep_runs(shared_server.uri, name)[0]
    holder = {p.pid: p for p in (first, second) if p}[int(parent.data.tags[PID_TAG])]
    with frozen_group(holder.pid):  # `project.start` gives each command its own session: its workers are frozen too
        second = second or project.start(*sweep)
        refused = second if holder is first else first
        _out, err = refused.communicate(timeout=120)
    _out, held_err = holder.communicate(timeout=300)
    assert holder.returncode == 0, held_err
    assert refused.returncode == 2, err
    (line,) = error_lines(err)
    assert f"sweep {name!r} is running now" in line
    assert_complete(shared_server.uri, name)
    _, children = sweep_runs(shared_server.uri, name)
    assert not [c for c in children if c.data.tags.get("sweep.state") == "abandoned"]  # no live trial touched
